package server_test

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/remote"
)

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	m := server.NewMetrics()
	s := startServer(t, newMemRepos("fleet"), server.Options{Metrics: m})
	m.SetLedger(s.ledger)
	b := s.client(t, "fleet", s.token(t, "fleet", "backup"))
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(rec.Body)
		return string(body)
	}
	// the first request opens the repository, whose size is then
	// counted in the background
	if err := b.List(ctx, storage.Snapshot, func(storage.FileInfo) error { return nil }); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(scrape(), `floe_server_repository_bytes{repo="fleet"} 0`); {
		if time.Now().After(deadline) {
			t.Fatalf("the repository's size is not counted:\n%s", scrape())
		}
		time.Sleep(10 * time.Millisecond)
	}
	data := []byte("counted")
	h := storage.Handle{Type: storage.Index, Name: nameOf(data)}
	if err := b.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Load(ctx, h, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(ctx, h); !errors.Is(err, remote.ErrForbidden) {
		t.Fatal(err)
	}
	body := scrape()
	for _, want := range []string{
		`floe_server_requests_total{op="save",role="backup",status="201"} 1`,
		`floe_server_requests_total{op="load",role="backup",status="200"} 1`,
		`floe_server_requests_total{op="remove",role="backup",status="403"} 1`,
		`floe_server_last_write_timestamp_seconds{host="testhost",repo="fleet"}`,
		`floe_server_repository_bytes{repo="fleet"} 4096`,
		`floe_server_refused_total{code="forbidden"} 1`,
		`floe_server_stored_bytes_total{repo="fleet"} 7`,
		`floe_server_loaded_bytes_total{repo="fleet"} 7`,
		`floe_server_uploads_in_progress 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// A restarted server reports each host's last write from the upload
// journal as soon as it serves the repository, not only after the host's
// next write: an alert on the metric's age must not wait for a host that
// has stopped writing.
func TestMetricsLastWriteSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	repos, err := server.NewRootDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repos.Create(ctx, "fleet"); err != nil {
		t.Fatal(err)
	}
	first := startServer(t, repos, server.Options{Metrics: server.NewMetrics()})
	b := first.client(t, "fleet", first.token(t, "fleet", "backup"))
	data := []byte("written before the restart")
	if err := b.Save(ctx, storage.Handle{Type: storage.Index, Name: nameOf(data)}, data); err != nil {
		t.Fatal(err)
	}
	written := time.Now().Unix()
	first.srv.Close()

	fresh, err := server.NewRootDir(root)
	if err != nil {
		t.Fatal(err)
	}
	m := server.NewMetrics()
	second := startServer(t, fresh, server.Options{Metrics: m, Tokens: first.tokens})
	r := second.client(t, "fleet", second.token(t, "fleet", "restore"))
	if err := r.List(ctx, storage.Index, func(storage.FileInfo) error { return nil }); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		var got int64
		for _, line := range strings.Split(rec.Body.String(), "\n") {
			if v, ok := strings.CutPrefix(line, `floe_server_last_write_timestamp_seconds{host="testhost",repo="fleet"} `); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					t.Fatalf("last write %q: %v", v, err)
				}
				got = int64(f)
			}
		}
		if got != 0 {
			if got > written || got < written-60 {
				t.Fatalf("last write after the restart is %d, the write was at %d", got, written)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the restarted server does not report the host's last write")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
