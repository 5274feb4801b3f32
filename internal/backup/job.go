package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/floe-backup/floe/internal/cache"
	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/fssnap"
	"github.com/floe-backup/floe/internal/hook"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Job is one backup as a front end (the CLI, the agent) asks for it: Run
// with everything around it. In order: the file system snapshot tools are
// checked, the pre-hook runs, the repository is opened (the default one is
// created on first use), the parent is chosen, file system snapshots are
// taken, the files are saved, the local cache learns the new snapshot, the
// file system snapshots are removed and the post-hook runs, whatever
// happened before.
type Job struct {
	// Options says what to back up. Hostname defaults to this host's
	// name; Parent and ParentTrees are chosen by the job (see ParentID),
	// and so are SourceRoot, Frozen and OnTree.
	Options
	// ExcludeFiles are files of exclude patterns, one per line, added to
	// Options.Excludes; IExcludeFiles likewise to Options.IExcludes.
	ExcludeFiles, IExcludeFiles []string
	// StdinCommand, if set, is a command (program and arguments, run
	// without a shell) whose standard output is backed up as
	// Options.StdinFilename; if it exits non-zero, the backup fails and no
	// snapshot is saved.
	StdinCommand []string
	// FilesFrom are lists of paths to back up, added to Options.Paths;
	// ListInput is read for a list named "-".
	FilesFrom []FileList
	ListInput io.Reader
	// ParentID names the parent (an ID prefix); empty: the newest snapshot
	// of the same host and paths.
	ParentID string
	// PreHook runs (sh -c) before the backup; if it fails, no backup is
	// made. PostHook runs after it, also when it failed, with HookEnv in
	// its environment. In a dry run (Options.DryRun) neither hook runs and
	// no file system snapshot is taken.
	PreHook, PostHook string
	// FSSnapshot, if not empty, reads the paths from read-only snapshots
	// of their file systems (fssnap.LVM or fssnap.Btrfs) of
	// FSSnapshotSize (LVM only; see fssnap.Options.Size).
	FSSnapshot     fssnap.Kind
	FSSnapshotSize string

	// Repository is where the snapshot goes, opened (or, if it is the
	// default repository and does not exist yet, created) after the
	// pre-hook; its cache settings choose the local cache.
	Repository connect.Target

	// Events, each optional, tell a front end what the job does.
	Events Events
}

// Events are what a Job tells its caller while it runs.
type Events struct {
	// Warn gets problems the job goes on after.
	Warn func(msg string)
	// Created says the default repository was created, with a key file.
	Created func(location, keyFile string)
	// Reading describes each file system snapshot the files are read from.
	Reading func(what string)
	// Start is called when the files start being read, Stop when that
	// ended (well or not); Options.Progress counts in between.
	Start, Stop func()
}

func (e Events) warn(format string, args ...any) {
	if e.Warn != nil {
		e.Warn(fmt.Sprintf(format, args...))
	}
}

// JobResult is the outcome of a Job.
type JobResult struct {
	*Result
	// Parent is the snapshot the backup was compared with, if any.
	Parent *snapshot.Record
	// Created says the job created the default repository.
	Created bool
	// SnapshotProblem is set when a file system snapshot could not hold
	// every change while the files were read (an LVM snapshot that
	// filled up): the backup is incomplete.
	SnapshotProblem error
}

// Run runs the job. When the snapshot was saved it returns a result even
// with an error (a failed post-hook, a file system snapshot that could not
// be removed): the snapshot is kept.
func (j *Job) Run(ctx context.Context) (out *JobResult, err error) {
	ev := j.Events
	if j.DryRun {
		j.PreHook, j.PostHook, j.FSSnapshot = "", "", ""
	}
	opts := j.Options
	opts.Excludes = append([]string(nil), j.Excludes...)
	opts.IExcludes = append([]string(nil), j.IExcludes...)
	for _, files := range []struct {
		names []string
		to    *[]string
	}{{j.ExcludeFiles, &opts.Excludes}, {j.IExcludeFiles, &opts.IExcludes}} {
		for _, file := range files.names {
			pats, err := pathmatch.ReadFile(file)
			if err != nil {
				return nil, err
			}
			*files.to = append(*files.to, pats...)
		}
	}
	opts.Paths = append([]string(nil), j.Paths...)
	for _, l := range j.FilesFrom {
		paths, warnings, err := j.readList(l)
		if err != nil {
			return nil, err
		}
		for _, w := range warnings {
			ev.warn("warning: %s: %s", l.Path, w)
		}
		opts.Paths = append(opts.Paths, paths...)
	}
	match, err := Excludes(opts.Excludes, opts.IExcludes)
	if err != nil {
		return nil, err
	}
	if opts.Stdin == nil && len(j.StdinCommand) == 0 {
		var roots []string
		for _, p := range opts.Paths {
			if a, err := filepath.Abs(p); err == nil {
				roots = append(roots, a)
			}
		}
		for _, w := range match.Unmatchable(roots) {
			ev.warn("warning: %s", w)
		}
	}
	var snapOpts fssnap.Options
	if j.FSSnapshot != "" {
		// before the hooks: nothing is done when snapshots cannot be made
		snapOpts = fssnap.Options{Kind: j.FSSnapshot, Size: j.FSSnapshotSize, Warn: func(msg string) { ev.warn("floe: %s", msg) }}
		if err := fssnap.Preflight(snapOpts); err != nil {
			return nil, err
		}
	}
	if j.PostHook != "" {
		defer func() {
			if herr := hook.Run(context.WithoutCancel(ctx), "post-hook", j.PostHook, HookEnv(out, err)); herr != nil {
				if err == nil {
					err = herr
				} else {
					ev.warn("floe: %v", herr)
				}
			}
		}()
	}
	if err := hook.Run(ctx, "pre-hook", j.PreHook, nil); err != nil {
		return nil, fmt.Errorf("%w; no backup was made", err)
	}
	r, err := connect.Open(ctx, j.Repository, connect.Options{LoadIndex: true})
	created := false
	if errors.Is(err, connect.ErrNoRepoGiven) && j.DryRun {
		return nil, fmt.Errorf("%w; a dry run creates nothing", err)
	}
	if errors.Is(err, connect.ErrNoRepoGiven) {
		created = true
		var keyPath string
		r, keyPath, err = connect.Create(ctx, j.Repository, repo.InitOptions{})
		if err == nil && ev.Created != nil {
			ev.Created(j.Repository.Location, keyPath)
		}
	}
	if err != nil {
		return nil, err
	}
	defer r.Close()

	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	c := j.Repository.OpenCache(r)
	if opts.Stdin == nil && len(j.StdinCommand) == 0 {
		parent, trees, warnings, err := FindParent(ctx, r, c, opts.Hostname, append(append([]string(nil), opts.Paths...), opts.Images...), j.ParentID)
		for _, w := range warnings {
			ev.warn("warning: %v", w)
		}
		if err != nil {
			return nil, err
		}
		opts.Parent, opts.ParentTrees = parent, trees
		if parent == nil {
			opts.Kin, opts.KinTrees = FindKin(c, opts.Hostname)
		}
	}
	var snaps *fssnap.Set
	if j.FSSnapshot != "" {
		abs := make([]string, 0, len(opts.Paths)+len(opts.Images))
		for _, p := range append(append([]string(nil), opts.Paths...), opts.Images...) {
			a, err := filepath.Abs(p)
			if err != nil {
				return nil, fmt.Errorf("path %s: %w", p, err)
			}
			abs = append(abs, a)
		}
		if snaps, err = fssnap.Create(ctx, abs, snapOpts); err != nil {
			return nil, fmt.Errorf("%w; no backup was made", err)
		}
		// removed however the backup ends; after an interrupt ctx is
		// cancelled, so the removal gets a context of its own
		defer func() {
			if rerr := snaps.Remove(context.WithoutCancel(ctx)); rerr != nil {
				if err == nil {
					err = rerr
				} else {
					ev.warn("floe: %v", rerr)
				}
			}
		}()
		if ev.Reading != nil {
			for _, d := range snaps.Describe() {
				ev.Reading(d)
			}
		}
		opts.SourceRoot, opts.Frozen = snaps.Sources(), true
	}
	var tw *cache.TreeWriter
	if c != nil && !opts.DryRun {
		if tw, err = c.NewTreeWriter(); err != nil {
			ev.warn("warning: %v", err)
		} else {
			opts.OnTree = tw.Add
		}
	}
	if len(j.StdinCommand) > 0 {
		cmd, err := startCommand(ctx, j.StdinCommand)
		if err != nil {
			return nil, fmt.Errorf("%w; no backup was made", err)
		}
		defer cmd.stop()
		opts.Stdin = cmd
	}
	if ev.Start != nil {
		ev.Start()
	}
	res, err := Run(ctx, r, opts)
	if ev.Stop != nil {
		ev.Stop()
	}
	if err != nil && len(j.StdinCommand) > 0 {
		err = fmt.Errorf("%w; no snapshot was saved", err)
	}
	if err != nil {
		if tw != nil {
			tw.Abort()
		}
		return nil, err
	}
	if tw != nil {
		if err := tw.Commit(&snapshot.Record{ID: res.ID, Snapshot: res.Snapshot}); err != nil {
			ev.warn("warning: %v", err)
		}
	}
	if res.DryRun {
		return &JobResult{Result: res, Parent: opts.Parent}, nil
	}
	out = &JobResult{Result: res, Parent: opts.Parent, Created: created}
	out.SnapshotProblem = snaps.Check(context.WithoutCancel(ctx))
	return out, nil
}

// readList reads one of FilesFrom.
func (j *Job) readList(l FileList) ([]string, []string, error) {
	if l.Path == "-" {
		if j.ListInput == nil {
			return nil, nil, errors.New("a list of files on standard input (-), but there is none")
		}
		return ReadList(j.ListInput, l.Kind)
	}
	f, err := os.Open(l.Path)
	if err != nil {
		return nil, nil, fmt.Errorf("read list of files: %w", err)
	}
	defer f.Close()
	paths, warnings, err := ReadList(f, l.Kind)
	if err != nil {
		return nil, nil, fmt.Errorf("read list of files %s: %w", l.Path, err)
	}
	return paths, warnings, nil
}

// HookEnv is the environment of the post-hook after a job that returned
// res and err:
//
//	FLOE_BACKUP_STATUS   ok, partial (saved, but some files could not be
//	                     read or a file system snapshot overflowed) or failed
//	FLOE_BACKUP_ERROR    why it failed (status failed)
//	FLOE_SNAPSHOT_ID     the new snapshot's ID (ok, partial)
//	FLOE_FILES_NEW, FLOE_FILES_CHANGED, FLOE_FILES_UNCHANGED, FLOE_DIRS,
//	FLOE_ERRORS, FLOE_TOTAL_BYTES, FLOE_DATA_ADDED, FLOE_DATA_ADDED_STORED,
//	FLOE_DURATION_SECONDS  the snapshot's summary (ok, partial)
func HookEnv(res *JobResult, err error) map[string]string {
	env := map[string]string{"FLOE_BACKUP_STATUS": "failed"}
	if res == nil || res.Result == nil || res.Snapshot == nil {
		if err != nil {
			env["FLOE_BACKUP_ERROR"] = err.Error()
		}
		return env
	}
	env["FLOE_BACKUP_STATUS"] = "ok"
	if len(res.Errors) > 0 || res.SnapshotProblem != nil {
		env["FLOE_BACKUP_STATUS"] = "partial"
	}
	s := res.Snapshot.Summary
	env["FLOE_SNAPSHOT_ID"] = res.ID.String()
	for k, v := range map[string]uint64{
		"FLOE_FILES_NEW": s.FilesNew, "FLOE_FILES_CHANGED": s.FilesChanged, "FLOE_FILES_UNCHANGED": s.FilesUnchanged,
		"FLOE_DIRS": s.Dirs, "FLOE_ERRORS": s.Errors, "FLOE_TOTAL_BYTES": s.TotalBytes,
		"FLOE_DATA_ADDED": s.DataAdded, "FLOE_DATA_ADDED_STORED": s.DataAddedStored,
	} {
		env[k] = strconv.FormatUint(v, 10)
	}
	env["FLOE_DURATION_SECONDS"] = strconv.FormatFloat(s.DurationSeconds, 'f', 3, 64)
	return env
}
