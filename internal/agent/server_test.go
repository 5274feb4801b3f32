package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// A floe server that cannot be reached does not stop a run (the local
// lease still holds it); one that refuses the host does.
func TestServerLeasesFallBack(t *testing.T) {
	dir := t.TempDir()
	j := &Job{Name: "web", Repository: "/srv/repo"}
	var warned string
	down := &ServerLeases{Local: &LocalLeases{Dir: dir}, Client: &fleet.Client{Base: "http://127.0.0.1:1"},
		Warn: func(_ *Job, msg string) { warned = msg }}
	release, err := down.Lease(context.Background(), j, fleet.TaskBackup)
	if err != nil || warned == "" {
		t.Fatalf("server down: err %v, warned %q", err, warned)
	}
	release()

	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"error":"host web1 is revoked","code":"forbidden"}`))
	}))
	defer refusing.Close()
	revoked := &ServerLeases{Local: &LocalLeases{Dir: dir}, Client: &fleet.Client{Base: refusing.URL}}
	if _, err := revoked.Lease(context.Background(), j, fleet.TaskBackup); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("refused: %v", err)
	}
	// the local lease was given back
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	release, err = (&LocalLeases{Dir: dir}).Lease(ctx, j, fleet.TaskBackup)
	if err != nil {
		t.Fatal(err)
	}
	release()
}

// Reports the server could not take are kept and sent, in order, with
// the next one; refused ones are not kept.
func TestServerReporterKeepsPending(t *testing.T) {
	var mu sync.Mutex
	status := http.StatusServiceUnavailable
	var got []string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if status != http.StatusCreated {
			w.WriteHeader(status)
			_, _ = w.Write([]byte(`{"error":"no","code":"x"}`))
			return
		}
		var run fleet.Run
		_ = json.NewDecoder(r.Body).Decode(&run)
		got = append(got, run.Snapshot)
		w.WriteHeader(http.StatusCreated)
	}))
	defer ts.Close()
	pending := filepath.Join(t.TempDir(), PendingFileName)
	rep := &ServerReporter{Log: LogReporter{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, Client: &fleet.Client{Base: ts.URL}, Pending: pending}
	ctx := context.Background()
	if err := rep.Report(ctx, fleet.Run{Job: "web", Snapshot: "one"}); err == nil {
		t.Fatal("a report to a server that is down succeeded")
	}
	if fi, err := os.Stat(pending); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("pending file: %v %v", fi, err)
	}
	mu.Lock()
	status = http.StatusCreated
	mu.Unlock()
	if err := rep.Report(ctx, fleet.Run{Job: "web", Snapshot: "two"}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "one,two" {
		t.Fatalf("sent %v, want one,two", got)
	}
	if _, err := os.Stat(pending); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("pending file left: %v", err)
	}
	mu.Lock()
	status = http.StatusForbidden
	mu.Unlock()
	if err := rep.Report(ctx, fleet.Run{Job: "web", Snapshot: "three"}); !errors.Is(err, fleet.ErrRefused) {
		t.Fatalf("refused: %v", err)
	}
	if _, err := os.Stat(pending); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused report was kept: %v", err)
	}
}
