package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/check"
	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/forget"
	"github.com/floe-backup/floe/internal/fssnap"
	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/prune"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

// Runner runs a job's backup or verification once, in this process.
type Runner struct {
	Config *Config
	// Version is recorded in snapshots ("floe VERSION").
	Version string
	Log     *slog.Logger
	// Now is the time reports are stamped with (the daemon's clock).
	Now  func() time.Time
	prio *priorities
}

// NewRunner returns a runner for the jobs of cfg.
func NewRunner(cfg *Config, version string, log *slog.Logger, clock Clock) *Runner {
	r := &Runner{Config: cfg, Version: version, Log: log, Now: clock.Now}
	r.prio = newPriorities(func(msg string) { log.Warn(msg) })
	return r
}

// target is how job opens its repository. A floe server is trusted only
// as the job says (a pinned fingerprint, or a known-servers file that
// remembers the first one): a daemon has nobody to ask.
func (r *Runner) target(j *Job) (connect.Target, error) {
	warn := r.warner(j)
	return connect.Target{
		Location: j.Repository, PasswordFile: j.PasswordFile, PasswordCommand: j.PasswordCommand, KeyFile: j.KeyFile,
		CacheDir: r.Config.CacheDir,
		Server: location.Options{TokenFile: j.TokenFile, ServerFingerprint: j.ServerFingerprint,
			KnownServersFile: j.KnownServersFile, Warn: warn,
			TrustHint: "compare it with what `floe serve` printed, or pin it with server_fingerprint in the job"},
		Limits: connect.NewLimits(j.LimitUpload<<10, j.LimitDownload<<10),
		Warn:   warn,
		Hint:   hint,
	}, nil
}

// open opens j's repository for a retention or a verification (a backup
// opens it through backup.Job, which may create it).
func (r *Runner) open(ctx context.Context, j *Job) (*repo.Repository, error) {
	t, err := r.target(j)
	if err != nil {
		return nil, err
	}
	return connect.Open(ctx, t, connect.Options{})
}

// hint says what to do about a warning's error in the log of a job: the
// agent runs the floe binary, so its commands are the ones to name.
func hint(err error) string {
	if errors.As(err, new(*repo.IndexLoadError)) {
		return "run `floe check`"
	}
	return ""
}

func (r *Runner) warner(j *Job) func(string) {
	return func(msg string) { r.Log.Warn(ui.Sanitize(msg), slog.String("job", j.Name)) }
}

// report runs one task of j through run and returns its report, stamped
// and given its status by finish: Backup, Retention and Verify report
// alike.
func (r *Runner) report(ctx context.Context, j *Job, task fleet.Task, run func(rep *fleet.Run) error) (fleet.Run, error) {
	rep := fleet.Run{ID: fleet.NewReportID(), Host: r.Config.Host, Job: j.Name, Task: task, Repository: j.Repository, Attempt: 1, Started: r.Now(), Version: r.Version}
	err := run(&rep)
	r.finish(ctx, &rep, err)
	return rep, err
}

// finish sets the status from err (when the run did not set a better
// one) and the end time.
func (r *Runner) finish(ctx context.Context, rep *fleet.Run, err error) {
	rep.Finished = r.Now()
	if err != nil {
		rep.Error = ui.Sanitize(err.Error())
		if rep.Status == "" {
			rep.Status = fleet.StatusFailed
		}
	}
	if ctx.Err() != nil && rep.Status != fleet.StatusOK {
		rep.Status, rep.Error = fleet.StatusInterrupted, "interrupted"
	}
	if rep.Status == "" {
		rep.Status = fleet.StatusOK
	}
}

// Backup runs the backup of j now. The error is the backup's (nil for a
// run with a snapshot and unreadable files: the report says partial).
func (r *Runner) Backup(ctx context.Context, j *Job) (fleet.Run, error) {
	return r.report(ctx, j, fleet.TaskBackup, func(rep *fleet.Run) error { return r.backup(ctx, j, rep) })
}

func (r *Runner) backup(ctx context.Context, j *Job, rep *fleet.Run) error {
	t, err := r.target(j)
	if err != nil {
		return err
	}
	job := &backup.Job{
		Options: backup.Options{
			Paths: j.Paths, Excludes: j.Excludes, IExcludes: j.IExcludes, ExcludeCaches: j.ExcludeCaches,
			ExcludeIfPresent: j.ExcludeIfPresent, OneFileSystem: j.OneFileSystem,
			Hostname: r.Config.Host, Tags: j.Tags, ProgramVersion: "floe " + r.Version,
			// the time the agent's schedule runs on (the wall clock, or
			// the test clock): retention counts hours and days from it
			Time: r.Now(),
		},
		ExcludeFiles: j.ExcludeFiles, IExcludeFiles: j.IExcludeFiles,
		PreHook: j.PreHook, PostHook: j.PostHook,
		FSSnapshot: fssnap.Kind(j.FSSnapshot), FSSnapshotSize: j.FSSnapshotSize,
		Repository: t,
		Events:     backup.Events{Warn: r.warner(j)},
	}
	if j.ExcludeLargerThan != "" {
		job.ExcludeLargerThan, _ = backup.ParseSize(j.ExcludeLargerThan) // checked by Load
	}
	leave := r.prio.enter(j.Priority)
	res, err := job.Run(ctx)
	leave()
	if res == nil {
		return err
	}
	s := res.Snapshot.Summary
	rep.Snapshot = res.ID.String()
	rep.FilesNew, rep.FilesChanged, rep.FilesUnchanged, rep.FileErrors = s.FilesNew, s.FilesChanged, s.FilesUnchanged, uint64(len(res.Errors))
	rep.TotalBytes, rep.DataAdded, rep.DataAddedStored = s.TotalBytes, s.DataAdded, s.DataAddedStored
	rep.FilesChangedDuringRead = uint64(max(res.Snapshot.Consistency.ChangedCount, 0))
	for i, fe := range res.Errors {
		if i == 20 {
			r.warner(j)(fmt.Sprintf("error: %d more files could not be read", len(res.Errors)-i))
			break
		}
		r.warner(j)(fmt.Sprintf("error: %v", fe))
	}
	switch {
	case res.SnapshotProblem != nil:
		rep.Status = fleet.StatusPartial
		if err == nil {
			err = res.SnapshotProblem
		}
	case err != nil:
		// saved, but the post-hook or the removal of a file system
		// snapshot failed: not worth a second backup
		rep.Status = fleet.StatusPartial
	case len(res.Errors) > 0:
		rep.Status = fleet.StatusPartial
	}
	return err
}

// Retention runs the policy of a job of type retention now: forget
// (arrival-aware: on a floe server a snapshot counts from when it arrived
// if it claims a later time), then prune. It needs a full key.
func (r *Runner) Retention(ctx context.Context, j *Job) (fleet.Run, error) {
	return r.report(ctx, j, fleet.TaskRetention, func(rep *fleet.Run) error { return r.retention(ctx, j, rep) })
}

func (r *Runner) retention(ctx context.Context, j *Job, rep *fleet.Run) error {
	repo, err := r.open(ctx, j)
	if err != nil {
		return err
	}
	defer repo.Close()
	if repo.WriteOnly() {
		return fmt.Errorf("job %s: retention needs a full key, not a write-only one", j.Name)
	}
	leave := r.prio.enter(j.Priority)
	defer leave()
	sel, warnings, err := snapshot.Select(ctx, repo, nil, snapshot.Filter{})
	if err != nil {
		return err
	}
	for _, w := range warnings {
		r.warner(j)(fmt.Sprintf("warning: %v (not considered)", w))
	}
	origins, _, err := snapshot.Origins(ctx, repo)
	if err != nil {
		return err
	}
	groupBy := forget.DefaultGroupBy
	if j.GroupBy != nil {
		groupBy = *j.GroupBy
	}
	plan, err := forget.PlanPolicyArrived(sel, j.Policy, groupBy, r.Now(), origins)
	if err != nil {
		return err
	}
	toRemove := plan.ToRemove()
	rep.SnapshotsKept = len(sel) - len(toRemove)
	removed, failed, err := forget.Remove(ctx, repo, toRemove)
	rep.SnapshotsRemoved = removed
	if err != nil {
		return err
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %s could not be removed: %w", len(failed), ui.Count(len(toRemove), "snapshot"), errors.Join(failed...))
	}
	if !j.PruneEnabled() {
		return nil
	}
	opts := j.PruneOpts
	// named in the prune lease, so that a person who finds it knows
	// which agent's job holds it
	opts.Holder = r.Config.Host + " (floe agent, job " + j.Name + ")"
	res, err := prune.Run(ctx, repo, opts)
	if res != nil {
		rep.PrunedBytes = res.Sweep.Deleted.Bytes + res.Sweep.TempFilesRemoved.Bytes
		rep.MarkedBytes = res.Mark.Unused.Bytes + res.Mark.Repack.Bytes
		for _, w := range res.Warnings {
			r.warner(j)("prune: " + w)
		}
	}
	if err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	return nil
}

// Verify runs `check --read-data-subset` of j now, as the verification
// that follows done ones (see Job.VerifyPart).
func (r *Runner) Verify(ctx context.Context, j *Job, done int) (fleet.Run, error) {
	return r.report(ctx, j, fleet.TaskCheck, func(rep *fleet.Run) error { return r.verify(ctx, j, done, rep) })
}

func (r *Runner) verify(ctx context.Context, j *Job, done int, rep *fleet.Run) error {
	if j.Subset == nil {
		return fmt.Errorf("job %s has no verify_subset", j.Name)
	}
	subset := j.VerifyPart(done)
	rep.CheckSubset = subset.String()
	repo, err := r.open(ctx, j)
	if err != nil {
		return err
	}
	defer repo.Close()
	leave := r.prio.enter(j.Priority)
	res, err := check.Run(ctx, repo, check.Options{ReadData: true, Subset: &subset}, nil)
	leave()
	if err != nil {
		return err
	}
	rep.CheckErrors, rep.CheckWarnings = res.Summary.Errors, res.Summary.Warnings
	for _, p := range res.Errors() {
		r.Log.Error(ui.Sanitize(p.String()), slog.String("job", j.Name), slog.String("task", string(fleet.TaskCheck)))
	}
	if res.Summary.Errors > 0 {
		return &DamageError{Problems: res.Summary.Errors}
	}
	return nil
}

// VerifyPart is the subset the verification after done ones reads: for
// n/m the parts turn, from n on (1/7 reads the first seventh, then the
// second, ..., so seven verifications read every pack once); N% is a
// random N% each time.
func (j *Job) VerifyPart(done int) check.Subset {
	s := *j.Subset
	if s.M > 0 && done >= 0 {
		s.N = (s.N-1+done%s.M)%s.M + 1
	}
	return s
}

// DamageError is a verification that found damage.
type DamageError struct{ Problems int }

func (e *DamageError) Error() string {
	return fmt.Sprintf("check found %s; run `floe check` on the repository", ui.Count(e.Problems, "problem"))
}
