package s3

import (
	"context"
	"testing"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/storagetest"
	"github.com/floe-backup/floe/internal/testutil/s3server"
)

func newTestBackend(t *testing.T, srv *s3server.Server, prefix string) *Backend {
	t.Helper()
	cfg := Config{Endpoint: srv.Endpoint, Bucket: srv.NewBucket(t), Prefix: prefix, Creds: srv.Creds(), Lookup: LookupPath}
	b, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	srv := s3server.Start(t)
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		return newTestBackend(t, srv, "")
	})
}

func TestConformancePrefix(t *testing.T) {
	srv := s3server.Start(t)
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		return newTestBackend(t, srv, "some/prefix")
	})
}
