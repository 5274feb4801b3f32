package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/agent/schedule"
	"github.com/floe-backup/floe/internal/fleet"
)

// Daemon runs the scheduled jobs of a configuration until its context
// ends. Each job's backups (and its verification on a schedule of its
// own) are one sequence: a run that is still going when the job is due
// again is not started twice, the time it missed is reported as skipped.
type Daemon struct {
	Config  *Config
	Clock   Clock
	Leases  Leaser
	Reports Reporter
	Log     *slog.Logger
	// Backup, Verify and Retention run a job once: a Runner's, or a
	// test's.
	Backup, Verify, Retention func(ctx context.Context, j *Job) (fleet.Run, error)

	state *stateStore
}

// NewDaemon returns a daemon that runs the jobs of cfg in this process,
// with leases on this host and reports in the log.
func NewDaemon(cfg *Config, version string, log *slog.Logger, clock Clock) *Daemon {
	r := NewRunner(cfg, version, log, clock)
	d := &Daemon{
		Config: cfg, Clock: clock, Log: log,
		Leases:    &LocalLeases{Dir: LeaseDir(cfg), Waiting: waitingLogger(log)},
		Reports:   LogReporter{Log: log},
		Backup:    r.Backup,
		Retention: r.Retention,
		state:     &stateStore{dir: cfg.StateDir},
	}
	if err := d.useServer(); err != nil {
		// the local leases and the log still work: say why the server
		// is not told, at every start
		log.Error("floe server not used: " + err.Error())
	}
	d.Verify = func(ctx context.Context, j *Job) (fleet.Run, error) {
		st, err := d.state.load(j.Name)
		if err != nil {
			log.Warn(err.Error(), slog.String("job", j.Name))
		}
		return r.Verify(ctx, j, st.Verified)
	}
	return d
}

// LeaseDir is where LocalLeases keep their lock files.
func LeaseDir(cfg *Config) string { return cfg.StateDir + "/leases" }

func waitingLogger(log *slog.Logger) func(*Job) {
	return func(j *Job) {
		log.Info("waiting for another run on the same repository to end", slog.String("job", j.Name))
	}
}

// task is one kind of scheduled run of a job.
type task struct {
	kind  fleet.Task
	plan  *schedule.Plan
	retry schedule.Retry
	due   func(*JobState) *time.Time
	run   func(ctx context.Context, j *Job) (fleet.Run, error)
}

// Run runs the jobs until ctx ends: a job running then is cancelled (a
// backup cut off is safe: the next one goes on from what was stored) and
// reported as interrupted. It returns an error only when it cannot start.
func (d *Daemon) Run(ctx context.Context) error { return d.Serve(ctx, ctx) }

// Serve is Run, and returns also when stop ends, after the runs going on
// then have ended (to start again with a new configuration).
func (d *Daemon) Serve(ctx, stop context.Context) error {
	if d.state == nil {
		d.state = &stateStore{dir: d.Config.StateDir}
	}
	var tasks []struct {
		j *Job
		t task
	}
	for _, j := range d.Config.Jobs {
		if j.Plan != nil {
			kind, run := fleet.TaskBackup, d.Backup
			if j.Type == JobRetention {
				kind, run = fleet.TaskRetention, d.Retention
			}
			tasks = append(tasks, struct {
				j *Job
				t task
			}{j, task{kind, j.Plan, j.Retry, func(s *JobState) *time.Time { return &s.LastDue }, run}})
		}
		if j.VerifyPlan != nil {
			tasks = append(tasks, struct {
				j *Job
				t task
			}{j, task{fleet.TaskCheck, j.VerifyPlan, schedule.Retry{}, func(s *JobState) *time.Time { return &s.VerifyDue }, d.Verify}})
		}
	}
	if len(tasks) == 0 {
		return fmt.Errorf("%s: no job has a schedule (give a job schedule or window)", d.Config.File)
	}
	// a state directory that cannot be written would lose every missed run
	if err := d.state.update(".agent", func(*JobState) {}); err != nil {
		return err
	}
	// two daemons on one state would run every job twice
	unlock, err := lockDaemon(d.Config.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	d.Log.Info("agent started", slog.Int("jobs", len(d.Config.Jobs)), slog.String("host", d.Config.Host), slog.String("config", d.Config.File))
	// waits (for a due time, a retry, a lease) end with stop, runs only
	// with ctx
	wait, cancelWait := context.WithCancel(ctx)
	defer cancelWait()
	defer context.AfterFunc(stop, cancelWait)()
	var wg sync.WaitGroup
	for _, jt := range tasks {
		wg.Go(func() { d.loop(ctx, wait, jt.j, jt.t) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		d.Log.Info("agent stopped")
	}
	return nil
}

func (d *Daemon) saveDue(j *Job, t task, due time.Time) {
	if err := d.state.update(j.Name, func(s *JobState) { *t.due(s) = due }); err != nil {
		d.Log.Error(err.Error(), slog.String("job", j.Name))
	}
}

func (d *Daemon) report(ctx context.Context, r fleet.Run) {
	if err := d.Reports.Report(context.WithoutCancel(ctx), r); err != nil {
		d.Log.Error("report not sent: "+err.Error(), slog.String("job", r.Job))
	}
}

// loop runs one task of one job when due, until ctx (which cancels a
// run) or wait (which lets it end) ends.
func (d *Daemon) loop(ctx, wait context.Context, j *Job, t task) {
	attrs := []any{slog.String("job", j.Name), slog.String("task", string(t.kind))}
	st, err := d.state.load(j.Name)
	if err != nil {
		d.Log.Warn(err.Error(), attrs...)
	}
	last := *t.due(&st)
	if last.IsZero() {
		// the first start: from now on, a run missed is caught up
		last = d.Clock.Now()
		d.saveDue(j, t, last)
	}
	for wait.Err() == nil {
		now := d.Clock.Now()
		runNow, due := t.plan.Due(last, now)
		if runNow {
			d.Log.Info("catching up a missed run", append(attrs, slog.Time("missed", t.plan.Next(last)))...)
		} else {
			d.Log.Info("next run", append(attrs, slog.Time("at", due))...)
			if d.Clock.SleepUntil(wait, due) != nil {
				return
			}
		}
		end, done := d.runOnce(ctx, wait, j, t, due)
		if !done {
			return
		}
		last = due
		// due again while it ran: not started twice, nor late
		if n := t.plan.Next(due); !n.After(end) {
			d.report(ctx, fleet.Run{Host: d.Config.Host, Job: j.Name, Task: t.kind, Repository: j.Repository,
				Status: fleet.StatusSkipped, Scheduled: n, Started: end, Finished: end,
				Error: "the run before was still going"})
			last = end
		}
		d.saveDue(j, t, last)
	}
}

// runOnce runs a task due at due, with its retries. done is false when
// ctx ended first; end is when the last attempt ended.
func (d *Daemon) runOnce(ctx, wait context.Context, j *Job, t task, due time.Time) (end time.Time, done bool) {
	for attempt := 1; ; attempt++ {
		release, err := d.Leases.Lease(wait, j, t.kind)
		if err != nil {
			if wait.Err() != nil {
				return time.Time{}, false
			}
			now := d.Clock.Now()
			d.report(ctx, fleet.Run{Host: d.Config.Host, Job: j.Name, Task: t.kind, Repository: j.Repository,
				Status: fleet.StatusFailed, Attempt: attempt, Scheduled: due, Started: now, Finished: now, Error: err.Error()})
			return now, true
		}
		rep, _ := t.run(ctx, j)
		release()
		rep.Attempt, rep.Scheduled = attempt, due
		rep.NextDue = t.plan.Next(due) // the server calls the job overdue after it
		if rep.Status == fleet.StatusInterrupted || ctx.Err() != nil {
			rep.Status = fleet.StatusInterrupted
			d.report(ctx, rep)
			return time.Time{}, false
		}
		if rep.Status == fleet.StatusFailed {
			if at, ok := t.retry.RetryAt(attempt, rep.Finished, t.plan.Next(due)); ok {
				rep.Status, rep.RetryAt = fleet.StatusRetrying, at
				d.report(ctx, rep)
				if d.Clock.SleepUntil(wait, at) != nil {
					return time.Time{}, false // caught up (retried) when the agent starts again
				}
				continue
			}
		}
		d.report(ctx, rep)
		d.afterRun(ctx, wait, j, t, rep)
		return d.Clock.Now(), ctx.Err() == nil
	}
}

// afterRun records the run, and verifies the data when it is due every
// so many days.
func (d *Daemon) afterRun(ctx, wait context.Context, j *Job, t task, rep fleet.Run) {
	verified := t.kind == fleet.TaskCheck && verifiedOrDamaged(rep)
	err := d.state.update(j.Name, func(s *JobState) {
		if t.kind == fleet.TaskBackup || t.kind == fleet.TaskRetention {
			s.Last = &rep
		}
		if verified {
			s.VerifyLast = rep.Finished
			s.Verified++
		}
	})
	if err != nil {
		d.Log.Error(err.Error(), slog.String("job", j.Name))
	}
	if t.kind != fleet.TaskBackup || j.VerifyEveryDays == 0 || rep.Status == fleet.StatusFailed {
		return
	}
	st, _ := d.state.load(j.Name)
	now := d.Clock.Now()
	if !st.VerifyLast.IsZero() && schedule.EveryDays(st.VerifyLast, j.VerifyEveryDays, j.Location).After(now) {
		return
	}
	release, err := d.Leases.Lease(wait, j, fleet.TaskCheck)
	if err != nil {
		return
	}
	vrep, _ := d.Verify(ctx, j)
	release()
	vrep.Scheduled = now
	if ctx.Err() != nil {
		vrep.Status = fleet.StatusInterrupted
	}
	d.report(ctx, vrep)
	if verifiedOrDamaged(vrep) {
		if err := d.state.update(j.Name, func(s *JobState) { s.VerifyLast = vrep.Finished; s.Verified++ }); err != nil {
			d.Log.Error(err.Error(), slog.String("job", j.Name))
		}
	}
}

// State returns what the agent remembers of a job.
func State(cfg *Config, job string) (JobState, error) {
	return (&stateStore{dir: cfg.StateDir}).load(job)
}

// Record keeps the report of a run started by hand (`floe agent run`) in
// the job's state, as the daemon does with its own: the last backup, and
// when the data was last verified.
func Record(cfg *Config, rep fleet.Run) error {
	store := &stateStore{dir: cfg.StateDir}
	return store.update(rep.Job, func(s *JobState) {
		switch {
		case rep.Task == fleet.TaskBackup || rep.Task == fleet.TaskRetention:
			s.Last = &rep
		case verifiedOrDamaged(rep):
			s.VerifyLast = rep.Finished
			s.Verified++
		}
	})
}

// verifiedOrDamaged: the check ran to its end (found damage or not), so
// the next one is due in so many days; one that could not run is tried
// again after the next backup.
func verifiedOrDamaged(r fleet.Run) bool {
	return r.Status == fleet.StatusOK || (r.Status == fleet.StatusFailed && r.CheckSubset != "" && r.CheckErrors > 0)
}

// Upcoming is when a job runs next.
type Upcoming struct {
	Job string `json:"job"`
	// Next is the next backup (zero: the job has no schedule); CatchUp says
	// it is a missed run, run as soon as the agent starts.
	Next    time.Time `json:"next,omitzero"`
	CatchUp bool      `json:"catch_up,omitempty"`
	// VerifyNext is the next verification on its own schedule; with
	// verify_every_days, VerifyAfter is the first backup after which the
	// data is verified.
	VerifyNext  time.Time `json:"verify_next,omitzero"`
	VerifyAfter time.Time `json:"verify_after,omitzero"`
	// VerifySubset is what the next verification reads.
	VerifySubset string     `json:"verify_subset,omitempty"`
	Last         *fleet.Run `json:"last,omitempty"`
}

// Next says when each job of cfg runs next, from the agent's state, at now.
func Next(cfg *Config, now time.Time) ([]Upcoming, error) {
	store := &stateStore{dir: cfg.StateDir}
	var out []Upcoming
	var errs []error
	for _, j := range cfg.Jobs {
		st, err := store.load(j.Name)
		if err != nil {
			errs = append(errs, err)
		}
		u := Upcoming{Job: j.Name, Last: st.Last}
		if j.Subset != nil {
			u.VerifySubset = j.VerifyPart(st.Verified).String()
		}
		if j.Plan != nil {
			last := st.LastDue
			if last.IsZero() {
				last = now
			}
			u.CatchUp, u.Next = j.Plan.Due(last, now)
		}
		if j.VerifyPlan != nil {
			last := st.VerifyDue
			if last.IsZero() {
				last = now
			}
			_, u.VerifyNext = j.VerifyPlan.Due(last, now)
		}
		if j.VerifyEveryDays > 0 {
			u.VerifyAfter = now
			if !st.VerifyLast.IsZero() {
				u.VerifyAfter = schedule.EveryDays(st.VerifyLast, j.VerifyEveryDays, j.Location)
			}
		}
		out = append(out, u)
	}
	return out, errors.Join(errs...)
}
