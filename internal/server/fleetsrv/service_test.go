package fleetsrv

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/server"
)

type testFleet struct {
	svc    *Service
	db     *DB
	tokens *server.TokenStore
	url    string
	state  string
}

func newTestFleet(t testing.TB, limits LeaseLimits, ttl time.Duration) *testFleet {
	t.Helper()
	state := t.TempDir()
	ctx := context.Background()
	db, err := OpenDB(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	tokens, err := server.OpenTokenStore(state)
	if err != nil {
		t.Fatal(err)
	}
	svc := New(Options{DB: db, Tokens: tokens, Leases: NewLeases(limits, ttl, nil)})
	ts := httptest.NewServer(svc)
	t.Cleanup(ts.Close)
	return &testFleet{svc: svc, db: db, tokens: tokens, url: ts.URL, state: state}
}

// enroll adds a host and enrolls it over HTTP, returning its client.
func (f *testFleet) enroll(t testing.TB, host, repo string) *fleet.Client {
	t.Helper()
	tok, hash, err := NewEnrollToken()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.db.AddHost(context.Background(), host, repo, hash, time.Now().Add(time.Hour), time.Now()); err != nil {
		t.Fatal(err)
	}
	cr, err := fleet.Enroll(context.Background(), nil, f.url, tok)
	if err != nil {
		t.Fatal(err)
	}
	if cr.Host != host || cr.Repo != repo || cr.Token == "" {
		t.Fatalf("credentials %+v", cr)
	}
	// the token is used up
	if _, err := fleet.Enroll(context.Background(), nil, f.url, tok); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("second enrollment with one token: %v", err)
	}
	dir := t.TempDir()
	if err := fleet.WriteCredentials(dir, cr); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, fleet.TokenFileName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi.Mode(), err)
	}
	return &fleet.Client{Base: f.url, Token: cr.Token, Poll: 2 * time.Second}
}

func TestLeasesOverHTTP(t *testing.T) {
	f := newTestFleet(t, LeaseLimits{Global: 1}, 3*time.Second)
	ctx := context.Background()
	a := f.enroll(t, "a", "r")
	b := f.enroll(t, "b", "r")
	la, err := a.Lease(ctx, "daily")
	if err != nil {
		t.Fatal(err)
	}
	// b waits on the server (long poll) and is queued
	start := time.Now()
	lb, q, err := b.RequestLease(ctx, "daily", "", time.Second)
	if err != nil || lb != nil || q.Position != 1 {
		t.Fatalf("b: %v %+v %v", lb, q, err)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("the server did not wait: %v", d)
	}
	// a releases while b waits: b is granted at once
	got := make(chan *fleet.Lease, 1)
	go func() {
		l, _ := b.Lease(ctx, "daily")
		got <- l
	}()
	time.Sleep(200 * time.Millisecond)
	if err := a.Release(ctx, la.ID); err != nil {
		t.Fatal(err)
	}
	var lb2 *fleet.Lease
	select {
	case lb2 = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("b not granted after a released")
	}
	if lb2 == nil {
		t.Fatal("b's lease failed")
	}
	// b dies (never renews): after the TTL (3 s) a gets the slot
	start = time.Now()
	la, err = a.Lease(ctx, "daily")
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("a granted after %v, before b's lease expired", d)
	}
	t.Logf("a granted %v after b stopped renewing (TTL 3 s)", time.Since(start))
	if _, err := b.Renew(ctx, lb2.ID); err == nil {
		t.Fatal("renewed an expired lease")
	}
	// Acquire renews in the background: holding it past the TTL keeps it
	if err := a.Release(ctx, la.ID); err != nil {
		t.Fatal(err)
	}
	release, err := a.Acquire(ctx, "daily")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	if !f.svc.opts.Leases.Running("a", "daily") {
		t.Fatal("an acquired lease expired while renewed")
	}
	release()
	if f.svc.opts.Leases.Running("a", "daily") {
		t.Fatal("release did not give the lease back")
	}
}

func TestReportsAndStatus(t *testing.T) {
	f := newTestFleet(t, LeaseLimits{}, 0)
	ctx := context.Background()
	web1 := f.enroll(t, "web1", "fleet")
	db1 := f.enroll(t, "<b>db1</b>", "fleet")
	now := time.Now().UTC()
	rep := fleet.Run{Job: "daily", Task: fleet.TaskBackup, Started: now.Add(-time.Minute), Finished: now, Status: fleet.StatusOK, FilesNew: 10, TotalBytes: 1000,
		DataAdded: 100, DataAddedStored: 60, Version: "test", NextDue: now.Add(24 * time.Hour)}
	if err := web1.Report(ctx, rep); err != nil {
		t.Fatal(err)
	}
	bad := rep
	bad.Status, bad.Error = fleet.StatusFailed, "disk full"
	if err := db1.Report(ctx, bad); err != nil {
		t.Fatal(err)
	}
	// a host may not report for another
	other := rep
	other.Host = "web1"
	if err := db1.Report(ctx, other); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("report for another host: %v", err)
	}
	// a token of a host that is not enrolled is refused
	tok, _, err := f.tokens.Add("fleet", "stranger", server.RoleBackup)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&fleet.Client{Base: f.url, Token: tok}).Report(ctx, rep); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("report of an unenrolled host: %v", err)
	}
	// backup tokens cannot read the fleet state; viewers can
	if _, err := web1.Status(ctx); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("status with a backup token: %v", err)
	}
	vtok, _, err := f.tokens.Add("fleet", "ops", server.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	viewer := &fleet.Client{Base: f.url, Token: vtok}
	st, err := viewer.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]fleet.State{}
	for _, j := range st.Jobs {
		states[j.Host+"/"+j.Job] = j.State
	}
	if states["web1/daily"] != fleet.StateOK || states["<b>db1</b>/daily"] != fleet.StateFailed {
		t.Fatalf("states %v", states)
	}
	if fleet.ExitCode(st.Jobs) != 2 {
		t.Fatalf("exit code %d", fleet.ExitCode(st.Jobs))
	}
	runs, err := viewer.Runs(ctx, "web1", time.Time{}, 0)
	if err != nil || len(runs) != 1 || runs[0].BytesStored != 60 {
		t.Fatalf("runs %+v %v", runs, err)
	}
	// revoke db1: its reports are refused
	if _, err := f.db.RevokeHost(ctx, "<b>db1</b>", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := db1.Report(ctx, rep); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("report of a revoked host: %v", err)
	}
}

func TestDBMigratesOnce(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 2; i++ {
		db, err := OpenDB(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		db.Close()
	}
	fi, err := os.Stat(filepath.Join(dir, DBFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("db file %v %v", fi, err)
	}
}

// A report sent again (the agent lost the server's answer and kept it in
// its pending file) is recorded once; another host may use the same ID.
func TestReportSentTwiceIsRecordedOnce(t *testing.T) {
	f := newTestFleet(t, LeaseLimits{}, 0)
	ctx := context.Background()
	web1 := f.enroll(t, "web1", "fleet")
	web2 := f.enroll(t, "web2", "fleet")
	now := time.Now().UTC()
	rep := fleet.Run{ID: fleet.NewReportID(), Job: "daily", Task: fleet.TaskBackup, Started: now.Add(-time.Minute), Finished: now, Status: fleet.StatusOK, Version: "test"}
	for i := 0; i < 3; i++ {
		if err := web1.Report(ctx, rep); err != nil {
			t.Fatalf("report %d: %v", i, err)
		}
	}
	if err := web2.Report(ctx, rep); err != nil {
		t.Fatal(err)
	}
	// without an ID (an older agent) every report is a run
	noID := rep
	noID.ID = ""
	for i := 0; i < 2; i++ {
		if err := web1.Report(ctx, noID); err != nil {
			t.Fatal(err)
		}
	}
	bad := rep
	bad.ID = "../../x"
	var apiErr *fleet.APIError
	if err := web1.Report(ctx, bad); !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Fatalf("hostile report id: %v", err)
	}
	for host, want := range map[string]int{"web1": 3, "web2": 1} {
		runs, err := f.db.Runs(ctx, host, time.Time{}, 100)
		if err != nil || len(runs) != want {
			t.Fatalf("%s: %d runs, want %d (%v)", host, len(runs), want, err)
		}
	}
}

// last_seen is written at most every SeenEvery per host.
func TestSeenIsThrottled(t *testing.T) {
	f := newTestFleet(t, LeaseLimits{}, 0)
	ctx := context.Background()
	f.enroll(t, "web1", "fleet")
	t0 := time.Now().Truncate(time.Millisecond)
	lastSeen := func() time.Time {
		h, err := f.db.Host(ctx, "web1")
		if err != nil {
			t.Fatal(err)
		}
		return h.LastSeen
	}
	for _, c := range []struct {
		at   time.Duration
		want time.Duration
	}{{0, 0}, {SeenEvery / 2, 0}, {SeenEvery, SeenEvery}, {SeenEvery + time.Second, SeenEvery}} {
		if err := f.db.Seen(ctx, "web1", t0.Add(c.at)); err != nil {
			t.Fatal(err)
		}
		if got := lastSeen(); !got.Equal(t0.Add(c.want)) {
			t.Fatalf("seen at +%v: last_seen +%v, want +%v", c.at, got.Sub(t0), c.want)
		}
	}
}
