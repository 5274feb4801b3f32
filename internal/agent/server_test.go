package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
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
