package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// fakeClock is a clock for n goroutines that jumps to the next wake-up
// time as soon as all of them wait (for the clock or for a lease), so
// that days of schedules pass in milliseconds and exactly.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	n, idle int
	waiters []*fakeWaiter
	stopAt  time.Time
	cancel  func()
}

type fakeWaiter struct {
	at time.Time
	ch chan struct{}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) SleepUntil(ctx context.Context, t time.Time) error {
	c.mu.Lock()
	if !t.After(c.now) {
		c.mu.Unlock()
		return ctx.Err()
	}
	w := &fakeWaiter{at: t, ch: make(chan struct{})}
	c.waiters = append(c.waiters, w)
	c.idle++
	c.advanceLocked()
	c.mu.Unlock()
	select {
	case <-w.ch:
		return ctx.Err()
	case <-ctx.Done():
		c.mu.Lock()
		if i := slices.Index(c.waiters, w); i >= 0 {
			c.waiters = slices.Delete(c.waiters, i, i+1)
			c.idle--
		}
		c.mu.Unlock()
		return ctx.Err()
	}
}

func (c *fakeClock) advanceLocked() {
	for c.idle == c.n && len(c.waiters) > 0 {
		next := c.waiters[0].at
		for _, w := range c.waiters {
			if w.at.Before(next) {
				next = w.at
			}
		}
		if next.After(c.stopAt) {
			c.now = c.stopAt
			c.cancel()
			return
		}
		c.now = next
		c.waiters = slices.DeleteFunc(c.waiters, func(w *fakeWaiter) bool {
			if !w.at.After(next) {
				c.idle--
				close(w.ch)
				return true
			}
			return false
		})
	}
}

// memLeases is one lease per repository, waiting in step with the fake
// clock.
type memLeases struct {
	c       *fakeClock
	mu      sync.Mutex
	held    map[string]bool
	waiting map[string][]chan struct{}
}

func (l *memLeases) Lease(ctx context.Context, j *Job, _ fleet.Task) (func(), error) {
	l.mu.Lock()
	release := func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if q := l.waiting[j.Repository]; len(q) > 0 {
			l.waiting[j.Repository] = q[1:]
			l.c.mu.Lock()
			l.c.idle--
			l.c.mu.Unlock()
			close(q[0])
			return
		}
		l.held[j.Repository] = false
	}
	if !l.held[j.Repository] {
		l.held[j.Repository] = true
		l.mu.Unlock()
		return release, nil
	}
	ch := make(chan struct{})
	l.waiting[j.Repository] = append(l.waiting[j.Repository], ch)
	l.c.mu.Lock()
	l.c.idle++
	l.c.advanceLocked()
	l.c.mu.Unlock()
	l.mu.Unlock()
	select {
	case <-ch:
		return release, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type reports struct {
	mu   sync.Mutex
	runs []fleet.Run
}

func (r *reports) Report(_ context.Context, run fleet.Run) error {
	r.mu.Lock()
	r.runs = append(r.runs, run)
	r.mu.Unlock()
	return nil
}

// fakeJobs run jobs on the fake clock: each takes its duration, and fails
// when told to.
type fakeJobs struct {
	c        *fakeClock
	mu       sync.Mutex
	duration map[string]time.Duration
	fail     map[string]bool
	running  map[string]int // by repository
	starts   map[string][]time.Time
	overlap  []string
	cfg      *Config
	subsets  []string
}

func (f *fakeJobs) run(task fleet.Task) func(ctx context.Context, j *Job) (fleet.Run, error) {
	return func(ctx context.Context, j *Job) (fleet.Run, error) {
		start := f.c.Now()
		f.mu.Lock()
		f.starts[j.Name+"/"+string(task)] = append(f.starts[j.Name+"/"+string(task)], start)
		f.running[j.Repository]++
		if f.running[j.Repository] > 1 {
			f.overlap = append(f.overlap, fmt.Sprintf("%s at %s", j.Name, start))
		}
		d := f.duration[j.Name]
		f.mu.Unlock()
		err := f.c.SleepUntil(ctx, start.Add(d))
		f.mu.Lock()
		f.running[j.Repository]--
		f.mu.Unlock()
		rep := fleet.Run{Job: j.Name, Task: task, Started: start, Finished: f.c.Now(), Status: fleet.StatusOK}
		if err != nil {
			rep.Status = fleet.StatusInterrupted
		} else if f.fail[j.Name] {
			rep.Status, rep.Error = fleet.StatusFailed, "pre-hook failed"
		}
		if task == fleet.TaskCheck {
			st, _ := State(f.cfg, j.Name)
			rep.CheckSubset = j.VerifyPart(st.Verified).String()
			f.subsets = append(f.subsets, j.Name+" "+rep.CheckSubset)
		}
		return rep, err
	}
}

type daemonTest struct {
	t     *testing.T
	cfg   *Config
	clock *fakeClock
	jobs  *fakeJobs
	rep   *reports
}

func newDaemonTest(t *testing.T, config string, start string) *daemonTest {
	t.Helper()
	dir := t.TempDir()
	cfg, err := Parse("agent.toml", []byte(fmt.Sprintf("host = \"h\"\ntimezone = \"UTC\"\nstate_dir = %q\n%s", dir, config)))
	if err != nil {
		t.Fatal(err)
	}
	now, err := time.Parse(time.DateTime, start)
	if err != nil {
		t.Fatal(err)
	}
	c := &fakeClock{now: now}
	return &daemonTest{t: t, cfg: cfg, clock: c, rep: &reports{},
		jobs: &fakeJobs{c: c, cfg: cfg, duration: map[string]time.Duration{}, fail: map[string]bool{}, running: map[string]int{}, starts: map[string][]time.Time{}}}
}

// run runs the daemon from the start time until stop.
func (d *daemonTest) run(stop string) {
	d.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	for _, j := range d.cfg.Jobs {
		if j.Plan != nil {
			n++
		}
		if j.VerifyPlan != nil {
			n++
		}
	}
	stopAt, err := time.Parse(time.DateTime, stop)
	if err != nil {
		d.t.Fatal(err)
	}
	d.clock.mu.Lock()
	d.clock.n, d.clock.idle, d.clock.stopAt, d.clock.cancel = n, 0, stopAt, cancel
	d.clock.mu.Unlock()
	dm := &Daemon{Config: d.cfg, Clock: d.clock, Reports: d.rep,
		Leases: &memLeases{c: d.clock, held: map[string]bool{}, waiting: map[string][]chan struct{}{}},
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Backup: d.jobs.run(fleet.TaskBackup), Verify: d.jobs.run(fleet.TaskCheck)}
	done := make(chan error)
	go func() { done <- dm.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			d.t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		d.t.Fatal("the daemon did not stop")
	}
	if len(d.jobs.overlap) > 0 {
		d.t.Errorf("runs on one repository at once: %v", d.jobs.overlap)
	}
}

func (d *daemonTest) wantStarts(key string, want ...string) {
	d.t.Helper()
	got := d.jobs.starts[key]
	var gs []string
	for _, g := range got {
		gs = append(gs, g.UTC().Format(time.DateTime))
	}
	if !slices.Equal(gs, want) {
		d.t.Errorf("%s started at\n  %v\nwant\n  %v", key, gs, want)
	}
}

func (d *daemonTest) statuses(job string) []string {
	var out []string
	for _, r := range d.rep.runs {
		if r.Job == job {
			out = append(out, fmt.Sprintf("%s %s %d", r.Scheduled.UTC().Format("02 15:04"), r.Status, r.Attempt))
		}
	}
	return out
}

const jobTmpl = `
[[job]]
name = %q
repository = %q
password_file = "/p"
paths = ["/etc"]
`

func TestDaemonSchedules(t *testing.T) {
	d := newDaemonTest(t, fmt.Sprintf(jobTmpl, "a", "/r1")+`schedule = "02:00"`+"\n"+
		fmt.Sprintf(jobTmpl, "b", "/r2")+`schedule = ["Mon,Wed 03:30", "Fri 12:00"]`+"\n", "2026-03-02 00:00:00") // a Monday
	d.jobs.duration["a"] = 10 * time.Minute
	d.run("2026-03-06 13:00:00")
	d.wantStarts("a/backup", "2026-03-02 02:00:00", "2026-03-03 02:00:00", "2026-03-04 02:00:00", "2026-03-05 02:00:00", "2026-03-06 02:00:00")
	d.wantStarts("b/backup", "2026-03-02 03:30:00", "2026-03-04 03:30:00", "2026-03-06 12:00:00")
}

func TestDaemonMissedRuns(t *testing.T) {
	d := newDaemonTest(t, fmt.Sprintf(jobTmpl, "a", "/r1")+`schedule = "02:00"`+"\n", "2026-03-02 00:00:00")
	d.run("2026-03-02 03:00:00")
	d.wantStarts("a/backup", "2026-03-02 02:00:00")
	// down from the 2nd, 03:00, to the 6th, 09:00: three runs missed, one
	// catch-up at the start, then the usual time
	d.clock.now = time.Date(2026, 3, 6, 9, 0, 0, 0, time.UTC)
	d.run("2026-03-07 03:00:00")
	d.wantStarts("a/backup", "2026-03-02 02:00:00", "2026-03-06 09:00:00", "2026-03-07 02:00:00")
}

func TestDaemonOverrun(t *testing.T) {
	d := newDaemonTest(t, fmt.Sprintf(jobTmpl, "a", "/r1")+`schedule = "hourly"`+"\n", "2026-03-02 00:30:00")
	d.jobs.duration["a"] = 90 * time.Minute
	d.run("2026-03-02 06:00:00")
	// due at 02:00 while the 01:00 run went on: skipped, not started twice
	d.wantStarts("a/backup", "2026-03-02 01:00:00", "2026-03-02 03:00:00", "2026-03-02 05:00:00")
	want := []string{"02 01:00 ok 1", "02 02:00 skipped 0", "02 03:00 ok 1", "02 04:00 skipped 0", "02 05:00 interrupted 1"}
	if got := d.statuses("a"); !slices.Equal(got, want) {
		t.Errorf("reports %v, want %v", got, want)
	}
}

func TestDaemonRetries(t *testing.T) {
	d := newDaemonTest(t, fmt.Sprintf(jobTmpl, "a", "/r1")+"schedule = \"02:00\"\nretries = 3\nretry_initial = \"1m\"\nretry_max = \"3m\"\n"+
		fmt.Sprintf(jobTmpl, "b", "/r2")+"schedule = \"hourly\"\nretries = 5\nretry_initial = \"20m\"\nretry_max = \"1h\"\n", "2026-03-02 01:30:00")
	d.jobs.fail["a"], d.jobs.fail["b"] = true, true
	d.run("2026-03-02 03:30:00")
	// 1, 2, then 3 (not 4) minutes apart; then reported failed
	d.wantStarts("a/backup", "2026-03-02 02:00:00", "2026-03-02 02:01:00", "2026-03-02 02:03:00", "2026-03-02 02:06:00")
	want := []string{"02 02:00 retrying 1", "02 02:00 retrying 2", "02 02:00 retrying 3", "02 02:00 failed 4"}
	if got := d.statuses("a"); !slices.Equal(got, want) {
		t.Errorf("reports %v, want %v", got, want)
	}
	// a retry would come after the next run: that run comes instead
	d.wantStarts("b/backup", "2026-03-02 02:00:00", "2026-03-02 02:20:00", "2026-03-02 03:00:00", "2026-03-02 03:20:00")
	for _, r := range d.rep.runs {
		if r.Status == fleet.StatusRetrying && r.RetryAt.IsZero() {
			t.Errorf("retrying without a time: %+v", r)
		}
	}
}

func TestDaemonOneRunPerRepository(t *testing.T) {
	d := newDaemonTest(t, fmt.Sprintf(jobTmpl, "a", "/same")+`schedule = "02:00"`+"\n"+
		fmt.Sprintf(jobTmpl, "b", "/same")+`schedule = "02:00"`+"\n"+
		fmt.Sprintf(jobTmpl, "c", "/other")+`schedule = "02:00"`+"\n", "2026-03-02 00:00:00")
	for _, j := range []string{"a", "b", "c"} {
		d.jobs.duration[j] = 30 * time.Minute
	}
	d.run("2026-03-02 04:00:00")
	first, second := d.jobs.starts["a/backup"], d.jobs.starts["b/backup"]
	if len(first) != 1 || len(second) != 1 {
		t.Fatalf("starts %v", d.jobs.starts)
	}
	if d := first[0].Sub(second[0]).Abs(); d != 30*time.Minute {
		t.Errorf("a and b share a repository and started %s apart", d)
	}
	d.wantStarts("c/backup", "2026-03-02 02:00:00") // another repository: not held up
}

func TestDaemonVerify(t *testing.T) {
	d := newDaemonTest(t, fmt.Sprintf(jobTmpl, "a", "/r1")+"schedule = \"02:00\"\nverify_subset = \"1/7\"\nverify_every_days = 2\n"+
		fmt.Sprintf(jobTmpl, "b", "/r2")+"schedule = \"02:00\"\nverify_subset = \"5%\"\nverify_schedule = \"Sun 05:00\"\n", "2026-03-02 00:00:00")
	d.jobs.duration["a"] = time.Minute
	d.run("2026-03-08 12:00:00")
	d.wantStarts("a/backup", "2026-03-02 02:00:00", "2026-03-03 02:00:00", "2026-03-04 02:00:00", "2026-03-05 02:00:00", "2026-03-06 02:00:00", "2026-03-07 02:00:00", "2026-03-08 02:00:00")
	// after the first backup, then every two days
	d.wantStarts("a/check", "2026-03-02 02:01:00", "2026-03-04 02:01:00", "2026-03-06 02:01:00", "2026-03-08 02:01:00")
	d.wantStarts("b/check", "2026-03-08 05:00:00")
	// n/m parts turn from one verification to the next
	if got := strings.Join(d.jobs.subsets, ", "); got != "a 1/7, a 2/7, a 3/7, a 4/7, b 5%" {
		t.Errorf("verified %s", got)
	}

	up, err := Next(d.cfg, time.Date(2026, 3, 8, 12, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if len(up) != 2 || !up[0].Next.Equal(time.Date(2026, 3, 9, 2, 0, 0, 0, time.UTC)) || up[0].CatchUp ||
		!up[0].VerifyAfter.Equal(time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)) || up[0].Last == nil || up[0].Last.Status != fleet.StatusOK ||
		!up[1].VerifyNext.Equal(time.Date(2026, 3, 15, 5, 0, 0, 0, time.UTC)) {
		t.Errorf("next: %+v", up)
	}
	up, _ = Next(d.cfg, time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC))
	if !up[0].CatchUp {
		t.Errorf("two days later, no catch-up: %+v", up[0])
	}
}

func TestDaemonLock(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDaemon(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockDaemon(dir); err == nil || !strings.Contains(err.Error(), "another floe agent") {
		t.Errorf("second daemon: %v", err)
	}
	unlock()
	unlock, err = lockDaemon(dir)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
}

func FuzzStateLoad(f *testing.F) {
	f.Add([]byte(`{"last_due":"2026-03-02T02:00:00Z","last":{"job":"a","status":"ok"}}`))
	f.Add([]byte(`{"verify_last": 3}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "j.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		s := &stateStore{dir: dir}
		if _, err := s.load("j"); err != nil && !strings.Contains(err.Error(), "starting afresh") {
			t.Fatalf("load: %v", err)
		}
		// a damaged state is replaced, not kept
		if err := s.update("j", func(st *JobState) { st.LastDue = time.Unix(1, 0) }); err != nil {
			t.Fatal(err)
		}
		st, err := s.load("j")
		if err != nil || !st.LastDue.Equal(time.Unix(1, 0)) {
			t.Fatalf("after update: %+v %v", st, err)
		}
	})
}

// TestDaemonServeStop: stopping Serve (a reload) lets the run going on
// end, and keeps its time, so that it is not run again.
func TestDaemonServeStop(t *testing.T) {
	d := newDaemonTest(t, fmt.Sprintf(jobTmpl, "a", "/r1")+`schedule = "02:00"`+"\n", "2026-03-02 00:00:00")
	d.jobs.duration["a"] = 30 * time.Minute
	stopCtx, stop := context.WithCancel(context.Background())
	run := d.jobs.run(fleet.TaskBackup)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d.clock.n, d.clock.stopAt, d.clock.cancel = 1, time.Date(2026, 3, 3, 0, 0, 0, 0, time.UTC), cancel
	dm := &Daemon{Config: d.cfg, Clock: d.clock, Reports: d.rep,
		Leases: &memLeases{c: d.clock, held: map[string]bool{}, waiting: map[string][]chan struct{}{}},
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Backup: func(ctx context.Context, j *Job) (fleet.Run, error) {
			stop() // a reload while the job runs
			return run(ctx, j)
		}}
	if err := dm.Serve(ctx, stopCtx); err != nil {
		t.Fatal(err)
	}
	if got := d.statuses("a"); !slices.Equal(got, []string{"02 02:00 ok 1"}) {
		t.Errorf("reports %v", got)
	}
	st, err := State(d.cfg, "a")
	if err != nil || !st.LastDue.Equal(time.Date(2026, 3, 2, 2, 0, 0, 0, time.UTC)) {
		t.Errorf("state %+v %v", st, err)
	}
	if ctx.Err() != nil {
		t.Error("Serve returned only when the clock ran out")
	}
}
