package server_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/storage/remote"
	"github.com/floe-backup/floe/internal/storage/s3"
	"github.com/floe-backup/floe/internal/storage/s3/s3test"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

// markedMem is a repository in memory that keeps markers, as a bucket
// prefix does (storage/s3).
type markedMem struct {
	*mem.Backend
	mu      sync.Mutex
	markers map[string]bool
}

func (m *markedMem) PutMarker(_ context.Context, rel string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.markers[rel] = true
	return nil
}

func (m *markedMem) ListMarkers(_ context.Context, prefix string, fn func(string) error) error {
	m.mu.Lock()
	var keys []string
	for k := range m.markers {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	m.mu.Unlock()
	sort.Strings(keys)
	for _, k := range keys {
		if err := fn(k); err != nil {
			return err
		}
	}
	return nil
}

// memBucket is a bucket of such repositories: what an opener of
// `floe serve --storage` serves.
type memBucket struct {
	mu    sync.Mutex
	repos map[string]*markedMem
}

func (b *memBucket) open(ctx context.Context, name string, create bool) (storage.Backend, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.repos[name]
	if !ok {
		r = &markedMem{Backend: mem.New(), markers: map[string]bool{}}
		b.repos[name] = r
	}
	_, err := r.Stat(ctx, storage.Handle{Type: storage.Config})
	switch {
	case create && err == nil:
		return nil, fmt.Errorf("config exists: %w", storage.ErrExist)
	case !create && err != nil:
		return nil, fmt.Errorf("no config: %w", storage.ErrNotExist)
	}
	return r, nil
}

// Two servers in front of one bucket: what one records of an upload the
// other reads (the uploader in a listing, a removal that refuses a
// replay); a repository whose init is under way on one opens on the
// other.
func TestPrefixReposShareRecords(t *testing.T) {
	ctx := context.Background()
	bucket := &memBucket{repos: map[string]*markedMem{}}
	a := startServer(t, server.NewPrefixRepos("mem:", bucket.open), server.Options{})
	b := startServer(t, server.NewPrefixRepos("mem:", bucket.open), server.Options{Tokens: a.tokens})
	admin := a.token(t, "fleet", "admin")
	web1, _, err := a.tokens.Add("fleet", "web1", server.RoleBackup)
	if err != nil {
		t.Fatal(err)
	}
	adminA, err := remote.Create(ctx, a.url+"/fleet", remote.Options{Token: admin, Fingerprint: a.fp, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	keyObj := []byte("a key object, saved before the config")
	if err := adminA.Save(ctx, storage.Handle{Type: storage.Key, Name: nameOf(keyObj)}, keyObj); err != nil {
		t.Fatal(err)
	}
	// B never saw the create: the keys make the repository open there
	adminB := b.client(t, "fleet", admin)
	cfg := []byte("config")
	if err := adminB.Save(ctx, storage.Handle{Type: storage.Config}, cfg); err != nil {
		t.Fatalf("the config through the other server: %v", err)
	}
	hostA := a.client(t, "fleet", web1)
	rec := []byte("a snapshot record web1 keeps a copy of")
	h := storage.Handle{Type: storage.Snapshot, Name: nameOf(rec)}
	if err := hostA.Save(ctx, h, rec); err != nil {
		t.Fatal(err)
	}
	origins, err := adminB.Origins(ctx, storage.Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	if o := origins[h.Name]; o.Host != "web1" || o.Received.IsZero() {
		t.Errorf("the other server's record of the upload: %+v", o)
	}
	if err := adminB.Remove(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := hostA.Save(ctx, h, rec); !errors.Is(err, remote.ErrForbidden) || !strings.Contains(err.Error(), "was removed on") {
		t.Errorf("a replay through the server that did not see the removal: %v", err)
	}
	if origins, err = adminA.Origins(ctx, storage.Snapshot); err != nil || len(origins) != 0 {
		t.Errorf("records of a removed snapshot: %v, %v", origins, err)
	}
	if _, err := adminA.Stat(ctx, h); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("the replay was stored: %v", err)
	}
	// a repository nobody created is not there
	other := a.token(t, "other", "admin")
	if _, err := b.client(t, "other", other).Stat(ctx, storage.Handle{Type: storage.Config}); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("a repository that does not exist: %v", err)
	}
}

// TestConformanceS3Prefixes runs the storage suite over HTTP against a
// server whose repositories are prefixes of a bucket (floe serve
// --storage), on a real S3 server.
func TestConformanceS3Prefixes(t *testing.T) {
	srv := s3test.Start(t)
	base := s3.Config{Endpoint: srv.Endpoint, Bucket: srv.NewBucket(t), Prefix: "floe", Creds: srv.Creds(), Lookup: s3.LookupPath}
	open := func(ctx context.Context, name string, create bool) (storage.Backend, error) {
		cfg := base
		cfg.Prefix += "/" + name
		if create {
			return s3.Create(ctx, cfg)
		}
		return s3.Open(ctx, cfg)
	}
	s := startServer(t, server.NewPrefixRepos(base.URL(), open), server.Options{AllowAnyName: true})
	var n atomic.Int64
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		name := fmt.Sprint("r", n.Add(1))
		b, err := remote.Create(context.Background(), s.url+"/"+name, remote.Options{Token: s.token(t, name, "admin"), Fingerprint: s.fp, Retries: 1})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}
