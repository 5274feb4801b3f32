//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The agent's daemon runs as a process on a test clock: it starts at
// agentClockStart-like times given per test and runs agentScale times
// faster than the wall clock (a real second is ten minutes).
const agentScale = 600

// logLine is one JSON log line of the agent.
type logLine struct {
	Time      time.Time `json:"time"`
	Level     string    `json:"level"`
	Msg       string    `json:"msg"`
	Job       string    `json:"job"`
	Task      string    `json:"task"`
	Status    string    `json:"status"`
	Attempt   int       `json:"attempt"`
	Scheduled time.Time `json:"scheduled"`
	Started   time.Time `json:"started"`
	RetryAt   time.Time `json:"retry_at"`
	Snapshot  string    `json:"snapshot"`
	FilesNew  int       `json:"files_new"`
	Error     string    `json:"error"`
	Missed    time.Time `json:"missed"`
}

// agentEnv is a test repository, data and an agent configuration.
type agentEnv struct {
	*floeEnv
	config, state string
}

func newAgentEnv(t *testing.T, jobs string) *agentEnv {
	t.Helper()
	e := newEnv(t)
	e.init()
	a := &agentEnv{floeEnv: e, config: e.path("agent.toml"), state: e.path("state")}
	a.writeConfig(jobs)
	return a
}

func (a *agentEnv) writeConfig(jobs string) {
	a.t.Helper()
	text := fmt.Sprintf("host = \"e2e-host\"\ntimezone = \"UTC\"\nstate_dir = %q\n", a.state) + jobs
	if err := os.WriteFile(a.config, []byte(text), 0o644); err != nil {
		a.t.Fatal(err)
	}
}

// job is a [[job]] on the test's repository backing up dir.
func (a *agentEnv) job(name, dir string, extra ...string) string {
	return fmt.Sprintf("\n[[job]]\nname = %q\nrepository = %q\npassword_file = %q\npaths = [%q]\n%s\n",
		name, a.repo, a.pwFile, dir, strings.Join(extra, "\n"))
}

func (a *agentEnv) data(name string) string {
	a.t.Helper()
	d := a.mkdir(name)
	if err := os.WriteFile(filepath.Join(d, "file"), []byte("data of "+name+"\n"), 0o644); err != nil {
		a.t.Fatal(err)
	}
	return d
}

// daemon runs `floe agent` on the test clock from start for the given
// real time, then sends SIGTERM, and returns its log lines.
func (a *agentEnv) daemon(start string, runFor time.Duration) ([]logLine, result) {
	a.t.Helper()
	return a.daemonWith(start, runFor, nil)
}

// daemonWith is daemon, calling during (if set) one real second after the
// start.
func (a *agentEnv) daemonWith(start string, runFor time.Duration, during func(p *os.Process)) ([]logLine, result) {
	a.t.Helper()
	args := []string{"agent", "--config", a.config, "--log-format", "json", "--clock-start", start, "--time-scale", fmt.Sprint(agentScale)}
	cmd := exec.Command(floeBin, args...)
	cmd.Env = append(a.environ(), "FLOE_AGENT_TEST_CLOCK=1")
	cmd.Dir = a.dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	if during != nil {
		time.Sleep(time.Second)
		during(cmd.Process)
		runFor -= time.Second
	}
	time.Sleep(runFor)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		a.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		a.t.Fatalf("the agent did not stop within 20s of SIGTERM\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
	if s, leaked := leakedSecret(r.stdout, r.stderr); leaked {
		a.t.Errorf("the agent logged the secret %.6s...", s)
	}
	if strings.Contains(r.stderr, "panic: ") || goroutineTrace.MatchString(r.stderr) {
		a.t.Errorf("the agent panicked:\n%s", r.stderr)
	}
	var lines []logLine
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			a.t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines, r
}

func runsOf(lines []logLine, job string) []logLine {
	var out []logLine
	for _, l := range lines {
		if l.Msg == "run" && l.Job == job {
			out = append(out, l)
		}
	}
	return out
}

func virtual(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAgentDaemon runs the daemon as a process: two jobs due a few
// seconds apart both run on time, a failing pre-hook is retried with
// backoff then reported failed, SIGTERM stops it with exit 0; started
// again days later, the missed runs run once.
func TestAgentDaemon(t *testing.T) {
	a := newAgentEnv(t, "")
	hookLog := a.path("hook.log")
	a.writeConfig(a.job("alpha", a.data("alpha"), `schedule = "00:20"`) +
		a.job("beta", a.data("beta"), `schedule = ["Mon..Fri 00:40", "Sat 05:00"]`) +
		a.job("flaky", a.data("flaky"), `schedule = "00:10"`, fmt.Sprintf(`pre_hook = "echo attempt >> %s; exit 1"`, hookLog),
			`retries = 2`, `retry_initial = "5m"`, `retry_max = "8m"`))

	// 2026-03-02 is a Monday; 7.5 real seconds are 75 minutes
	lines, r := a.daemon("2026-03-02T00:00:00Z", 7500*time.Millisecond)
	expectCode(t, r, 0)
	for _, tc := range []struct{ job, at string }{{"alpha", "2026-03-02T00:20:00Z"}, {"beta", "2026-03-02T00:40:00Z"}} {
		runs := runsOf(lines, tc.job)
		if len(runs) != 1 || runs[0].Status != "ok" || runs[0].Snapshot == "" || runs[0].FilesNew != 1 {
			t.Fatalf("%s: runs %+v\n%s", tc.job, runs, r)
		}
		due := virtual(t, tc.at)
		if !runs[0].Scheduled.Equal(due) {
			t.Errorf("%s ran for %s, want %s", tc.job, runs[0].Scheduled, due)
		}
		// on time: within the (test) minutes a busy machine may take
		if d := runs[0].Started.Sub(due); d < 0 || d > 10*time.Minute {
			t.Errorf("%s due at %s started at %s", tc.job, due, runs[0].Started)
		}
	}
	// the flaky job: tried at 00:10, 00:15 and 00:23 (5 then 8, not 10,
	// minutes later), then reported failed
	flaky := runsOf(lines, "flaky")
	var got []string
	for _, l := range flaky {
		got = append(got, fmt.Sprintf("%s %d", l.Status, l.Attempt))
	}
	if strings.Join(got, ", ") != "retrying 1, retrying 2, failed 3" {
		t.Fatalf("flaky: %v\n%s", got, r)
	}
	if gap := flaky[1].RetryAt.Sub(flaky[0].RetryAt); gap < 7*time.Minute || gap > 9*time.Minute {
		t.Errorf("retries at %s and %s: want 8 minutes apart", flaky[0].RetryAt, flaky[1].RetryAt)
	}
	if d := flaky[0].RetryAt.Sub(virtual(t, "2026-03-02T00:15:00Z")); d < 0 || d > 2*time.Minute {
		t.Errorf("first retry at %s, want about 00:15", flaky[0].RetryAt)
	}
	if !strings.Contains(flaky[2].Error, "pre-hook failed") || flaky[2].Level != "ERROR" {
		t.Errorf("failure report: %+v", flaky[2])
	}
	if data, _ := os.ReadFile(hookLog); strings.Count(string(data), "attempt") != 3 {
		t.Errorf("the pre-hook ran %d times, want 3", strings.Count(string(data), "attempt"))
	}
	if last := lines[len(lines)-1]; last.Msg != "agent stopped" {
		t.Errorf("last log line %+v, want agent stopped", last)
	}
	if n := len(a.snapshots()); n != 2 {
		t.Errorf("%d snapshots, want 2", n)
	}

	// down until Thursday noon: alpha missed three days and beta two;
	// each runs once at the start, then not again before its time
	lines, r = a.daemon("2026-03-05T12:00:00Z", 3*time.Second)
	expectCode(t, r, 0)
	for _, job := range []string{"alpha", "beta"} {
		runs := runsOf(lines, job)
		if len(runs) != 1 || runs[0].Status != "ok" {
			t.Fatalf("%s after the downtime: %+v\n%s", job, runs, r)
		}
		if d := runs[0].Scheduled.Sub(virtual(t, "2026-03-05T12:00:00Z")); d < 0 || d > 5*time.Minute {
			t.Errorf("%s caught up for %s, want the start", job, runs[0].Scheduled)
		}
	}
	caughtUp := 0
	for _, l := range lines {
		if l.Msg == "catching up a missed run" {
			caughtUp++
		}
	}
	if caughtUp != 3 { // alpha, beta and flaky
		t.Errorf("%d catch-up lines, want 3\n%s", caughtUp, r)
	}
	if n := len(a.snapshots()); n != 4 {
		t.Errorf("%d snapshots, want 4", n)
	}
	// next: the usual times again, no catch-up
	next := a.runWith(runOpts{env: []string{"FLOE_AGENT_TEST_CLOCK=1"}}, "agent", "--config", a.config, "next", "--json", "--clock-start", "2026-03-05T12:30:00Z")
	expectCode(t, next, 0)
	type upcoming struct {
		Job     string    `json:"job"`
		Next    time.Time `json:"next"`
		CatchUp bool      `json:"catch_up"`
	}
	for _, u := range decodeJSON[struct {
		Jobs []upcoming `json:"jobs"`
	}](t, next).Jobs {
		want := map[string]string{"alpha": "2026-03-06T00:20:00Z", "beta": "2026-03-06T00:40:00Z", "flaky": "2026-03-06T00:10:00Z"}[u.Job]
		if u.CatchUp || !u.Next.Equal(virtual(t, want)) {
			t.Errorf("next after the catch-up: %+v", u)
		}
	}
}

// TestAgentStopDuringRun: SIGTERM while a job runs cancels it cleanly:
// exit 0, the run reported interrupted, the repository intact.
func TestAgentStopDuringRun(t *testing.T) {
	a := newAgentEnv(t, "")
	started := a.path("started")
	a.writeConfig(a.job("slow", a.data("slow"), `schedule = "00:10"`, fmt.Sprintf(`pre_hook = "touch %s; sleep 60"`, started)))
	// the job starts after one real second; stop it a second later
	begin := time.Now()
	lines, r := a.daemon("2026-03-02T00:00:00Z", 2500*time.Millisecond)
	expectCode(t, r, 0)
	if _, err := os.Stat(started); err != nil {
		t.Fatalf("the job did not start: %v\n%s", err, r)
	}
	if d := time.Since(begin); d > 15*time.Second {
		t.Errorf("the agent took %s to stop", d)
	}
	runs := runsOf(lines, "slow")
	if len(runs) != 1 || runs[0].Status != "interrupted" {
		t.Fatalf("runs %+v\n%s", runs, r)
	}
	a.ok("check")
}

func TestAgentCommands(t *testing.T) {
	a := newAgentEnv(t, "")
	a.writeConfig(a.job("data", a.data("data"), `schedule = "Mon..Fri"`, `window = "01:00-05:00"`, `verify_subset = "50%"`, `verify_every_days = 7`))

	r := a.run("agent", "config", "check", a.config)
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "ok, 1 job") || !strings.Contains(r.stdout, "into it") {
		t.Errorf("config check: %s", r)
	}
	// run one job now: a snapshot, a log line, the exit code of backup
	r = a.run("agent", "--config", a.config, "run", "data")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "status=ok") || !strings.Contains(r.stdout, "job=data") || len(a.snapshots()) != 1 {
		t.Errorf("agent run: %s", r)
	}
	// as systemd starts it: no $HOME, no XDG directories
	bare := exec.Command(floeBin, "agent", "--config", a.config, "run", "data")
	bare.Env = []string{"PATH=" + os.Getenv("PATH"), "FLOE_INSECURE_TEST_KDF=1"}
	if out, err := bare.CombinedOutput(); err != nil || !strings.Contains(string(out), "status=ok") {
		t.Errorf("agent run without HOME: %v\n%s", err, out)
	}
	r = a.run("agent", "--config", a.config, "run", "--verify", "data")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "task=check") || !strings.Contains(r.stdout, "subset=50%") {
		t.Errorf("agent run --verify: %s", r)
	}
	r = a.run("agent", "--config", a.config, "next")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "data: ") || !strings.Contains(r.stdout, "last run") || !strings.Contains(r.stdout, "verify 50% after the first backup from") {
		t.Errorf("agent next: %s", r)
	}
	expectCode(t, a.run("agent", "--config", a.config, "run", "nosuchjob"), ExitUsageCode)
	// exit codes as backup's: wrong password, missing repository
	wrong := a.path("wrong")
	writeSecretFile(t, wrong)
	a.writeConfig(a.job("data", a.path("data")) + fmt.Sprintf("\n[[job]]\nname = \"gone\"\nrepository = %q\npassword_file = %q\npaths = [%q]\n", a.path("nothing"), a.pwFile, a.path("data")))
	r = a.run("agent", "--config", a.config, "run", "gone")
	expectCode(t, r, 10)
	a.writeConfig(fmt.Sprintf("\n[[job]]\nname = \"w\"\nrepository = %q\npassword_file = %q\npaths = [%q]\n", a.repo, wrong, a.path("data")))
	r = a.run("agent", "--config", a.config, "run", "w")
	expectCode(t, r, 11)
	if !strings.Contains(r.stdout, "status=failed") {
		t.Errorf("no failed run logged: %s", r)
	}
	// the test clock is for tests only
	r = a.run("agent", "--config", a.config, "next", "--time-scale", "100")
	expectCode(t, r, ExitUsageCode)
}

const ExitUsageCode = 2

func TestAgentConfigCheckErrors(t *testing.T) {
	e := newEnv(t)
	bad := e.path("agent.toml")
	text := `host = "h"
[[job]]
name = "a"
repository = "/srv/r"
password_file = "/p"
paths = ["/etc"]
schedul = "daily"
schedule = "Mon..Fry 02:00"
`
	if err := os.WriteFile(bad, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.run("agent", "config", "check", bad)
	expectCode(t, r, 1)
	for _, want := range []string{bad + `:7: unknown key "job.schedul"`, bad + `:8: job "a": schedule "Mon..Fry 02:00": unknown day "Fry"`, "2 problems"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("no %q in:\n%s", want, r)
		}
	}
	// the daemon refuses it too, before doing anything
	expectCode(t, e.run("agent", "--config", bad), 1)
	r = e.run("agent", "config", "check", e.path("missing.toml"))
	expectCode(t, r, 1)
}

// TestAgentInstall writes the systemd unit and has systemd check it
// (when systemd-analyze is there; scripts/test.sh installs it).
func TestAgentInstall(t *testing.T) {
	e := newEnv(t)
	units := e.mkdir("units")
	cfg := e.path("agent.toml")
	r := e.run("agent", "--config", cfg, "install", "--unit-dir", units)
	expectCode(t, r, 0)
	unit, err := os.ReadFile(filepath.Join(units, "floe-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart="+floeBin+" agent --config "+cfg+"\n") {
		t.Errorf("unit:\n%s", unit)
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze: the unit is not verified")
	}
	out, err := exec.Command(analyze, "verify", filepath.Join(units, "floe-agent.service")).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	expectFail(t, e.run("agent", "--config", "relative path.toml", "install", "--unit-dir", units))
}

// TestAgentServer: a job on a floe server, with a backup token, a
// write-only key and the server's fingerprint, backs up; its verification
// needs to read, which the backup token may not (exit 14); a wrong
// fingerprint is refused. The token never shows in the logs.
func TestAgentServer(t *testing.T) {
	e := newEnv(t)
	s, admin := e.startFleetServer()
	web1 := s.token("fleet", "web1", "backup")
	woKey := s.writeOnlyKey(admin, "web1.key")

	a := &agentEnv{floeEnv: e, config: e.path("agent.toml"), state: e.path("state")}
	job := func(fingerprint string) string {
		return fmt.Sprintf("\n[[job]]\nname = \"web\"\nrepository = %q\nkey_file = %q\ntoken_file = %q\nserver_fingerprint = %q\npaths = [%q]\nschedule = \"daily\"\nverify_subset = \"1/3\"\nverify_every_days = 7\n",
			s.url("fleet"), woKey, web1, fingerprint, a.data("web"))
	}
	a.writeConfig(job(s.fingerprint))
	expectCode(t, a.run("agent", "config", "check", a.config), 0)
	r := a.run("agent", "--config", a.config, "run", "web")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "status=ok") || !strings.Contains(r.stdout, "files_new=1") {
		t.Errorf("agent run on a floe server: %s", r)
	}
	r = s.remote("fleet", admin, "--password-file", e.pwFile, "snapshots", "--json")
	expectCode(t, r, 0)
	if snaps := decodeJSON[snapshotList](t, r).Snapshots; len(snaps) != 1 || snaps[0].Hostname != "e2e-host" {
		t.Errorf("snapshots on the server: %+v", snaps)
	}
	r = a.run("agent", "--config", a.config, "run", "--verify", "web")
	expectCode(t, r, 14)
	// the same for check itself: a refusal, not damage
	expectCode(t, s.remote("fleet", web1, "--key-file", woKey, "check"), 14)
	expectCode(t, s.remote("fleet", web1, "--key-file", woKey, "check", "--read-data-subset", "1/2"), 14)

	a.writeConfig(job("sha256:" + strings.Repeat("00", 32)))
	r = a.run("agent", "--config", a.config, "run", "web")
	expectFail(t, r)
	if !strings.Contains(r.stdout, "status=failed") || !strings.Contains(strings.ToLower(r.stdout), "fingerprint") {
		t.Errorf("wrong fingerprint: %s", r)
	}
}

// TestAgentReload: SIGHUP reads the configuration again; one with a
// mistake is logged and the old one kept.
func TestAgentReload(t *testing.T) {
	a := newAgentEnv(t, "")
	alpha := a.job("alpha", a.data("alpha"), `schedule = "00:20"`)
	a.writeConfig(alpha)
	late := a.data("late")
	lines, r := a.daemonWith("2026-03-02T00:00:00Z", 5500*time.Millisecond, func(p *os.Process) {
		// at about 00:10: first a mistake, then a new job
		a.writeConfig(alpha + a.job("late", late, `schedule = "00:4O"`))
		p.Signal(syscall.SIGHUP)
		time.Sleep(300 * time.Millisecond)
		a.writeConfig(alpha + a.job("late", late, `schedule = "00:40"`))
		p.Signal(syscall.SIGHUP)
	})
	expectCode(t, r, 0)
	var msgs []string
	for _, l := range lines {
		if strings.Contains(l.Msg, "configuration") {
			msgs = append(msgs, l.Msg)
		}
	}
	if len(msgs) != 2 || !strings.Contains(msgs[0], "configuration not reloaded") || !strings.Contains(msgs[0], "agent.toml:") ||
		msgs[1] != "reloading the configuration" {
		t.Errorf("reload messages %q\n%s", msgs, r)
	}
	for _, tc := range []struct{ job, at string }{{"alpha", "2026-03-02T00:20:00Z"}, {"late", "2026-03-02T00:40:00Z"}} {
		runs := runsOf(lines, tc.job)
		if len(runs) != 1 || runs[0].Status != "ok" || !runs[0].Scheduled.Equal(virtual(t, tc.at)) {
			t.Errorf("%s: %+v\n%s", tc.job, runs, r)
		}
	}
}
