package server_test

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
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
