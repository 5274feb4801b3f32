package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/remote"
)

// auditLines returns the audit log's records.
func (s *testServer) auditLines(t *testing.T) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(s.state, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	var recs []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("audit line %q: %v", l, err)
		}
		recs = append(recs, m)
	}
	return recs
}

// rawDo sends one request over HTTP/1.1 as written (no client fixing
// up the path or headers) and returns the status.
func rawDo(t *testing.T, addr, request string) int {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%q: %v", request, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Every method and odd path, with every kind of credential, is refused
// with its status before storage is touched, and each refusal is in the
// audit log without the token's secret.
func TestOddRequests(t *testing.T) {
	repos := newMemRepos("fleet", "other")
	s := startServer(t, repos, server.Options{})
	obj := []byte("object")
	name := nameOf(obj)
	for _, ft := range storage.AllTypes {
		repos.repos["fleet"].Set(storage.Handle{Type: ft, Name: name}, obj)
	}
	repos.repos["fleet"].Set(storage.Handle{Type: storage.Config}, obj)
	backup := s.token(t, "fleet", "backup")
	restore := s.token(t, "fleet", "restore")
	admin := s.token(t, "fleet", "admin")
	viewer := s.token(t, "fleet", "viewer")
	otherRepo := s.token(t, "other", "admin")
	revoked := s.token(t, "fleet", "admin")
	if err := s.tokens.Revoke(strings.Split(revoked, "_")[1]); err != nil {
		t.Fatal(err)
	}
	addr := s.srv.Listener.Addr().String()
	upper := strings.ToUpper(name)
	checks := []struct {
		method, path, auth string
		want               int
	}{
		// methods the protocol does not have
		{"OPTIONS", "/fleet/config", "Bearer " + admin, 405},
		{"OPTIONS", "*", "Bearer " + admin, 200}, // net/http answers it: no Allow, nothing served
		{"POST", "/fleet/data/" + name, "Bearer " + admin, 405},
		{"PATCH", "/fleet/data/" + name, "Bearer " + admin, 405},
		{"TRACE", "/fleet/data/" + name, "Bearer " + admin, 405},
		{"CONNECT", "/fleet/data/" + name, "Bearer " + admin, 405},
		{"HEAD", "/fleet/data/", "Bearer " + admin, 405},
		{"PUT", "/fleet/data/", "Bearer " + admin, 405},
		{"DELETE", "/fleet/data/", "Bearer " + admin, 405},
		{"GET", "/fleet/", "Bearer " + admin, 405},
		{"DELETE", "/fleet/", "Bearer " + admin, 405},
		{"POST", "/fleet/", "Bearer " + admin, 405},
		// paths that name nothing
		{"GET", "/fleet/%2e%2e/other/config", "Bearer " + admin, 400},
		{"GET", "/fleet/data/%2e%2e", "Bearer " + admin, 400},
		{"GET", "/fleet/data/..", "Bearer " + admin, 400},
		{"GET", "/fleet/../other/config", "Bearer " + admin, 400},
		{"GET", "/fleet//config", "Bearer " + admin, 400},
		{"GET", "/fleet/data//" + name, "Bearer " + admin, 400},
		{"GET", "//fleet/config", "Bearer " + admin, 400},
		{"GET", "/fleet/data/" + upper, "Bearer " + admin, 400},
		{"GET", "/fleet/DATA/" + name, "Bearer " + admin, 400},
		{"GET", "/fleet/data/" + name + "0", "Bearer " + admin, 400},
		{"GET", "/fleet/data/" + name[:63], "Bearer " + admin, 400},
		{"GET", "/fleet/data/" + strings.Repeat("a", 20000), "Bearer " + admin, 400},
		{"GET", "/" + strings.Repeat("f", 65) + "/config", "Bearer " + admin, 400},
		{"GET", "/fleet/data/" + name[:62] + "%00", "Bearer " + admin, 400},
		{"GET", "/fleet/data/" + name[:62] + "%0a", "Bearer " + admin, 400},
		{"GET", "/fleet/locks/" + name, "Bearer " + admin, 400},
		{"GET", "/fleet/config/" + name, "Bearer " + admin, 400},
		{"GET", "/fleet/config/", "Bearer " + admin, 400},
		{"GET", "/fleet/data/" + name + "/x", "Bearer " + admin, 400},
		{"GET", "/.floe-server/tokens.json", "Bearer " + admin, 400},
		{"GET", "/fleet/.floe-uploads/data.jsonl", "Bearer " + admin, 400},
		{"GET", "/fleet/data/" + name + "?offset=-1", "Bearer " + admin, 400},
		{"GET", "/fleet/data/" + name + "?length=x", "Bearer " + admin, 400},
		// credentials
		{"GET", "/fleet/config", "", 401},
		{"GET", "/fleet/config", "Bearer", 401},
		{"GET", "/fleet/config", "Bearer ", 401},
		{"GET", "/fleet/config", "bearer " + admin, 401},
		{"GET", "/fleet/config", "Basic " + admin, 401},
		{"GET", "/fleet/config", "Bearer  " + admin, 401},
		{"GET", "/fleet/config", "Bearer " + admin + "x", 401},
		{"GET", "/fleet/config", "Bearer " + admin[:len(admin)-1], 401},
		{"GET", "/fleet/config", "Bearer floe__", 401},
		{"GET", "/fleet/config", "Bearer " + revoked, 401},
		{"GET", "/fleet/config", "Bearer " + otherRepo, 403},
		{"PUT", "/fleet/data/" + name, "Bearer " + otherRepo, 403},
		{"GET", "/fleet/config", "Bearer " + viewer, 403},
		{"GET", "/fleet/data/", "Bearer " + viewer, 403},
		// roles
		{"GET", "/fleet/data/" + name, "Bearer " + backup, 403},
		{"GET", "/fleet/snapshots/" + name, "Bearer " + backup, 403},
		{"GET", "/fleet/snapshots/?uploads=1", "Bearer " + backup, 403},
		{"DELETE", "/fleet/data/" + name, "Bearer " + backup, 403},
		{"DELETE", "/fleet/snapshots/" + name, "Bearer " + backup, 403},
		{"PUT", "/fleet/config", "Bearer " + backup, 403},
		{"PUT", "/fleet/keys/" + name, "Bearer " + backup, 403},
		{"PUT", "/fleet/gc/" + name, "Bearer " + backup, 403},
		{"PUT", "/fleet/", "Bearer " + backup, 403},
		{"PUT", "/fleet/data/" + name, "Bearer " + restore, 403},
		{"DELETE", "/fleet/data/" + name, "Bearer " + restore, 403},
		{"PUT", "/fleet/", "Bearer " + restore, 403},
	}
	before := memState(t, repos.repos["fleet"])
	audit0 := len(s.auditLines(t))
	for _, c := range checks {
		calls := repos.calls.Load()
		req := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: floe\r\n", c.method, c.path)
		if c.auth != "" {
			req += "Authorization: " + c.auth + "\r\n"
		}
		if c.method == "PUT" || c.method == "POST" || c.method == "PATCH" {
			req += fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(obj), obj)
		} else {
			req += "\r\n"
		}
		if got := rawDo(t, addr, req); got != c.want {
			t.Errorf("%s %.80s (%.20s): %d, want %d", c.method, c.path, c.auth, got, c.want)
		}
		if repos.calls.Load() != calls {
			t.Errorf("%s %.80s: refused, but storage was touched", c.method, c.path)
		}
	}
	if after := memState(t, repos.repos["fleet"]); after != before {
		t.Errorf("refused requests changed the repository")
	}
	lines := s.auditLines(t)[audit0:]
	// OPTIONS * never reaches the handler (net/http answers it), every
	// other request is a refusal with its line
	if want := len(checks) - 1; len(lines) != want {
		t.Errorf("%d audit lines for %d refusals", len(lines), want)
	}
	raw, _ := os.ReadFile(filepath.Join(s.state, "audit.log"))
	for _, tok := range []string{backup, restore, admin, viewer, otherRepo, revoked} {
		secret := tok[len("floe_")+16+1:] // base64url: may hold "_" itself
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the audit log holds a token's secret")
		}
	}
	for _, l := range lines {
		if l["result"] != "refused" {
			t.Errorf("audit line of a refusal: %v", l)
		}
		if o, _ := l["object"].(string); len(o) > 300 {
			t.Errorf("an audit line holds a path of %d bytes", len(o))
		}
	}
}

// memState lists every object of a repository with its bytes, without
// counting as a storage call.
func memState(t *testing.T, b *countingBackend) string {
	t.Helper()
	var out strings.Builder
	ctx := context.Background()
	if d, err := b.Backend.Load(ctx, storage.Handle{Type: storage.Config}, 0, 0); err == nil {
		fmt.Fprintf(&out, "config %x\n", d)
	}
	for _, ft := range storage.AllTypes {
		err := b.Backend.List(ctx, ft, func(fi storage.FileInfo) error {
			d, err := b.Backend.Load(ctx, storage.Handle{Type: ft, Name: fi.Name}, 0, 0)
			fmt.Fprintf(&out, "%s/%s %x %v\n", ft, fi.Name, d, err)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return out.String()
}

// Bodies that do not match their Content-Length: chunked (no length) is
// refused, a body cut short stores nothing and charges no quota, bytes
// beyond the length are not part of the object, and the object is what
// its name says.
func TestUploadBodyLies(t *testing.T) {
	root, repos := fleetRoot(t)
	s := startServer(t, repos, server.Options{Verifier: server.NewFormatVerifier(), SpoolDir: t.TempDir()})
	tok, tk, err := s.tokens.AddWithQuota("fleet", "web1", server.RoleBackup, 2*server.ObjectBlock)
	if err != nil {
		t.Fatal(err)
	}
	addr := s.srv.Listener.Addr().String()
	put := func(name, headers string, body []byte) string {
		return fmt.Sprintf("PUT /fleet/snapshots/%s HTTP/1.1\r\nHost: floe\r\nAuthorization: Bearer %s\r\n%s\r\n%s", name, tok, headers, body)
	}
	rec := []byte("a sealed-looking snapshot record")
	name := nameOf(rec)
	// chunked: no Content-Length, 411
	chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(rec), rec)
	if got := rawDo(t, addr, put(name, "Transfer-Encoding: chunked\r\n", []byte(chunked))); got != http.StatusLengthRequired {
		t.Errorf("chunked upload: %d, want 411", got)
	}
	// a body cut short (the client closes its side): 400, nothing left
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, put(name, fmt.Sprintf("Content-Length: %d\r\n", 900), rec))
	conn.CloseWrite()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("body shorter than its Content-Length: %d, want 400", resp.StatusCode)
	}
	conn.Close()
	// bytes beyond the Content-Length are not the object's: a name of
	// the whole is refused, a name of the announced part stores that
	// part only
	long := append(bytes.Clone(rec), "and more"...)
	if got := rawDo(t, addr, put(nameOf(long), fmt.Sprintf("Content-Length: %d\r\n", len(rec)), long)); got != http.StatusUnprocessableEntity {
		t.Errorf("name of a body longer than its Content-Length: %d, want 422", got)
	}
	for _, n := range []string{name, nameOf(long)} {
		if _, err := os.Stat(filepath.Join(root, "fleet", "snapshots", n)); err == nil {
			t.Errorf("a refused upload stored %s", n)
		}
	}
	if u := s.ledger.TokenUsage()[tk.ID]; u != 0 {
		t.Errorf("refused uploads charged %d bytes of quota", u)
	}
	if got := rawDo(t, addr, put(name, fmt.Sprintf("Content-Length: %d\r\n", len(rec)), long)); got != http.StatusCreated {
		t.Errorf("a body with bytes beyond its Content-Length: %d", got)
	}
	if got, err := os.ReadFile(filepath.Join(root, "fleet", "snapshots", name)); err != nil || !bytes.Equal(got, rec) {
		t.Errorf("stored %q, %v", got, err)
	}
	if u := s.ledger.TokenUsage()[tk.ID]; u != server.ObjectBlock {
		t.Errorf("usage %d after one upload of %d bytes, want one block", u, len(rec))
	}
	// over the quota by one byte (two blocks where one is left): 507
	// before the body is read
	big := bytes.Repeat([]byte("q"), server.ObjectBlock+1)
	if got := rawDo(t, addr, put(nameOf(big), fmt.Sprintf("Content-Length: %d\r\n", len(big)), big)); got != http.StatusInsufficientStorage {
		t.Errorf("one byte over the quota: %d, want 507", got)
	}
	big = big[1:]
	if got := rawDo(t, addr, put(nameOf(big), fmt.Sprintf("Content-Length: %d\r\n", len(big)), big)); got != http.StatusCreated {
		t.Errorf("exactly up to the quota: %d, want 201", got)
	}
}

// A client that asks for an object and then reads nothing (a "slow
// read") is cut off after the idle timeout, over HTTP/1.1 and HTTP/2: it
// cannot hold a handler, its buffer and its connection for good.
func TestSlowReader(t *testing.T) {
	_, repos := fleetRoot(t)
	s := startServer(t, repos, server.Options{BodyIdleTimeout: 200 * time.Millisecond})
	tok := s.token(t, "fleet", "restore")
	be, err := repos.Open(context.Background(), "fleet")
	if err != nil {
		t.Fatal(err)
	}
	// more than the socket buffers and HTTP/2 windows hold
	data := bytes.Repeat([]byte("slow"), 8<<20)
	name := nameOf(data)
	if err := be.Save(context.Background(), storage.Handle{Type: storage.Pack, Name: name}, data); err != nil {
		t.Fatal(err)
	}
	path := "/fleet/data/" + name
	wait := 1500 * time.Millisecond // many times the idle timeout

	t.Run("http1", func(t *testing.T) {
		conn, err := tls.Dial("tcp", s.srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: floe\r\nAuthorization: Bearer %s\r\n\r\n", path, tok)
		time.Sleep(wait)
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := io.Copy(io.Discard, conn)
		if n >= int64(len(data)) {
			t.Errorf("a client that read nothing for %v got all %d bytes (%v): the server waited for it", wait, n, err)
		}
	})
	t.Run("http2", func(t *testing.T) {
		req, _ := http.NewRequest("GET", s.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := s.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("protocol %s", resp.Proto)
		}
		time.Sleep(wait)
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil && n == int64(len(data)) {
			t.Errorf("a client that read nothing for %v got all %d bytes: the server waited for it", wait, n)
		}
	})
}

// The write deadline of a load (idleWriter) does not outlive it: a
// kept-alive HTTP/1.1 connection serves the next request after the
// deadline would have passed.
func TestLoadDeadlineEndsWithLoad(t *testing.T) {
	_, repos := fleetRoot(t)
	s := startServer(t, repos, server.Options{BodyIdleTimeout: 200 * time.Millisecond})
	tok := s.token(t, "fleet", "restore")
	be, err := repos.Open(context.Background(), "fleet")
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("small pack")
	name := nameOf(data)
	if err := be.Save(context.Background(), storage.Handle{Type: storage.Pack, Name: name}, data); err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", s.srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	for i := range 2 {
		fmt.Fprintf(conn, "GET /fleet/data/%s HTTP/1.1\r\nHost: floe\r\nAuthorization: Bearer %s\r\n\r\n", name, tok)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d on the kept-alive connection: %v", i+1, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("request %d: %q %v", i+1, got, err)
		}
		time.Sleep(500 * time.Millisecond) // past the first load's write deadline
	}
}

// Slowloris: a connection that never finishes its TLS handshake, one
// that trickles its request headers and one left idle after a request
// are closed by the server's timeouts (set short here; 10 s and 2 min in
// floe serve).
func TestSlowloris(t *testing.T) {
	defer server.SetTimeouts(300*time.Millisecond, 300*time.Millisecond)()
	addr, _, tokens := runServer(t, t.TempDir())
	tok, _, err := tokens.Add("fleet", "h", server.RoleBackup)
	if err != nil {
		t.Fatal(err)
	}
	// closedWithin reports whether the server closes conn (a read ends)
	// within d while feed keeps writing to it
	closedWithin := func(conn net.Conn, d time.Duration, feed func() error) bool {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
					if feed != nil && feed() != nil {
						return
					}
				}
			}
		}()
		conn.SetReadDeadline(time.Now().Add(d))
		_, err := io.Copy(io.Discard, conn)
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
	limit := 10 * time.Second // many times the timeouts: no race with a slow machine
	t.Run("handshake", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if !closedWithin(conn, limit, nil) {
			t.Errorf("a connection without a TLS handshake is still open after %v", limit)
		}
	})
	t.Run("headers", func(t *testing.T) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /fleet/config HTTP/1.1\r\nHost: floe\r\n")
		if !closedWithin(conn, limit, func() error { _, err := io.WriteString(conn, "X-Slow: 1\r\n"); return err }) {
			t.Errorf("a request whose headers trickle is still read after %v", limit)
		}
	})
	t.Run("idle", func(t *testing.T) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "HEAD /fleet/config HTTP/1.1\r\nHost: floe\r\nAuthorization: Bearer %s\r\n\r\n", tok)
		br := bufio.NewReader(conn)
		conn.SetReadDeadline(time.Now().Add(limit))
		if _, err := http.ReadResponse(br, &http.Request{Method: "HEAD"}); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(limit))
		_, err = io.Copy(io.Discard, br)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("an idle kept-alive connection is still open after %v", limit)
		}
	})
}

// A credential has at most MaxLoadsPerToken loads and lists in progress
// (each holds a buffer or a directory's names until its client has taken
// the answer); more are answered 429, which clients retry.
func TestLoadCap(t *testing.T) {
	_, repos := fleetRoot(t)
	s := startServer(t, repos, server.Options{MaxLoadsPerToken: 1})
	tok := s.token(t, "fleet", "restore")
	be, err := repos.Open(context.Background(), "fleet")
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("held"), 8<<20) // more than buffers and windows hold
	name := nameOf(data)
	if err := be.Save(context.Background(), storage.Handle{Type: storage.Pack, Name: name}, data); err != nil {
		t.Fatal(err)
	}
	get := func() *http.Response {
		req, _ := http.NewRequest("GET", s.url+"/fleet/data/"+name, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := s.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	held := get() // its body is not read: the handler waits to write
	id := strings.Split(tok, "_")[1]
	for deadline := time.Now().Add(10 * time.Second); s.h.LoadsInProgress(id) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first load does not hold its slot")
		}
	}
	second := get()
	second.Body.Close()
	if second.StatusCode != http.StatusTooManyRequests || second.Header.Get("Retry-After") == "" {
		t.Errorf("second concurrent load: %d, want 429 with Retry-After", second.StatusCode)
	}
	// a list counts as a load (it holds a directory's names)
	req, _ := http.NewRequest("GET", s.url+"/fleet/data/", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	list, err := s.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	list.Body.Close()
	if list.StatusCode != http.StatusTooManyRequests {
		t.Errorf("a list beside a load: %d, want 429", list.StatusCode)
	}
	n, err := io.Copy(io.Discard, held.Body)
	held.Body.Close()
	if err != nil || n != int64(len(data)) {
		t.Fatalf("the first load: %d bytes, %v", n, err)
	}
	for deadline := time.Now().Add(10 * time.Second); s.h.LoadsInProgress(id) != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the slot is not given back")
		}
	}
	third := get()
	io.Copy(io.Discard, third.Body)
	third.Body.Close()
	if third.StatusCode != http.StatusOK {
		t.Errorf("a load after the first ended: %d", third.StatusCode)
	}
}

// runServer runs floe serve's Run on a new root holding repository
// fleet, with its state in state, until the test ends.
func runServer(t *testing.T, state string) (addr, root string, tokens *server.TokenStore) {
	t.Helper()
	root = t.TempDir()
	repos, _ := server.NewRootDir(root)
	if _, err := repos.Create(context.Background(), "fleet"); err != nil {
		t.Fatal(err)
	}
	tokens, err := server.OpenTokenStore(state)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- server.Run(ctx, server.Config{Root: root, StateDir: state, Listen: "127.0.0.1:0",
			Ready: func(addr, fp string, created bool) { ready <- addr }})
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	return addr, root, tokens
}

// Nothing in the server's state directory is readable by others but the
// certificate: tokens.json, the private key, the audit log, the usage
// and quota ledgers, the spool.
func TestStateDirModes(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	addr, _, tokens := runServer(t, state)
	tok, _, err := tokens.AddWithQuota("fleet", "h", server.RoleBackup, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ledger, err := server.OpenLedger(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := ledger.SetRepoQuota("fleet", 1<<30); err != nil {
		t.Fatal(err)
	}
	rec := []byte("record")
	if got := rawDo(t, addr, fmt.Sprintf("PUT /fleet/snapshots/%s HTTP/1.1\r\nHost: floe\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s", nameOf(rec), tok, len(rec), rec)); got != http.StatusCreated {
		t.Fatalf("upload: %d", got)
	}
	rawDo(t, addr, "GET /fleet/config HTTP/1.1\r\nHost: floe\r\n\r\n") // a refusal for the audit log
	seen := map[string]bool{}
	err = filepath.WalkDir(state, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(state, p)
		seen[rel] = true
		if rel == "cert.pem" {
			return nil
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v", rel, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tokens.json", "key.pem", "audit.log", "usage.json", "quotas.json", "spool"} {
		if !seen[f] {
			t.Errorf("%s not in the state directory (have %v)", f, seen)
		}
	}
}

// Objects uploaded to another directory than their kind's: a pack as an
// index file, an index file as a pack, anything as a key, a gc mark or
// the config (a backup token), are refused and leave nothing. A pack as
// a snapshot record is stored: the server cannot tell a sealed record
// from other bytes (clients skip and report it, see SECURITY.md).
func TestWrongDirectory(t *testing.T) {
	_, repos := fleetRoot(t)
	s := startServer(t, repos, server.Options{Verifier: server.NewFormatVerifier(), SpoolDir: t.TempDir()})
	tok := s.token(t, "fleet", "backup")
	be, err := repos.Open(context.Background(), "fleet")
	if err != nil {
		t.Fatal(err)
	}
	addr := s.srv.Listener.Addr().String()
	put := func(dir string, body []byte) int {
		path := "/fleet/" + dir + "/" + nameOf(body)
		if dir == "config" {
			path = "/fleet/config"
		}
		return rawDo(t, addr, fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: floe\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s", path, tok, len(body), body))
	}
	pack, blobs := buildPack(-1, bytes.Repeat([]byte("p"), 3000))
	if got := put("data", pack); got != http.StatusCreated {
		t.Fatalf("the pack where packs go: %d", got)
	}
	idx := indexOf(t, hash.Sum(pack), blobs)
	pack2, _ := buildPack(-1, bytes.Repeat([]byte("q"), 3000))
	for _, c := range []struct {
		dir  string
		body []byte
		want int
	}{
		{"index", pack2, http.StatusUnprocessableEntity},
		{"data", idx, http.StatusUnprocessableEntity},
		{"keys", pack2, http.StatusForbidden},
		{"gc", pack2, http.StatusForbidden},
		{"config", pack2, http.StatusForbidden},
	} {
		if got := put(c.dir, c.body); got != c.want {
			t.Errorf("an object in %s/: %d, want %d", c.dir, got, c.want)
		}
		h := storage.Handle{Type: storage.FileType(c.dir), Name: nameOf(c.body)}
		if c.dir == "config" {
			h.Name = ""
		}
		if _, err := be.Stat(context.Background(), h); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("a refused object is in %s/: %v", c.dir, err)
		}
	}
	if got := put("snapshots", pack2); got != http.StatusCreated {
		t.Errorf("a pack as a snapshot record: %d, want 201 (unverifiable)", got)
	}
}

// An upload that trickles (a few bytes at a time, never pausing for the
// idle timeout) is cut off too: it must average MinUploadRate, or it
// would hold its upload slot, its quota reservation and its memory for as
// long as it likes. An upload at a steady pace below the idle timeout's
// pauses but above the rate is stored.
func TestTrickledUpload(t *testing.T) {
	_, repos := fleetRoot(t)
	idle := 400 * time.Millisecond
	s := startServer(t, repos, server.Options{BodyIdleTimeout: idle})
	tok := s.token(t, "fleet", "backup")
	upload := func(data []byte, piece int, pause time.Duration) (int, error) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest("PUT", s.url+"/fleet/snapshots/"+nameOf(data), pr)
		req.ContentLength = int64(len(data))
		req.Header.Set("Authorization", "Bearer "+tok)
		go func() {
			for i := 0; i < len(data); i += piece {
				if _, err := pw.Write(data[i:min(i+piece, len(data))]); err != nil {
					return
				}
				time.Sleep(pause)
			}
			pw.Close()
		}()
		resp, err := s.srv.Client().Do(req)
		if err != nil {
			pw.CloseWithError(err)
			return 0, err
		}
		resp.Body.Close()
		pw.CloseWithError(io.ErrClosedPipe)
		return resp.StatusCode, nil
	}
	// a byte every 20 ms (50 B/s) for ever (40 s for 2000 bytes)
	start := time.Now()
	code, err := upload(bytes.Repeat([]byte("t"), 2000), 1, 20*time.Millisecond)
	if err == nil && code < 400 {
		t.Errorf("a trickled upload answered %d", code)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("a trickled upload was cut off only after %v", d)
	}
	// 16 KiB every 20 ms (800 KiB/s): stored
	if code, err := upload(bytes.Repeat([]byte("s"), 320<<10), 16<<10, 20*time.Millisecond); err != nil || code != http.StatusCreated {
		t.Errorf("a steady upload: %d %v", code, err)
	}
}

// A replay: a host that kept a copy of a snapshot record uploads it again
// after forget removed it. Its backup token is refused (and nothing is
// stored), whoever removed it; an admin may bring it back (floe import).
func TestSnapshotReplayRefused(t *testing.T) {
	ctx := context.Background()
	root, repos := fleetRoot(t)
	s := startServer(t, repos, server.Options{})
	admin := s.client(t, "fleet", s.token(t, "fleet", "admin"))
	host := s.client(t, "fleet", s.token(t, "fleet", "backup"))
	other := s.client(t, "fleet", s.token(t, "fleet", "backup"))
	rec := []byte("a sealed snapshot record, kept by the host")
	h := storage.Handle{Type: storage.Snapshot, Name: nameOf(rec)}
	if err := host.Save(ctx, h, rec); err != nil {
		t.Fatal(err)
	}
	if err := host.Save(ctx, h, rec); !errors.Is(err, storage.ErrExist) {
		t.Fatalf("identical re-upload of a stored record: %v", err)
	}
	if err := admin.Remove(ctx, h); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string]*remote.Backend{"the host": host, "another host": other} {
		err := b.Save(ctx, h, rec)
		if !errors.Is(err, remote.ErrForbidden) || !strings.Contains(err.Error(), "was removed on") {
			t.Errorf("%s replays a removed record: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "fleet", "snapshots", h.Name)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a replayed record was stored: %v", err)
	}
	// other snapshot records still go in
	rec2 := []byte("the next backup's record")
	if err := host.Save(ctx, storage.Handle{Type: storage.Snapshot, Name: nameOf(rec2)}, rec2); err != nil {
		t.Errorf("a new record after a refused replay: %v", err)
	}
	if err := admin.Save(ctx, h, rec); err != nil {
		t.Fatalf("an admin brings a removed record back: %v", err)
	}
	if err := host.Save(ctx, h, rec); !errors.Is(err, storage.ErrExist) {
		t.Errorf("identical re-upload once an admin restored it: %v", err)
	}
}
