//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/floe-backup/floe/internal/fleet"
)

// fleetHost is one agent of a fleet test: its own configuration, state
// and cache directories and host name, run as a process on a test clock.
type fleetHost struct {
	e                    *floeEnv
	name                 string
	config, state, cache string
}

func newFleetHost(e *floeEnv, name, jobs string) *fleetHost {
	e.t.Helper()
	h := &fleetHost{e: e, name: name, config: e.path(name, "agent.toml"), state: e.path(name, "state"), cache: e.path(name, "cache")}
	e.mkdir(name)
	text := fmt.Sprintf("host = %q\ntimezone = \"UTC\"\nstate_dir = %q\ncache_dir = %q\n", name, h.state, h.cache) + jobs
	if err := os.WriteFile(h.config, []byte(text), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return h
}

// agentProc is a running `floe agent`.
type agentProc struct {
	h      *fleetHost
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
}

// start runs the host's agent on a clock that reads start now and runs
// scale times faster than the wall clock.
func (h *fleetHost) start(start time.Time, scale float64) *agentProc {
	h.e.t.Helper()
	p := &agentProc{h: h, done: make(chan struct{})}
	p.cmd = exec.Command(floeBin, "agent", "--config", h.config, "--log-format", "json",
		"--clock-start", start.UTC().Format(time.RFC3339Nano), "--time-scale", fmt.Sprint(scale))
	p.cmd.Env = append(h.e.environ(), "FLOE_AGENT_TEST_CLOCK=1")
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		h.e.t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	h.e.t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	return p
}

// stop ends the agent with SIGTERM (or SIGKILL) and returns its log lines.
func (p *agentProc) stop(sig syscall.Signal) []logLine {
	t := p.h.e.t
	t.Helper()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("agent %s did not stop:\n%s\n%s", p.h.name, p.stdout.String(), p.stderr.String())
	}
	out := p.stdout.String()
	if s, leaked := leakedSecret(out, p.stderr.String()); leaked {
		t.Errorf("agent %s logged the secret %.6s...", p.h.name, s)
	}
	if strings.Contains(p.stderr.String(), "panic: ") {
		t.Errorf("agent %s panicked:\n%s", p.h.name, p.stderr.String())
	}
	var lines []logLine
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			continue // a line cut off by SIGKILL
		}
		lines = append(lines, l)
	}
	return lines
}

// retentionLine is the log line of a retention run.
type retentionLine struct {
	Msg              string `json:"msg"`
	Task             string `json:"task"`
	Status           string `json:"status"`
	Error            string `json:"error"`
	SnapshotsKept    int    `json:"snapshots_kept"`
	SnapshotsRemoved int    `json:"snapshots_removed"`
	PrunedBytes      int64  `json:"pruned_bytes"`
	MarkedBytes      int64  `json:"marked_bytes"`
}

// changing rewrites dir/data.bin with new random bytes every period
// (atomically, by rename, so that a backup never reads it half written)
// until stop is called, so that each backup stores new data and old
// snapshots hold data the newest do not.
func changing(t *testing.T, dirs []string, period time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			for _, d := range dirs {
				b := make([]byte, 64<<10)
				rand.Read(b)
				tmp := filepath.Join(filepath.Dir(d), filepath.Base(d)+".tmp")
				if err := os.WriteFile(tmp, b, 0o644); err != nil {
					t.Error(err)
					return
				}
				if err := os.Rename(tmp, filepath.Join(d, "data.bin")); err != nil {
					t.Error(err)
					return
				}
			}
			select {
			case <-done:
				return
			case <-time.After(period):
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// Retention in a fleet, end to end with real processes: two hosts back
// up through the floe server every hour (write-only keys, backup tokens
// that may not delete); then the admin host's agent, enrolled in the
// fleet, runs its job of type retention on its schedule (a test clock):
// keep_hourly = 2 forgets the older snapshots of each host, prune (grace
// 0: no backup runs meanwhile) marks their data in the first run and
// deletes it in the second; the repository shrinks, floe check passes
// and floe fleet status shows the retention job.
func TestFleetRetention(t *testing.T) {
	e := newEnv(t)
	s, admin := e.startFleetServer()
	root := s.root
	viewer := s.token("fleet", "ops", "viewer")

	day := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	var hosts []*fleetHost
	var dirs []string
	for _, name := range []string{"web1", "db1"} {
		key := e.path(name + ".key")
		expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "key", "add", "--write-only", "--new-key-file", key), 0)
		registerKeyFile(t, key)
		tok := s.token("fleet", name, "backup")
		data := e.mkdir(name + "-data")
		dirs = append(dirs, data)
		hosts = append(hosts, newFleetHost(e, name, fmt.Sprintf("\n[[job]]\nname = \"system\"\nrepository = %q\nkey_file = %q\ntoken_file = %q\nserver_fingerprint = %q\npaths = [%q]\nschedule = \"hourly\"\n",
			s.url("fleet"), key, tok, s.fingerprint, data)))
	}
	stopChanging := changing(t, dirs, 200*time.Millisecond)

	// hourly backups from 00:50: at 1800 times the wall clock an hour
	// is two seconds; 7.5 s are the runs of 01:00 to 04:00
	var procs []*agentProc
	for _, h := range hosts {
		procs = append(procs, h.start(day.Add(50*time.Minute), 1800))
	}
	time.Sleep(7500 * time.Millisecond)
	for _, p := range procs {
		lines := p.stop(syscall.SIGTERM)
		if runs := runsOf(lines, "system"); len(runs) < 3 {
			t.Fatalf("%s ran %d backups, want at least 3:\n%s", p.h.name, len(runs), p.stdout.String())
		}
	}
	stopChanging()
	before := snapshotsByHost(t, s, admin, e.pwFile)
	sizeBefore := dirSize(t, filepath.Join(root, "fleet"))
	for _, h := range hosts {
		if n := len(before[h.name]); n < 3 {
			t.Fatalf("%s has %d snapshots before retention", h.name, n)
		}
	}
	// a backup token may not delete: the reason retention runs elsewhere
	expectCode(t, s.remote("fleet", e.path("web1-backup.token"), "--password-file", e.pwFile, "forget", "--keep-last", "1"), 14)

	// the admin host: a full key (the password) and an admin token,
	// enrolled so that its runs show in the fleet
	adm := newFleetHost(e, "admin-host", fmt.Sprintf("\n[[job]]\nname = \"retention\"\ntype = \"retention\"\nrepository = %q\npassword_file = %q\ntoken_file = %q\nserver_fingerprint = %q\nschedule = [\"05:30\", \"05:45\"]\nkeep_hourly = 2\nprune_grace = \"0\"\n",
		s.url("fleet"), e.pwFile, admin, s.fingerprint))
	expectCode(t, e.run("agent", "config", "check", adm.config), 0)
	r := e.run("serve", "host", "add", "--root", root, "--repo", "fleet", "admin-host")
	expectCode(t, r, 0)
	enroll := strings.TrimSpace(r.stdout)
	addSecret(enroll)
	expectCode(t, e.run("agent", "--config", adm.config, "enroll", "https://"+s.addr, enroll, "--server-fingerprint", s.fingerprint), 0)
	addSecret(readToken(t, filepath.Join(adm.state, "server", "token")))

	// 05:20 at 600 times: 05:30 after one second, 05:45 after 2.5
	p := adm.start(day.Add(5*time.Hour+20*time.Minute), 600)
	deadline := time.Now().Add(30 * time.Second)
	var rets []retentionLine
	for time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		rets = retentionRuns(p.stdout.String())
		if len(rets) >= 2 {
			break
		}
	}
	p.stop(syscall.SIGTERM)
	rets = retentionRuns(p.stdout.String())
	if len(rets) != 2 {
		t.Fatalf("retention runs: %+v\n%s\n%s", rets, p.stdout.String(), p.stderr.String())
	}
	removed := 0
	for _, h := range hosts {
		removed += len(before[h.name]) - 2
	}
	if rets[0].Status != "ok" || rets[0].SnapshotsRemoved != removed || rets[0].SnapshotsKept != 4 || rets[0].MarkedBytes == 0 {
		t.Fatalf("first retention run: %+v (want %d removed, 4 kept, data marked)", rets[0], removed)
	}
	if rets[1].Status != "ok" || rets[1].SnapshotsRemoved != 0 || rets[1].PrunedBytes < rets[0].MarkedBytes/2 {
		t.Fatalf("second retention run: %+v (want the data marked by the first deleted)", rets[1])
	}

	// each host keeps its two newest snapshots (the hours 03:00 and 04:00 of the test clock)
	after := snapshotsByHost(t, s, admin, e.pwFile)
	for _, h := range hosts {
		b, a := before[h.name], after[h.name]
		if len(a) != 2 || a[0].ID != b[len(b)-2].ID || a[1].ID != b[len(b)-1].ID {
			t.Fatalf("%s after retention: %+v\nbefore: %+v", h.name, a, b)
		}
	}
	sizeAfter := dirSize(t, filepath.Join(root, "fleet"))
	t.Logf("repository: %d bytes before retention, %d after; runs: %+v", sizeBefore, sizeAfter, rets)
	if sizeAfter >= sizeBefore-rets[1].PrunedBytes/2 {
		t.Fatalf("the repository did not shrink: %d bytes before, %d after", sizeBefore, sizeAfter)
	}
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data"), 0)

	// the server knows the retention job from its reports
	r = s.fleet(viewer, "runs", "--host", "admin-host", "--json")
	expectCode(t, r, 0)
	var doc struct{ Runs []fleet.RunRecord }
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatal(err)
	}
	runs := doc.Runs
	if len(runs) != 2 || runs[0].Task != fleet.TaskRetention || runs[0].BytesFreed != rets[1].PrunedBytes || runs[1].SnapshotsRemoved != int64(removed) {
		t.Fatalf("retention runs on the server: %s", r.stdout)
	}
}

// snapshotsByHost lists the repository's snapshots per host, oldest first.
func snapshotsByHost(t *testing.T, s *floeServer, token, pwFile string) map[string][]snapshotOut {
	t.Helper()
	r := s.remote("fleet", token, "--password-file", pwFile, "snapshots", "--json")
	expectCode(t, r, 0)
	out := map[string][]snapshotOut{}
	for _, sn := range decodeJSON[snapshotList](t, r).Snapshots {
		out[sn.Hostname] = append(out[sn.Hostname], sn)
	}
	return out
}

func retentionRuns(out string) []retentionLine {
	var rets []retentionLine
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var l retentionLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "run" && l.Task == "retention" {
			rets = append(rets, l)
		}
	}
	return rets
}

// alertSink collects notifications from a webhook and an SMTP server
// (go-smtp) run by the test.
type alertSink struct {
	mu    sync.Mutex
	hooks []fleet.Notification
	mails []string
	url   string
	smtp  string
}

type sinkSession struct{ s *alertSink }

func (x *sinkSession) Reset()                                 {}
func (x *sinkSession) Logout() error                          { return nil }
func (x *sinkSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (x *sinkSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (x *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	x.s.mu.Lock()
	x.s.mails = append(x.s.mails, string(b))
	x.s.mu.Unlock()
	return nil
}

func newAlertSink(t *testing.T) *alertSink {
	s := &alertSink{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n fleet.Notification
		if err := json.NewDecoder(r.Body).Decode(&n); err == nil {
			s.mu.Lock()
			s.hooks = append(s.hooks, n)
			s.mu.Unlock()
		}
	}))
	t.Cleanup(hook.Close)
	s.url = hook.URL
	srv := gosmtp.NewServer(gosmtp.BackendFunc(func(c *gosmtp.Conn) (gosmtp.Session, error) { return &sinkSession{s: s}, nil }))
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.smtp = ln.Addr().String()
	return s
}

// count returns how many webhook notifications and mails match event and host.
func (s *alertSink) count(event string, kind fleet.AlertKind, host string) (hooks, mails int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.hooks {
		if n.Event == event && n.Kind == kind && n.Host == host {
			hooks++
		}
	}
	for _, m := range s.mails {
		subject, _, _ := strings.Cut(m[strings.Index(m, "Subject: "):], "\r\n")
		if strings.Contains(subject, "[floe "+event+"]") && strings.Contains(subject, string(kind)+" "+host+" ") {
			mails++
		}
	}
	return hooks, mails
}

func (s *alertSink) all() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, n := range s.hooks {
		fmt.Fprintf(&b, "webhook: %s %s %s %s\n", n.Event, n.Kind, n.Host, n.Job)
	}
	for _, m := range s.mails {
		subject, _, _ := strings.Cut(m[strings.Index(m, "Subject: "):], "\r\n")
		fmt.Fprintf(&b, "mail: %s\n", subject)
	}
	return b.String()
}

// waitFor polls cond every 100 ms for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// A fleet with real processes: a server and three enrolled agents (own
// state directories and host names) on loopback run their schedules on
// one compressed clock, back up and report; floe fleet status shows each
// host ok. Killing one agent makes its host overdue: the webhook and the
// mail fire once; started again, it catches up its missed run and the
// alert resolves (one "resolved" each).
func TestFleetAgentsOverdue(t *testing.T) {
	e := newEnv(t)
	sink := newAlertSink(t)
	const scale = 900 // an hour is four seconds
	clock0 := time.Date(2026, 3, 2, 0, 50, 0, 0, time.UTC)
	e.env = append(e.env, "FLOE_SERVE_TEST_CLOCK=1")
	real0 := time.Now()
	s, admin := e.startFleetServer("--clock-start", clock0.Format(time.RFC3339), "--time-scale", fmt.Sprint(scale),
		"--overdue-slack", "45m", "--alert-interval", "200ms", "--alert-webhook", sink.url,
		"--alert-smtp", sink.smtp, "--alert-mail-to", "ops@example.com")
	root := s.root
	// the agents' clocks read what the server's reads when they start
	serverNow := func() time.Time { return clock0.Add(time.Duration(float64(time.Since(real0)) * scale)) }
	viewer := s.token("fleet", "ops", "viewer")

	names := []string{"web1", "web2", "db1"}
	hosts := map[string]*fleetHost{}
	procs := map[string]*agentProc{}
	for _, name := range names {
		key := e.path(name + ".key")
		expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "key", "add", "--write-only", "--new-key-file", key), 0)
		registerKeyFile(t, key)
		state := e.path(name, "state")
		h := newFleetHost(e, name, fmt.Sprintf("\n[[job]]\nname = \"system\"\nrepository = %q\nkey_file = %q\ntoken_file = %q\nserver_fingerprint = %q\npaths = [%q]\nschedule = \"hourly\"\n",
			s.url("fleet"), key, filepath.Join(state, "server", "token"), s.fingerprint, e.mkdir(name+"-data")))
		if err := os.WriteFile(filepath.Join(e.path(name+"-data"), "file"), []byte("data of "+name), 0o644); err != nil {
			t.Fatal(err)
		}
		r := e.run("serve", "host", "add", "--root", root, "--repo", "fleet", name)
		expectCode(t, r, 0)
		tok := strings.TrimSpace(r.stdout)
		addSecret(tok)
		expectCode(t, e.run("agent", "--config", h.config, "enroll", "https://"+s.addr, tok, "--server-fingerprint", s.fingerprint), 0)
		addSecret(readToken(t, filepath.Join(state, "server", "token")))
		hosts[name] = h
	}
	for _, name := range names {
		procs[name] = hosts[name].start(serverNow(), scale)
	}

	status := func() (int, map[string]fleet.JobStatus) {
		r := s.fleet(viewer, "status", "--json")
		var st struct {
			ExitCode int               `json:"exit_code"`
			Jobs     []fleet.JobStatus `json:"jobs"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			t.Fatalf("status --json: %v\n%s", err, r)
		}
		out := map[string]fleet.JobStatus{}
		for _, j := range st.Jobs {
			out[j.Host] = j
		}
		return r.code, out
	}
	// two runs of each host reported (01:00 and 02:00 of the test clock)
	if !waitFor(30*time.Second, func() bool {
		r := s.fleet(viewer, "runs", "--json", "--limit", "100")
		var doc struct{ Runs []fleet.RunRecord }
		if json.Unmarshal([]byte(r.stdout), &doc) != nil {
			return false
		}
		ok := map[string]int{}
		for _, rr := range doc.Runs {
			if rr.Status == fleet.StatusOK {
				ok[rr.Host]++
			}
		}
		return ok["web1"] >= 2 && ok["web2"] >= 2 && ok["db1"] >= 2
	}) {
		t.Fatalf("not every host reported two runs:\n%s", s.fleet(viewer, "runs"))
	}
	code, st := status()
	for _, name := range names {
		if j := st[name]; j.State != fleet.StateOK && j.State != fleet.StateRunning || j.LastRun == nil || j.NextDue.IsZero() {
			t.Fatalf("%s: %+v", name, j)
		}
	}
	if code != 0 {
		t.Fatalf("fleet status exit %d with every host ok", code)
	}
	r := s.fleet(viewer, "status")
	for _, name := range names {
		if !strings.Contains(r.stdout, name) {
			t.Fatalf("fleet status lacks %s:\n%s", name, r)
		}
	}

	// db1's agent dies: overdue after its next due time plus the slack
	procs["db1"].stop(syscall.SIGKILL)
	if !waitFor(30*time.Second, func() bool { h, m := sink.count(fleet.EventFiring, fleet.AlertOverdue, "db1"); return h > 0 && m > 0 }) {
		t.Fatalf("no overdue alert for db1:\n%s", sink.all())
	}
	code, st = status()
	if st["db1"].State != fleet.StateOverdue || code != 2 {
		t.Fatalf("status after db1 died: exit %d, db1 %s", code, st["db1"].State)
	}
	time.Sleep(time.Second) // later evaluations must not repeat it
	if h, m := sink.count(fleet.EventFiring, fleet.AlertOverdue, "db1"); h != 1 || m != 1 {
		t.Fatalf("overdue of db1 notified %d times by webhook, %d by mail:\n%s", h, m, sink.all())
	}

	// started again: the missed run runs at once, the alert resolves
	procs["db1"] = hosts["db1"].start(serverNow(), scale)
	if !waitFor(30*time.Second, func() bool { h, m := sink.count(fleet.EventResolved, fleet.AlertOverdue, "db1"); return h > 0 && m > 0 }) {
		t.Fatalf("the overdue alert of db1 did not resolve:\n%s", sink.all())
	}
	time.Sleep(time.Second)
	if h, m := sink.count(fleet.EventResolved, fleet.AlertOverdue, "db1"); h != 1 || m != 1 {
		t.Fatalf("resolved %d times by webhook, %d by mail:\n%s", h, m, sink.all())
	}
	for _, name := range names {
		lines := procs[name].stop(syscall.SIGTERM)
		for _, l := range lines {
			if strings.Contains(l.Msg, "not sent") || strings.Contains(l.Msg, "server not used") {
				t.Errorf("%s: %s", name, l.Msg)
			}
		}
	}
	// the dashboard's repository and accounting pages, from the
	// server's upload journal and the reports
	hc := dashboardClient(t, s.addr, readToken(t, viewer))
	var repo fleet.RepoStats
	getJSONFrom(t, hc, "https://"+s.addr+"/ui/api/repo?name=fleet", &repo)
	uploaders := map[string]int64{}
	for _, h := range repo.Hosts {
		uploaders[h.Host] = h.Bytes
	}
	if repo.StoredBytes <= 0 || uploaders["web1"] <= 0 || uploaders["web2"] <= 0 || uploaders["db1"] <= 0 || uploaders["admin"] <= 0 ||
		repo.ProtectedBytes <= 0 || repo.DedupRatio <= 0 || len(repo.Growth) == 0 {
		t.Fatalf("repository page: %+v", repo)
	}
	res, err := hc.Get("https://" + s.addr + "/ui/accounting.csv")
	if err != nil {
		t.Fatal(err)
	}
	csvBody, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, name := range names {
		if !strings.Contains(string(csvBody), "\n2026-03,fleet,"+name+",") {
			t.Fatalf("accounting CSV lacks %s:\n%s", name, csvBody)
		}
	}

	// nothing else fired: the other hosts stayed on time
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for _, n := range sink.hooks {
		if n.Host != "db1" || n.Kind != fleet.AlertOverdue {
			t.Errorf("unexpected notification %+v", n)
		}
	}
}

// dashboardClient logs in to the dashboard with token and returns the
// client holding the session.
func dashboardClient(t *testing.T, addr, token string) *http.Client {
	t.Helper()
	hc, _ := dashboardLogin(t, addr, token)
	return hc
}

func getJSONFrom(t *testing.T, hc *http.Client, u string, v any) {
	t.Helper()
	res, err := hc.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", u, res.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
}
