package server_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/remote"
)

// TestMain lets the test binary play `floe serve --stdio` for the ssh
// tests: the "ssh command" is the test binary itself, which serves its
// standard input and output.
func TestMain(m *testing.M) {
	if root := os.Getenv("FLOE_TEST_STDIO_ROOT"); root != "" {
		role, err := server.ParseRoles(os.Getenv("FLOE_TEST_STDIO_ROLE"))
		if err == nil {
			err = server.RunStdio(context.Background(), server.StdioConfig{Root: root, Role: role, Host: "tester", In: os.Stdin, Out: os.Stdout})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "stdio server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func object(t *testing.T, n int) (storage.Handle, []byte) {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	return storage.Handle{Type: storage.Pack, Name: hash.Sum(data).String()}, data
}

// --connections N: the client opens N TCP connections and spreads its
// requests over them; the server counts what it accepts.
func TestConnectionsPool(t *testing.T) {
	repos, err := server.NewRootDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	tokens, err := server.OpenTokenStore(state)
	if err != nil {
		t.Fatal(err)
	}
	h, err := server.New(server.Options{Repos: repos, Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	srv, accepted, fp, tok := countingServer(t, h, tokens)
	ctx := context.Background()
	for _, n := range []int{1, 4} {
		accepted.Store(0)
		b, err := remote.New(srv.URL+"/fleet", remote.Options{Token: tok, Fingerprint: fp, Retries: 1, Connections: n})
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			if _, err := remote.Create(ctx, srv.URL+"/fleet", remote.Options{Token: tok, Fingerprint: fp, Retries: 1, Connections: 1}); err != nil {
				t.Fatal(err)
			}
			accepted.Store(0)
		}
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				hd, data := object(t, 1000+i)
				if err := b.Save(ctx, hd, data); err != nil {
					t.Error(err)
				}
				got, err := b.Load(ctx, hd, 0, 0)
				if err != nil || string(got) != string(data) {
					t.Errorf("load: %v", err)
				}
			}()
		}
		wg.Wait()
		b.Close()
		if got := accepted.Load(); got != int64(n) {
			t.Errorf("Connections %d: the server accepted %d connections", n, got)
		}
		if b.ConnectionCount() != n {
			t.Errorf("ConnectionCount %d, want %d", b.ConnectionCount(), n)
		}
		// a backup uploads a pack per connection at once
		if p, ok := storage.As[storage.ParallelSaver](b); !ok {
			t.Error("the floe server's client is no storage.ParallelSaver")
		} else if p.ParallelSaves() != n {
			t.Errorf("Connections %d: %d saves at once, want %d", n, p.ParallelSaves(), n)
		}
	}
	// but no more than the server's default uploads per token
	if b, err := remote.New(srv.URL+"/fleet", remote.Options{Token: tok, Connections: 16}); err != nil || b.ParallelSaves() != server.DefaultMaxUploads {
		t.Errorf("16 connections: %v, want %d saves at once", err, server.DefaultMaxUploads)
	}
	if _, err := remote.New(srv.URL+"/fleet", remote.Options{Token: tok, Connections: remote.MaxConnections + 1}); err == nil {
		t.Error("too many connections accepted")
	}
}

// stdioBackend is a client of `floe serve --stdio` run by the "ssh
// command" (this test binary, see TestMain) with role.
func stdioBackend(t *testing.T, root, role string, conns int) *remote.Backend {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// env(1) sets the server's variables; the "ssh options" that follow
	// (-T -p ...) reach the test binary's TestMain, which ignores them
	sshCmd := []string{"env", "FLOE_TEST_STDIO_ROOT=" + root, "FLOE_TEST_STDIO_ROLE=" + role, self}
	b, err := remote.New("ssh://tester@localhost/ignored", remote.Options{SSHCommand: sshCmd, Retries: 1, RetryDelay: 1, Connections: conns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// The protocol over standard input and output: an admin creates, saves,
// lists and removes; a backup credential saves but may not remove or read
// packs (the same roles as tokens); uploads are name-checked.
func TestStdio(t *testing.T) {
	if _, err := os.Stat("/usr/bin/env"); err != nil {
		t.Skip("no /usr/bin/env")
	}
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "web1")
	admin := stdioBackend(t, root, "admin", 2)
	if _, err := admin.Stat(ctx, storage.Handle{Type: storage.Config}); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("stat config of a missing repository: %v", err)
	}
	if _, err := remote.Create(ctx, "ssh://tester@localhost/ignored", remote.Options{SSHCommand: []string{"env", "FLOE_TEST_STDIO_ROOT=" + root, "FLOE_TEST_STDIO_ROLE=admin", mustExe(t)}, Retries: 1}); err != nil {
		t.Fatal(err)
	}
	if err := admin.Save(ctx, storage.Handle{Type: storage.Config}, []byte("config")); err != nil {
		t.Fatal(err)
	}
	hd, data := object(t, 5000)
	if err := admin.Save(ctx, hd, data); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "data", hd.Name[:2], hd.Name)); err != nil {
		t.Errorf("the object is not in --root: %v", err)
	}
	// a name that does not match the bytes
	bad := storage.Handle{Type: storage.Pack, Name: hash.Sum([]byte("x")).String()}
	if err := admin.Save(ctx, bad, data); !errors.Is(err, remote.ErrRejected) {
		t.Errorf("mismatched name: %v", err)
	}
	bk := stdioBackend(t, root, "backup", 1)
	h2, d2 := object(t, 3000)
	if err := bk.Save(ctx, h2, d2); err != nil {
		t.Fatalf("backup role saves: %v", err)
	}
	if err := bk.Remove(ctx, hd); !errors.Is(err, storage.ErrDenied) {
		t.Errorf("backup role removes: %v", err)
	}
	if _, err := bk.Load(ctx, hd, 0, 0); !errors.Is(err, remote.ErrForbidden) {
		t.Errorf("backup role loads a pack: %v", err)
	}
	n := 0
	if err := admin.List(ctx, storage.Pack, func(storage.FileInfo) error { n++; return nil }); err != nil || n != 2 {
		t.Errorf("list: %d, %v", n, err)
	}
	if err := admin.Remove(ctx, hd); err != nil {
		t.Errorf("admin removes: %v", err)
	}
	// a server that cannot start is a clear error, not retried forever
	broken, err := remote.New("ssh://x/y", remote.Options{SSHCommand: []string{"sh", "-c", "echo 'ssh: Permission denied (publickey).' >&2; exit 255"}, Retries: 6})
	if err != nil {
		t.Fatal(err)
	}
	_, err = broken.Stat(ctx, storage.Handle{Type: storage.Config})
	if err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("ssh refused: %v", err)
	}
}

func mustExe(t *testing.T) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

// Uploads of 1 MiB and more go over HTTP/1.1 connections of their own, at
// most one per --connections; everything else stays on HTTP/2. The bytes
// arrive whole and checked, and an upload the server refuses before
// reading its body gets its answer (not a connection error retried).
func TestPackUploadsOverHTTP1(t *testing.T) {
	repos, err := server.NewRootDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := server.OpenTokenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h, err := server.New(server.Options{Repos: repos, Tokens: tokens, MaxObjectSize: 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	protos := map[string]int{} // "PUT big/1" -> count
	srv, accepted, fp, tok := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := "small"
		if r.ContentLength >= 1<<20 {
			kind = "big"
		}
		mu.Lock()
		protos[fmt.Sprintf("%s %s/%d", r.Method, kind, r.ProtoMajor)]++
		mu.Unlock()
		h.ServeHTTP(w, r)
	}), tokens)
	ctx := context.Background()
	opts := remote.Options{Token: tok, Fingerprint: fp, Retries: 2, RetryDelay: 1, Connections: 2}
	b, err := remote.Create(ctx, srv.URL+"/fleet", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hd, data := object(t, 1<<20+i*100_000)
			if err := b.Save(ctx, hd, data); err != nil {
				t.Error(err)
				return
			}
			got, err := b.Load(ctx, hd, 0, 0)
			if err != nil || string(got) != string(data) {
				t.Errorf("load: %v", err)
			}
			small, sdata := object(t, 1000+i)
			if err := b.Save(ctx, small, sdata); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// the server's name check holds over HTTP/1.1 too
	_, data := object(t, 2<<20)
	wrong := storage.Handle{Type: storage.Pack, Name: hash.Sum([]byte("other")).String()}
	if err := b.Save(ctx, wrong, data); !errors.Is(err, remote.ErrRejected) {
		t.Errorf("mismatched name over HTTP/1.1: %v, want ErrRejected", err)
	}
	// refused before the body is read: a clear error, at once
	hd, big := object(t, 4<<20)
	start := time.Now()
	if err := b.Save(ctx, hd, big); !errors.Is(err, remote.ErrTooLarge) {
		t.Errorf("oversized upload over HTTP/1.1: %v, want ErrTooLarge", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("oversized upload refused only after %v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if protos["PUT big/1"] != 8 || protos["PUT big/2"] != 0 || protos["PUT small/2"] < 6 || protos["PUT small/1"] != 0 || protos["GET small/2"] != 6 {
		t.Errorf("requests by size and protocol: %v", protos)
	}
	// two HTTP/2 connections, and at most one HTTP/1.1 connection per
	// upload at once (six), reused by the uploads that followed
	if got := accepted.Load(); got < 3 || got > 8 {
		t.Errorf("the server accepted %d connections, want 3 to 8", got)
	}
	b.Close()
	if n := countFiles(filepath.Join(repos.UploadsDir("fleet"), "..", "data")); n != 12 {
		t.Errorf("%d packs stored, want 12", n)
	}
}

func countFiles(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// countingServer serves h over TLS with HTTP/2, counting the connections
// it accepts, and returns it with its fingerprint and an admin token of
// repository fleet.
func countingServer(t *testing.T, h http.Handler, tokens *server.TokenStore) (*httptest.Server, *atomic.Int64, string, string) {
	t.Helper()
	accepted := new(atomic.Int64)
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateNew {
			accepted.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tok, _, err := tokens.Add("fleet", "web1", server.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	return srv, accepted, remote.Fingerprint(srv.Certificate().Raw), tok
}
