package server_test

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/storage/remote"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

// memRepos serves in-memory repositories and counts every storage call,
// so that tests can show a refused request never touched storage.
type memRepos struct {
	calls atomic.Int64
	repos map[string]*countingBackend
}

type countingBackend struct {
	*mem.Backend
	calls *atomic.Int64
}

func (c *countingBackend) Save(ctx context.Context, h storage.Handle, d []byte) error {
	c.calls.Add(1)
	return c.Backend.Save(ctx, h, d)
}
func (c *countingBackend) Load(ctx context.Context, h storage.Handle, o, n int64) ([]byte, error) {
	c.calls.Add(1)
	return c.Backend.Load(ctx, h, o, n)
}
func (c *countingBackend) Stat(ctx context.Context, h storage.Handle) (storage.FileInfo, error) {
	c.calls.Add(1)
	return c.Backend.Stat(ctx, h)
}
func (c *countingBackend) List(ctx context.Context, t storage.FileType, fn func(storage.FileInfo) error) error {
	c.calls.Add(1)
	return c.Backend.List(ctx, t, fn)
}
func (c *countingBackend) Remove(ctx context.Context, h storage.Handle) error {
	c.calls.Add(1)
	return c.Backend.Remove(ctx, h)
}

func (m *memRepos) Open(ctx context.Context, name string) (storage.Backend, error) {
	m.calls.Add(1)
	if be, ok := m.repos[name]; ok {
		return be, nil
	}
	return nil, storage.ErrNotExist
}

func (m *memRepos) Create(ctx context.Context, name string) (storage.Backend, error) {
	return nil, storage.ErrExist
}

// testServer is an in-process server over real TLS and HTTP/2.
type testServer struct {
	url    string
	fp     string
	tokens *server.TokenStore
	h      *server.Server
	ledger *server.Ledger
	state  string
	srv    *httptest.Server
}

func startServer(t *testing.T, repos server.Repositories, opts server.Options) *testServer {
	t.Helper()
	state := t.TempDir()
	tokens := opts.Tokens // nil: a token store of its own
	if tokens == nil {
		var err error
		if tokens, err = server.OpenTokenStore(state); err != nil {
			t.Fatal(err)
		}
	}
	audit, err := server.OpenAuditLog(filepath.Join(state, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	ledger, err := server.OpenLedger(state)
	if err != nil {
		t.Fatal(err)
	}
	opts.Repos, opts.Tokens, opts.Audit, opts.Ledger = repos, tokens, audit, ledger
	h, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(func() { srv.Close(); audit.Close() })
	return &testServer{h: h, ledger: ledger, url: srv.URL, fp: remote.Fingerprint(srv.Certificate().Raw), tokens: tokens, state: state, srv: srv}
}

func (s *testServer) token(t *testing.T, repo, roles string) string {
	t.Helper()
	r, err := server.ParseRoles(roles)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.tokens.Add(repo, "testhost", r)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (s *testServer) client(t *testing.T, repo, token string) *remote.Backend {
	t.Helper()
	b, err := remote.New(s.url+"/"+repo, remote.Options{Token: token, Fingerprint: s.fp, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestConformance runs the storage suite over HTTP against the local
// backend under a root directory, with an admin token (the suite stores
// arbitrary bytes under arbitrary names, so the name check is off).
func TestConformance(t *testing.T) {
	root := t.TempDir()
	repos, err := server.NewRootDir(root)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, repos, server.Options{AllowAnyName: true})
	var n atomic.Int64
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		name := "r" + string(rune('a'+n.Add(1)%26)) + filepath.Base(t.Name())
		name = sanitize(name)
		tok := s.token(t, name, "admin")
		b, err := remote.Create(context.Background(), s.url+"/"+name, remote.Options{Token: tok, Fingerprint: s.fp, Retries: 1})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
}

func sanitize(s string) string {
	out := []byte{}
	for i := 0; i < len(s) && len(out) < 60; i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			out = append(out, c)
		}
	}
	return string(out)
}
