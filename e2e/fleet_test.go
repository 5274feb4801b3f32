//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/storage/remote"
)

// enrollHost adds host with `floe serve host add` and enrolls it as the
// agent does (fleet.Enroll), returning its fleet client.
func (s *floeServer) enrollHost(t *testing.T, host, repo string) *fleet.Client {
	t.Helper()
	r := s.e.run("serve", "host", "add", "--root", s.root, "--repo", repo, host)
	expectCode(t, r, 0)
	tok := strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(tok, "floe_enroll_") {
		t.Fatalf("host add printed %q", r.stdout)
	}
	addSecret(tok)
	hc, err := remote.NewHTTPClient("https://"+s.addr, remote.Options{Fingerprint: s.fingerprint})
	if err != nil {
		t.Fatal(err)
	}
	cr, err := fleet.Enroll(context.Background(), hc, "https://"+s.addr, tok)
	if err != nil {
		t.Fatal(err)
	}
	addSecret(cr.Token)
	if _, err := fleet.Enroll(context.Background(), hc, "https://"+s.addr, tok); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("an enrollment token worked twice: %v", err)
	}
	return &fleet.Client{Base: "https://" + s.addr, Token: cr.Token, HTTP: hc, Poll: time.Second}
}

func (s *floeServer) fleet(tokenFile string, args ...string) result {
	s.e.t.Helper()
	return s.e.run(append([]string{"fleet", "--server", "https://" + s.addr, "--token-file", tokenFile, "--server-fingerprint", s.fingerprint}, args...)...)
}

// The fleet end to end: hosts enrolled with one-time tokens take leases
// within --max-concurrent-backups, report runs, and show in floe fleet
// status (Nagios exit codes), runs and report; a failed job fires a
// webhook; a revoked host is refused.
func TestFleetServer(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var notes []fleet.Notification
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n fleet.Notification
		if err := json.NewDecoder(r.Body).Decode(&n); err == nil {
			mu.Lock()
			notes = append(notes, n)
			mu.Unlock()
		}
	}))
	defer hook.Close()
	root := e.mkdir("srv")
	s := e.startServer(root, freePort(t), "--max-concurrent-backups", "1", "--lease-ttl", "3s",
		"--alert-webhook", hook.URL, "--alert-interval", "300ms", "--metrics-listen", "127.0.0.1:0")
	ctx := context.Background()
	web1 := s.enrollHost(t, "web1", "fleet")
	db1 := s.enrollHost(t, "db1", "fleet")
	viewer := s.token("fleet", "ops", "viewer")
	backup := s.token("fleet", "other", "backup")

	// nothing reported yet: WARNING (never)
	r := s.fleet(viewer, "status")
	expectCode(t, r, 1)
	if !strings.Contains(r.stdout, "FLEET WARNING") {
		t.Fatalf("status: %s", r)
	}

	// stampede control: one backup at a time
	le, err := web1.Lease(ctx, "daily")
	if err != nil {
		t.Fatal(err)
	}
	if l, q, err := db1.RequestLease(ctx, "daily", "", time.Second); err != nil || l != nil || q.Position != 1 {
		t.Fatalf("db1 not queued: %v %+v %v", l, q, err)
	}
	r = s.fleet(viewer, "status", "--json")
	var st struct {
		ExitCode int               `json:"exit_code"`
		Jobs     []fleet.JobStatus `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r)
	}
	now := time.Now().UTC()
	if err := web1.Report(ctx, fleet.Run{Job: "daily", Task: fleet.TaskBackup, Started: now.Add(-time.Minute), Finished: now, Status: fleet.StatusOK, Attempt: 1,
		FilesNew: 12, TotalBytes: 5 << 20, DataAdded: 1 << 20, DataAddedStored: 600 << 10, Version: "e2e", NextDue: now.Add(24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := web1.Release(ctx, le.ID); err != nil {
		t.Fatal(err)
	}
	ld, err := db1.Lease(ctx, "daily")
	if err != nil {
		t.Fatal(err)
	}
	if err := db1.Report(ctx, fleet.Run{Job: "daily", Task: fleet.TaskBackup, Started: now, Finished: now.Add(time.Second), Status: fleet.StatusFailed, Attempt: 1,
		Error: "pre hook failed", Version: "e2e", NextDue: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	_ = db1.Release(ctx, ld.ID)

	r = s.fleet(viewer, "status")
	expectCode(t, r, 2)
	if !strings.Contains(r.stdout, "FLEET CRITICAL - 1 failed, 1 ok") || strings.Index(r.stdout, "db1") > strings.Index(r.stdout, "web1") {
		t.Fatalf("status (failed first): %s", r)
	}
	r = s.fleet(viewer, "runs", "--host", "web1")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "web1") || strings.Contains(r.stdout, "db1") || !strings.Contains(r.stdout, " ok ") {
		t.Fatalf("runs: %s", r)
	}
	r = s.fleet(viewer, "report")
	expectCode(t, r, 0)
	for _, want := range []string{"NEEDS ATTENTION", "failed   db1 daily: pre hook failed", "RUNS SINCE", "2 (1 succeeded, 1 failed)"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("report lacks %q: %s", want, r)
		}
	}
	// a backup token may not see the fleet
	expectCode(t, s.fleet(backup, "status"), 14)
	// a server that cannot be asked is UNKNOWN
	expectCode(t, e.run("fleet", "status", "--server", "https://127.0.0.1:1", "--token-file", viewer), 3)

	// the failed job fired the webhook once
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(notes)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // further evaluations must not repeat it
	mu.Lock()
	got := append([]fleet.Notification(nil), notes...)
	mu.Unlock()
	if len(got) != 1 || got[0].Kind != fleet.AlertJobFailed || got[0].Host != "db1" || got[0].Event != fleet.EventFiring {
		t.Fatalf("webhook notifications: %+v", got)
	}

	// floe serve alert test reaches the webhook; a target that refuses fails it
	expectCode(t, e.run("serve", "alert", "test", "--alert-webhook", hook.URL), 0)
	mu.Lock()
	last := notes[len(notes)-1]
	mu.Unlock()
	if last.Event != fleet.EventTest {
		t.Fatalf("alert test sent %+v", last)
	}
	expectFail(t, e.run("serve", "alert", "test", "--alert-webhook", "http://127.0.0.1:1/"))
	expectCode(t, e.run("serve", "alert", "test"), 2)

	// Prometheus: state, last success and duration per host and job
	res, err := http.Get(s.metrics)
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{`floe_fleet_job_state{host="db1",job="daily",state="failed"} 1`, `floe_fleet_job_state{host="web1",job="daily",state="ok"} 1`,
		`floe_fleet_last_success_timestamp_seconds{host="web1",job="daily"}`, `floe_fleet_last_run_duration_seconds{host="web1",job="daily"} 60`} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// the dashboard is served by floe serve at /ui/: log in with the viewer token
	jar, _ := cookiejar.New(nil)
	hc := rawClient()
	hc.Jar = jar
	res, err = hc.Get("https://" + s.addr + "/ui/login")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(page)
	if m == nil {
		t.Fatalf("login page: %s", page)
	}
	res, err = hc.PostForm("https://"+s.addr+"/ui/login", url.Values{"csrf": {string(m[1])}, "token": {readToken(t, viewer)}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	res, err = hc.Get("https://" + s.addr + "/ui/api/status")
	if err != nil {
		t.Fatal(err)
	}
	sb, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(sb), `"host":"db1"`) {
		t.Fatalf("dashboard status after login: %d %s", res.StatusCode, sb)
	}
	// a backup token cannot log in
	if _, code := dashboardLogin(t, s.addr, readToken(t, backup)); code != http.StatusUnauthorized {
		t.Fatalf("dashboard login with a backup token: %d", code)
	}

	// revoked: its reports are refused
	expectCode(t, e.run("serve", "host", "revoke", "--root", root, "db1"), 0)
	if err := db1.Report(ctx, fleet.Run{Job: "daily", Task: fleet.TaskBackup, Started: now, Finished: now, Status: fleet.StatusOK}); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("report of a revoked host: %v", err)
	}
	r = e.run("serve", "host", "list", "--root", root)
	if !strings.Contains(r.stdout, "revoked") || !strings.Contains(r.stdout, "enrolled") {
		t.Fatalf("host list: %s", r)
	}
	// enrollments, reports and refusals are in the audit log
	seen := map[string]bool{}
	for _, l := range s.auditLines() {
		seen[fmt.Sprint(l["op"], " ", l["host"], " ", l["result"])] = true
	}
	for _, want := range []string{"fleet:enroll web1 ok", "fleet:enroll <nil> refused", "fleet:report web1 ok", "fleet:POST runs <nil> refused", "fleet:GET status other refused"} {
		if !seen[want] {
			t.Errorf("audit log lacks %q: %v", want, seen)
		}
	}
}

// dashboardLogin logs in to the dashboard and returns the client holding
// the session and the answer's status.
func dashboardLogin(t *testing.T, addr, token string) (*http.Client, int) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := rawClient()
	hc.Jar = jar
	res, err := hc.Get("https://" + addr + "/ui/login")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	// over TLS the session cookies are Secure
	for _, c := range res.Header.Values("Set-Cookie") {
		if !strings.Contains(c, "Secure") || !strings.Contains(c, "HttpOnly") {
			t.Errorf("cookie over TLS without Secure/HttpOnly: %s", c)
		}
	}
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(page)
	if m == nil {
		t.Fatalf("login page: %s", page)
	}
	res, err = hc.PostForm("https://"+addr+"/ui/login", url.Values{"csrf": {string(m[1])}, "token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return hc, res.StatusCode
}

// The agent in the fleet: `floe agent enroll` with the token of `floe
// serve host add`; `floe agent run` then takes a lease from the server,
// backs up with the enrolled backup token, and its report shows in `floe
// fleet status` and `floe fleet runs`.
func TestFleetAgent(t *testing.T) {
	e := newEnv(t)
	s, admin := e.startFleetServer("--max-concurrent-backups", "1")
	viewer := s.token("fleet", "ops", "viewer")
	woKey := s.writeOnlyKey(admin, "host.key")

	a := &agentEnv{floeEnv: e, config: e.path("agent.toml"), state: e.path("state")}
	tokenFile := filepath.Join(a.state, "server", "token")
	a.writeConfig(fmt.Sprintf("\n[[job]]\nname = \"web\"\nrepository = %q\nkey_file = %q\ntoken_file = %q\nserver_fingerprint = %q\npaths = [%q]\nschedule = \"00:20\"\n",
		s.url("fleet"), woKey, tokenFile, s.fingerprint, a.data("web")))

	r := e.run("serve", "host", "add", "--root", s.root, "--repo", "fleet", "e2e-host")
	expectCode(t, r, 0)
	enroll := strings.TrimSpace(r.stdout)
	addSecret(enroll)
	// a wrong fingerprint is refused before the token is sent
	r = a.run("agent", "--config", a.config, "enroll", "https://"+s.addr, enroll, "--server-fingerprint", "sha256:"+strings.Repeat("00", 32))
	expectFail(t, r)
	r = a.run("agent", "--config", a.config, "enroll", "https://"+s.addr, enroll, "--server-fingerprint", s.fingerprint)
	expectCode(t, r, 0)
	if fi, err := os.Stat(tokenFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	addSecret(readToken(t, tokenFile))
	// used up
	expectCode(t, a.run("agent", "--config", a.config, "enroll", "https://"+s.addr, enroll, "--server-fingerprint", s.fingerprint), 14)

	r = a.run("agent", "--config", a.config, "run", "web")
	expectCode(t, r, 0)
	if strings.Contains(r.stdout, "report not sent") || strings.Contains(r.stdout, "server not used") {
		t.Fatalf("agent run: %s", r)
	}
	r = s.fleet(viewer, "status", "--json")
	expectCode(t, r, 0)
	var st struct {
		Jobs []fleet.JobStatus `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Jobs) != 1 || st.Jobs[0].Host != "e2e-host" || st.Jobs[0].Job != "web" || st.Jobs[0].State != fleet.StateOK ||
		st.Jobs[0].NextDue.IsZero() || st.Jobs[0].LastRun == nil || st.Jobs[0].LastRun.Files != 1 || st.Jobs[0].LastRun.Version == "" {
		t.Fatalf("fleet status after an agent run: %s", r.stdout)
	}
	r = s.fleet(viewer, "runs", "--host", "e2e-host")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "web") || !strings.Contains(r.stdout, " ok ") {
		t.Fatalf("runs: %s", r)
	}
	// the daemon too: its scheduled run (on the test clock: 00:20 of a
	// virtual day) takes a server lease and is reported
	lines, r := a.daemon("2026-03-02T00:19:00Z", 3*time.Second)
	expectCode(t, r, 0)
	if runs := runsOf(lines, "web"); len(runs) != 1 || runs[0].Status != "ok" || strings.Contains(r.stdout, "not sent") || strings.Contains(r.stdout, "server not used") {
		t.Fatalf("daemon: %s", r)
	}
	r = s.fleet(viewer, "runs", "--host", "e2e-host", "--json")
	expectCode(t, r, 0)
	var doc struct{ Runs []fleet.RunRecord }
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || len(doc.Runs) != 2 {
		t.Fatalf("runs after the daemon's: %v %s", err, r)
	}
	runs := doc.Runs
	found := false
	for _, rr := range runs {
		found = found || rr.Start.Format("2006-01-02T15:04") == "2026-03-02T00:20"
	}
	if !found {
		t.Fatalf("the daemon's run (2026-03-02 00:20 on the test clock) is not on the server: %s", r.stdout)
	}

	// revoked: the agent's reports are refused (and logged as not sent)
	expectCode(t, e.run("serve", "host", "revoke", "--root", s.root, "e2e-host"), 0)
	r = a.run("agent", "--config", a.config, "run", "web")
	expectFail(t, r)
}
