package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
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
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

// TestMain lets the test binary play `floe serve --stdio` for the ssh
// tests: the "ssh command" is the test binary itself, which serves its
// standard input and output.
func TestMain(m *testing.M) {
	if root := os.Getenv("FLOE_TEST_STDIO_ROOT"); root != "" {
		role, err := server.ParseRoles(os.Getenv("FLOE_TEST_STDIO_ROLE"))
		if err == nil {
			err = server.RunStdio(context.Background(), server.StdioConfig{Root: root, Role: role, Host: "tester", In: os.Stdin, Out: os.Stdout,
				AllowAnyName: os.Getenv("FLOE_TEST_STDIO_ANY_NAME") == "1"})
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

// newHandler is a server over a fresh root and token store, with opts'
// other settings.
func newHandler(t *testing.T, opts server.Options) (http.Handler, *server.TokenStore, *server.RootDir) {
	t.Helper()
	repos, err := server.NewRootDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := server.OpenTokenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts.Repos, opts.Tokens = repos, tokens
	h, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return h, tokens, repos
}

// --connections N: the client opens N TCP connections and spreads its
// requests over them; the server counts what it accepts.
func TestConnectionsPool(t *testing.T) {
	h, tokens, _ := newHandler(t, server.Options{})
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

// TestStdioConformance runs the storage suite against the remote client
// of an ssh:// location speaking to RunStdio: the "ssh" command is this
// test binary (TestMain serves --stdio), so the protocol runs over the
// pipes of a real process as it does under sshd, each backend on a fresh
// root, with an admin role and, as in TestConformance, the name check
// off (the suite stores arbitrary bytes under arbitrary names).
func TestStdioConformance(t *testing.T) {
	if _, err := os.Stat("/usr/bin/env"); err != nil {
		t.Skip("no /usr/bin/env")
	}
	self := mustExe(t)
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		root := filepath.Join(t.TempDir(), "repo")
		sshCmd := []string{"env", "FLOE_TEST_STDIO_ROOT=" + root, "FLOE_TEST_STDIO_ROLE=admin", "FLOE_TEST_STDIO_ANY_NAME=1", self}
		// two connections: requests spread over two server processes
		// of the same root, as --connections 2 does
		b, err := remote.Create(context.Background(), "ssh://tester@localhost/ignored",
			remote.Options{SSHCommand: sshCmd, Retries: 1, RetryDelay: 1, Connections: 2})
		if err != nil {
			t.Fatal(err)
		}
		return b
	})
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
	h, tokens, repos := newHandler(t, server.Options{MaxObjectSize: 3 << 20})
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

// Streamed ranges of 1 MiB and more (a restore's packs) are read over
// HTTP/1.1 connections of their own, shorter ones and whole-object loads
// over HTTP/2; the bytes are the same, and the roles hold over both (a
// backup token may not read packs).
func TestStreamedRangesOverHTTP1(t *testing.T) {
	h, tokens, _ := newHandler(t, server.Options{})
	var mu sync.Mutex
	protos := map[string]int{} // "GET 2097152/1" -> count
	srv, _, fp, tok := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			mu.Lock()
			protos[fmt.Sprintf("GET %s/%d", r.URL.Query().Get("length"), r.ProtoMajor)]++
			mu.Unlock()
		}
		h.ServeHTTP(w, r)
	}), tokens)
	ctx := context.Background()
	opts := remote.Options{Token: tok, Fingerprint: fp, Retries: 1, RetryDelay: 1}
	b, err := remote.Create(ctx, srv.URL+"/fleet", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	hd, data := object(t, 3<<20)
	if err := b.Save(ctx, hd, data); err != nil {
		t.Fatal(err)
	}
	read := func(b *remote.Backend, off, n int64) ([]byte, error) {
		rc, err := b.OpenStream(ctx, hd, off, n)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(rc)
	}
	for _, r := range []struct{ off, n int64 }{{5, 2 << 20}, {100, 1 << 20}, {7, 100_000}, {1 << 20, 2 << 20}} {
		got, err := read(b, r.off, r.n)
		if err != nil || !bytes.Equal(got, data[r.off:r.off+r.n]) {
			t.Errorf("range %d+%d: %d bytes, %v", r.off, r.n, len(got), err)
		}
	}
	mu.Lock()
	if protos["GET 2097152/1"] != 2 || protos["GET 1048576/1"] != 1 || protos["GET 100000/2"] != 1 || protos["GET 2097152/2"] != 0 {
		t.Errorf("streamed ranges by length and protocol: %v", protos)
	}
	mu.Unlock()
	// a range beyond the object's end is refused over HTTP/1.1 too
	if _, err := read(b, 2<<20, 2<<20); err == nil {
		t.Error("a range beyond the end was read")
	}
	btok, _, err := tokens.Add("fleet", "web2", server.RoleBackup)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := remote.New(srv.URL+"/fleet", remote.Options{Token: btok, Fingerprint: fp, Retries: 1, RetryDelay: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer bb.Close()
	if _, err := read(bb, 0, 2<<20); !errors.Is(err, remote.ErrForbidden) {
		t.Errorf("a backup token streamed a pack over HTTP/1.1: %v, want ErrForbidden", err)
	}
}

// Open reads the config with one GET (no HEAD) and hands those bytes to
// the first load of the config, repo.Open's: one request, not three;
// the next load asks the server again.
func TestOpenReadsConfigOnce(t *testing.T) {
	h, tokens, _ := newHandler(t, server.Options{})
	var mu sync.Mutex
	reqs := map[string]int{}
	srv, _, fp, tok := countingServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs[r.Method+" "+r.URL.Path]++
		mu.Unlock()
		h.ServeHTTP(w, r)
	}), tokens)
	ctx := context.Background()
	opts := remote.Options{Token: tok, Fingerprint: fp, Retries: 1, RetryDelay: 1, Connections: 1}
	c, err := remote.Create(ctx, srv.URL+"/fleet", opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Open(ctx, srv.URL+"/fleet", opts); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Open of a repository without a config: %v, want ErrNotExist", err)
	}
	cfg := []byte("the config's bytes")
	if err := c.Save(ctx, storage.Handle{Type: storage.Config}, cfg); err != nil {
		t.Fatal(err)
	}
	c.Close()
	mu.Lock()
	clear(reqs)
	mu.Unlock()
	b, err := remote.Open(ctx, srv.URL+"/fleet", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := range 2 {
		got, err := storage.LoadAll(ctx, b, storage.Handle{Type: storage.Config}, 1<<10)
		if err != nil || !bytes.Equal(got, cfg) {
			t.Fatalf("load %d of the config: %q, %v", i, got, err)
		}
		mu.Lock()
		if n := reqs["GET /fleet/config"]; n != i+1 || reqs["HEAD /fleet/config"] != 0 {
			t.Errorf("after Open and %d loads of the config: %v", i+1, reqs)
		}
		mu.Unlock()
	}
	// the limit of the caller holds for the kept bytes too
	b2, err := remote.Open(ctx, srv.URL+"/fleet", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if _, err := storage.LoadAll(ctx, b2, storage.Handle{Type: storage.Config}, 4); !errors.Is(err, storage.ErrTooLarge) {
		t.Errorf("a config above the caller's limit: %v, want ErrTooLarge", err)
	}
}
