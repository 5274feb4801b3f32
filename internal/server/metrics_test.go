package server_test

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/remote"
)

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	m := server.NewMetrics()
	s := startServer(t, newMemRepos("fleet"), server.Options{Metrics: m})
	b := s.client(t, "fleet", s.token(t, "fleet", "backup"))
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
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`floe_server_requests_total{op="save",status="201"} 1`,
		`floe_server_requests_total{op="load",status="200"} 1`,
		`floe_server_requests_total{op="remove",status="403"} 1`,
		`floe_server_refused_total{code="forbidden"} 1`,
		`floe_server_stored_bytes_total{repo="fleet"} 7`,
		`floe_server_loaded_bytes_total{repo="fleet"} 7`,
		`floe_server_uploads_in_progress 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
