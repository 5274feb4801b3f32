//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/testutil"
)

// floeServer is a `floe serve` process serving e.root.
type floeServer struct {
	e          *floeEnv
	root, addr string
	// stateArgs name the server's state for `floe serve token` and the
	// like: --root ROOT, or --state-dir DIR for one with --storage
	stateArgs   []string
	fingerprint string
	metrics     string // URL of the metrics, with --metrics-listen
	cmd         *exec.Cmd
	done        chan error
}

// freePort returns a loopback address nobody listens on (so that a
// restarted server can take the same one).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startServer starts `floe serve --root root --listen addr` and waits
// until it prints its fingerprint.
func (e *floeEnv) startServer(root, addr string, extra ...string) *floeServer {
	e.t.Helper()
	return e.startServerWith([]string{"--root", root}, root, addr, extra...)
}

// startStorageServer starts `floe serve --storage storage --state-dir
// state --listen addr`.
func (e *floeEnv) startStorageServer(storage, state, addr string, extra ...string) *floeServer {
	e.t.Helper()
	return e.startServerWith([]string{"--state-dir", state}, "", addr, append([]string{"--storage", storage}, extra...)...)
}

func (e *floeEnv) startServerWith(stateArgs []string, root, addr string, extra ...string) *floeServer {
	e.t.Helper()
	cmd := exec.Command(floeBin, append(append([]string{"serve", "--listen", addr}, stateArgs...), extra...)...)
	cmd.Env = e.environ()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	s := &floeServer{e: e, root: root, addr: addr, stateArgs: stateArgs, cmd: cmd, done: make(chan error, 1)}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		s.done <- cmd.Wait()
	}()
	timeout := time.After(30 * time.Second)
	for s.fingerprint == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				e.t.Fatalf("floe serve exited before it was ready:\n%s", stderr.String())
			}
			if fp, ok := strings.CutPrefix(l, "certificate fingerprint: "); ok {
				s.fingerprint = fp
			}
			if m, ok := strings.CutPrefix(l, "metrics on "); ok {
				s.metrics = m
			}
		case <-timeout:
			cmd.Process.Kill()
			e.t.Fatalf("floe serve did not start:\n%s", stderr.String())
		}
	}
	go func() {
		for range lines {
		}
	}()
	e.t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	return s
}

// stop sends sig and waits for the server to exit.
func (s *floeServer) stop(sig syscall.Signal) error {
	s.e.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.e.t.Fatal(err)
	}
	select {
	case err := <-s.done:
		return err
	case <-time.After(60 * time.Second):
		s.e.t.Fatal("floe serve did not exit")
	}
	return nil
}

// token runs `floe serve token add` and writes the token to a 0600 file.
func (s *floeServer) token(repo, host, role string) string {
	s.e.t.Helper()
	r := s.e.run(append(append([]string{"serve", "token", "add"}, s.stateArgs...), "--repo", repo, "--host", host, "--role", role)...)
	expectCode(s.e.t, r, 0)
	tok := strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(tok, "floe_") || strings.Contains(tok, "\n") {
		s.e.t.Fatalf("token add printed %q", r.stdout)
	}
	addSecret(tok) // from now on no output may show it
	path := s.e.path(host + "-" + role + ".token")
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		s.e.t.Fatal(err)
	}
	return path
}

// startFleetServer starts `floe serve` (with extra flags) on a new root,
// makes an admin token and creates the repository "fleet" through the
// server with it: where most server tests begin.
func (e *floeEnv) startFleetServer(extra ...string) (s *floeServer, admin string) {
	e.t.Helper()
	s = e.startServer(e.mkdir("srv"), freePort(e.t), extra...)
	admin = s.token("fleet", "admin", "admin")
	expectCode(e.t, s.remote("fleet", admin, "--password-file", e.pwFile, "init"), 0)
	return s, admin
}

// writeOnlyKey adds a write-only key to repo "fleet" with the admin token
// and returns its file, e.path(name), registered as a secret.
func (s *floeServer) writeOnlyKey(admin, name string) string {
	s.e.t.Helper()
	key := s.e.path(name)
	expectCode(s.e.t, s.remote("fleet", admin, "--password-file", s.e.pwFile, "key", "add", "--write-only", "--new-key-file", key), 0)
	registerKeyFile(s.e.t, key)
	return key
}

func (s *floeServer) url(repo string) string { return "https://" + s.addr + "/" + repo }

// remote runs floe on repo with tokenFile and the pinned fingerprint.
func (s *floeServer) remote(repo, tokenFile string, args ...string) result {
	s.e.t.Helper()
	return s.e.run(append([]string{"-r", s.url(repo), "--token-file", tokenFile,
		"--server-fingerprint", s.fingerprint}, args...)...)
}

// auditLines returns the audit log's records.
func (s *floeServer) auditLines() []map[string]any {
	s.e.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.root, ".floe-server", "audit.log"))
	if err != nil {
		s.e.t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			s.e.t.Fatalf("audit line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

// A host with a backup token and a write-only key backs up (twice, the
// second from its cache); the token cannot read or delete anything; an
// admin token with the full key restores byte-exact and prunes.
func TestServerBackupToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	root := s.root
	web1 := s.token("fleet", "web1", "backup")
	woKey := s.writeOnlyKey(admin, "web1.key")

	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 30, 20000, 1)
	testutil.WriteRandom(t, filepath.Join(src, "big"), 3<<20, 2)
	r := s.remote("fleet", web1, "--key-file", woKey, "backup", src)
	expectCode(t, r, 0)
	if f, err := os.OpenFile(filepath.Join(src, "big"), os.O_WRONLY|os.O_APPEND, 0); err != nil {
		t.Fatal(err)
	} else {
		f.WriteString("one more line\n")
		f.Close()
	}
	r = s.remote("fleet", web1, "--key-file", woKey, "backup", src)
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "parent snapshot") {
		t.Errorf("the second backup found no parent in its cache:\n%s", r)
	}

	// a full key with a backup token backs up too (the parent from the cache)
	ownCache := []string{"FLOE_CACHE_DIR=" + e.path("cache-full")}
	args := []string{"-r", s.url("fleet"), "--token-file", web1, "--server-fingerprint", s.fingerprint,
		"--password-file", e.pwFile, "backup", src}
	expectCode(t, e.runWith(runOpts{env: ownCache}, args...), 0)
	r = e.runWith(runOpts{env: ownCache}, args...)
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "parent snapshot") {
		t.Errorf("full key, backup token: no parent from the cache:\n%s", r)
	}

	// the backup token with the FULL key: the server still refuses
	pack := ""
	filepath.WalkDir(filepath.Join(root, "fleet", "data"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			pack = d.Name()
		}
		return nil
	})
	before := treeState(t, filepath.Join(root, "fleet"))
	for _, args := range [][]string{
		{"restore", "latest", "--target", e.path("r-refused")},
		{"ls", "latest"},
		{"dump", "latest", src},
		{"cat", "pack", pack},
		{"forget", "--keep-last", "1"},
		{"snapshots"},
		{"check"},
		{"prune"},
	} {
		r := s.remote("fleet", web1, append([]string{"--password-file", e.pwFile}, args...)...)
		expectCode(t, r, 14)
		if !strings.Contains(r.stderr, "role backup, which may not") {
			t.Errorf("floe %s: no clear refusal:\n%s", args[0], r)
		}
	}
	if after := treeState(t, filepath.Join(root, "fleet")); after != before {
		t.Errorf("refused commands changed the repository")
	}

	// admin with the full key: forget, prune (mark, then delete), check,
	// and a byte-exact restore
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "forget", "--keep-last", "1"), 0)
	packs := func() map[string]bool {
		m := map[string]bool{}
		filepath.WalkDir(filepath.Join(root, "fleet", "data"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
				m[d.Name()] = true
			}
			return nil
		})
		return m
	}
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "prune", "--grace", "0s"), 0)
	marked := packs()
	r = s.remote("fleet", admin, "--password-file", e.pwFile, "prune", "--grace", "0s")
	expectCode(t, r, 0)
	removed := 0
	for p := range marked {
		if !packs()[p] {
			removed++
		}
	}
	if removed == 0 {
		t.Errorf("prune through the server removed no pack:\n%s", r)
	}
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data"), 0)
	dst := e.path("restored")
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "restore", "latest:"+src, "--target", dst), 0)
	testutil.CompareTrees(t, src, dst)

	// SIGTERM: a graceful stop, exit 0
	if err := s.stop(syscall.SIGTERM); err != nil {
		t.Errorf("floe serve after SIGTERM: %v", err)
	}
}

// treeState describes every file under dir (name, size, mtime), so that a
// test can show that requests changed nothing.
func treeState(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// rawClient talks HTTP to the server directly, as a hostile client would.
func rawClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: true,
	}}
}

func readToken(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func blake3Hex(data []byte) string {
	sum := blake3.Sum256(data)
	return fmt.Sprintf("%x", sum[:])
}

// Hand-crafted requests: a name that does not match its bytes, an
// overwrite, traversal, missing and wrong tokens, a wrong role and a huge
// Content-Length are refused, logged, and never touch the repository.
func TestServerRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	web1 := s.token("fleet", "web1", "backup")
	adminTok, web1Tok := readToken(t, admin), readToken(t, web1)

	c := rawClient()
	base := "https://" + s.addr
	do := func(method, path, token string, body []byte) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// a pack as the format has it (the server verifies every blob)
	blob := bytes.Repeat([]byte("sealed blob "), 10)
	good := packfile.AppendHeader(bytes.Clone(blob), [packfile.UniqueLen]byte{1},
		[]packfile.Blob{{Type: packfile.Data, ID: packfile.BlobID(packfile.Data, blob), Length: uint32(len(blob))}})
	goodName := blake3Hex(good)
	// the same layout, but the header names the ID of other bytes
	forgedPack := packfile.AppendHeader(bytes.Clone(blob), [packfile.UniqueLen]byte{2},
		[]packfile.Blob{{Type: packfile.Data, ID: packfile.BlobID(packfile.Data, []byte("other")), Length: uint32(len(blob))}})
	// an index entry that names the blob at another offset of the stored pack
	forgedIndex, err := packfile.EncodeIndex(&packfile.Index{Packs: []packfile.Pack{{ID: hash.Sum(good),
		Blobs: []packfile.Blob{{Type: packfile.Data, ID: packfile.BlobID(packfile.Data, blob), Offset: 12, Length: uint32(len(blob)) - 12}}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// a correct upload works, an identical one again is idempotent
	if code, body := do("PUT", "/fleet/data/"+goodName, web1Tok, good); code != http.StatusCreated {
		t.Fatalf("good upload: %d %s", code, body)
	}
	if code, body := do("PUT", "/fleet/data/"+goodName, web1Tok, good); code != http.StatusOK {
		t.Errorf("identical re-upload: %d %s", code, body)
	}
	before := treeState(t, filepath.Join(s.root, "fleet"))
	audit0 := len(s.auditLines())

	forged := bytes.Repeat([]byte("o"), len(good))
	forgedName := blake3Hex([]byte("something else"))
	checks := []struct {
		what, method, path, token string
		body                      []byte
		want                      int
		wantMsg                   string
	}{
		{"a pack with a forged blob", "PUT", "/fleet/data/" + blake3Hex(forgedPack), web1Tok, forgedPack, 422, "do not hash to their IDs"},
		{"an index entry at a wrong offset", "PUT", "/fleet/index/" + blake3Hex(forgedIndex), web1Tok, forgedIndex, 422, "does not hash to its ID"},
		{"name does not match bytes", "PUT", "/fleet/data/" + forgedName, web1Tok, forged, 422, "BLAKE3"},
		{"overwrite with other bytes", "PUT", "/fleet/data/" + goodName, adminTok, forged, 422, "BLAKE3"},
		{"overwrite of the config", "PUT", "/fleet/config", adminTok, []byte("not the config"), 409, "never overwritten"},
		{"traversal", "GET", "/fleet/data/../config", adminTok, nil, 400, "bad request path"},
		{"traversal to another repository", "GET", "/fleet/../other/config", adminTok, nil, 400, "bad request path"},
		{"encoded traversal", "GET", "/fleet/keys/..%2f..%2fconfig", adminTok, nil, 400, "percent-encoded"},
		{"absolute", "GET", "//etc/passwd", adminTok, nil, 400, "repository name"},
		{"no token", "GET", "/fleet/config", "", nil, 401, "no bearer token"},
		{"wrong token", "GET", "/fleet/config", adminTok[:len(adminTok)-4] + "AAAA", nil, 401, "wrong token secret"},
		{"unknown token", "GET", "/fleet/config", "floe_0123456789abcdef_xyz", nil, 401, "unknown or revoked"},
		{"backup token deletes", "DELETE", "/fleet/data/" + goodName, web1Tok, nil, 403, "may not remove"},
		{"backup token writes a gc mark", "PUT", "/fleet/gc/" + goodName, web1Tok, good, 403, "may not save gc"},
		{"backup token reads a pack", "GET", "/fleet/data/" + goodName, web1Tok, nil, 403, "may not load data"},
		{"token of another repository", "GET", "/other/config", web1Tok, nil, 403, "is for repository"},
	}
	for _, c := range checks {
		code, body := do(c.method, c.path, c.token, c.body)
		if code != c.want || !strings.Contains(body, c.wantMsg) {
			t.Errorf("%s: %d %s, want %d with %q", c.what, code, body, c.want, c.wantMsg)
		}
	}

	// a huge Content-Length is refused before the body is read
	conn, err := tls.Dial("tcp", s.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PUT /fleet/data/%s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", forgedName, web1Tok, int64(1)<<40)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("huge Content-Length: %v", err)
	}
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("huge Content-Length: %d, want 413", resp.StatusCode)
	}
	conn.Close()

	if after := treeState(t, filepath.Join(s.root, "fleet")); after != before {
		t.Errorf("refused requests changed the repository:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Stat(filepath.Join(s.root, "other")); err == nil {
		t.Errorf("a refused request created a repository")
	}
	// every refusal is in the audit log, with the token id, never the token
	lines := s.auditLines()[audit0:]
	if len(lines) != len(checks)+1 {
		t.Errorf("audit log has %d new lines, want %d", len(lines), len(checks)+1)
	}
	foundForged := false
	verified := map[string]bool{}
	for _, l := range lines {
		if l["result"] != "refused" {
			t.Errorf("audit line not a refusal: %v", l)
		}
		if l["status"] == float64(422) && strings.Contains(fmt.Sprint(l["reason"]), "rejected by verification") {
			verified[fmt.Sprint(l["object"])] = true
		}
		if l["op"] == "save" && strings.Contains(fmt.Sprint(l["object"]), forgedName) && l["status"] == float64(422) {
			foundForged = true
		}
	}
	if !foundForged {
		t.Errorf("the forged upload is not in the audit log: %v", lines)
	}
	if !verified["data/"+blake3Hex(forgedPack)] || !verified["index/"+blake3Hex(forgedIndex)] {
		t.Errorf("the forged pack and index file are not in the audit log as refused by verification: %v", lines)
	}
	raw, _ := os.ReadFile(filepath.Join(s.root, ".floe-server", "audit.log"))
	for _, tok := range []string{adminTok, web1Tok} {
		_, secret, _ := strings.Cut(strings.TrimPrefix(tok, "floe_"), "_")
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the audit log contains a token")
		}
	}
	st, _ := os.Stat(filepath.Join(s.root, ".floe-server", "tokens.json"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("tokens.json has mode %v", st.Mode().Perm())
	}
	tokens, _ := os.ReadFile(filepath.Join(s.root, ".floe-server", "tokens.json"))
	for _, tok := range []string{adminTok, web1Tok} {
		if bytes.Contains(tokens, []byte(tok)) {
			t.Errorf("tokens.json holds a token, not only its hash")
		}
	}
	// a missing token file gives a clear client error; a revoked token 14
	r := e.run("-r", s.url("fleet"), "--server-fingerprint", s.fingerprint, "--password-file", e.pwFile, "snapshots")
	expectFail(t, r)
	if !strings.Contains(r.stderr, "--token-file") {
		t.Errorf("no token: unclear error:\n%s", r)
	}
	list := e.run("serve", "token", "list", "--root", s.root, "--json")
	expectCode(t, list, 0)
	var ts struct{ Tokens []struct{ ID, Host string } }
	if err := json.Unmarshal([]byte(list.stdout), &ts); err != nil || len(ts.Tokens) != 2 {
		t.Fatalf("token list: %v %s", err, list)
	}
	for _, tk := range ts.Tokens {
		if tk.Host == "web1" {
			expectCode(t, e.run("serve", "token", "revoke", "--root", s.root, tk.ID), 0)
		}
	}
	r = s.remote("fleet", web1, "--password-file", e.pwFile, "snapshots")
	expectCode(t, r, 14)
	if !strings.Contains(r.stderr, "revoked") {
		t.Errorf("revoked token: unclear error:\n%s", r)
	}
}

// The first connection trusts the server and remembers it; a changed
// certificate is refused, as is a wrong pinned fingerprint.
func TestServerFingerprint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	root := e.mkdir("srv")
	addr := freePort(t)
	s := e.startServer(root, addr)
	admin := s.token("fleet", "admin", "admin")
	args := []string{"-r", s.url("fleet"), "--token-file", admin, "--password-file", e.pwFile}
	r := e.run(append(args, "init")...)
	expectCode(t, r, 0)
	known := filepath.Join(e.config, "floe", "known_servers")
	if !strings.Contains(r.stderr, "trusting its certificate "+s.fingerprint) || !strings.Contains(r.stderr, known) {
		t.Errorf("first use: no clear message:\n%s", r)
	}
	r = e.run(append(args, "snapshots")...)
	expectCode(t, r, 0)
	if strings.Contains(r.stderr, "trusting") {
		t.Errorf("second use trusts again:\n%s", r)
	}
	// a wrong pinned fingerprint
	r = e.run(append(args, "--server-fingerprint", "sha256:"+strings.Repeat("ab", 32), "snapshots")...)
	expectCode(t, r, 10)
	if !strings.Contains(r.stderr, "--server-fingerprint") {
		t.Errorf("wrong pin: unclear error:\n%s", r)
	}
	// a new certificate on the same address
	if err := s.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(root, ".floe-server")
	for _, f := range []string{"cert.pem", "key.pem"} {
		b, err := os.ReadFile(filepath.Join(state, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(e.path("old-"+f), b, 0o600)
	}
	os.Remove(filepath.Join(state, "cert.pem"))
	s2 := e.startServer(root, addr)
	if s2.fingerprint == s.fingerprint {
		t.Fatal("no new certificate")
	}
	r = e.run(append(args, "snapshots")...)
	expectCode(t, r, 10)
	if !strings.Contains(r.stderr, "certificate changed") || !strings.Contains(r.stderr, known) {
		t.Errorf("changed certificate: unclear error:\n%s", r)
	}
	// the new one pinned explicitly works
	expectCode(t, e.run(append(args, "--server-fingerprint", s2.fingerprint, "snapshots")...), 0)

	// certificate files (--tls-cert/--tls-key): the old certificate again,
	// which the client remembers
	if err := s2.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s3 := e.startServer(root, addr, "--tls-cert", e.path("old-cert.pem"), "--tls-key", e.path("old-key.pem"))
	if s3.fingerprint != s.fingerprint {
		t.Errorf("--tls-cert: fingerprint %s, want the file's %s", s3.fingerprint, s.fingerprint)
	}
	expectCode(t, e.run(append(args, "snapshots")...), 0)
}

// The server killed with SIGKILL in the middle of a backup and restarted:
// the next backup succeeds and check passes.
func TestServerKilledMidBackup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	root, addr := s.root, s.addr
	web1 := s.token("fleet", "web1", "backup")
	woKey := s.writeOnlyKey(admin, "web1.key")
	src := e.mkdir("src")
	for i := range 6 {
		testutil.WriteRandom(t, filepath.Join(src, fmt.Sprint("f", i)), 8<<20, uint64(i))
	}
	cmd := exec.Command(floeBin, "-r", s.url("fleet"), "--token-file", web1, "--server-fingerprint", s.fingerprint,
		"--key-file", woKey, "backup", src)
	cmd.Env = e.environ()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// kill the server once the first pack is stored
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		n := 0
		filepath.WalkDir(filepath.Join(root, "fleet", "data"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".tmp-") {
				n++
			}
			return nil
		})
		if n > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := s.stop(syscall.SIGKILL); err == nil {
		t.Log("server exited cleanly before the kill")
	}
	s = e.startServer(root, addr) // the killed backup may finish through its retries, or fail
	if err := cmd.Wait(); err != nil {
		t.Logf("the backup during the kill failed (allowed): %v\n%s", err, out.String())
	}
	expectCode(t, s.remote("fleet", web1, "--key-file", woKey, "backup", src), 0)
	r := s.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data")
	expectCode(t, r, 0)
	dst := e.path("restored")
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "restore", "latest:"+src, "--target", dst), 0)
	testutil.CompareTrees(t, src, dst)
}

// A token quota and a repository quota refuse uploads with a clear error
// (exit 14) and leave no partial object; check passes after a refusal;
// with the token's quota raised (serve token quota) the next backup
// succeeds and reuses the pack that arrived; `floe serve usage` reports
// them.
func TestServerQuota(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer("--metrics-listen", "127.0.0.1:0")
	r := e.run("serve", "token", "add", "--root", s.root, "--repo", "fleet", "--host", "web2", "--role", "backup", "--quota", "24MiB")
	expectCode(t, r, 0)
	tok := strings.TrimSpace(r.stdout)
	addSecret(tok)
	web2 := e.path("web2.token")
	if err := os.WriteFile(web2, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// 40 MiB of new data: the first pack (16 MiB) fits the quota, the
	// second does not
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "big1"), 20<<20, 9)
	testutil.WriteRandom(t, filepath.Join(src, "big2"), 20<<20, 10)
	// the token file from the environment this time
	web2Env := runOpts{env: []string{"FLOE_TOKEN_FILE=" + web2, "FLOE_SERVER_FINGERPRINT=" + s.fingerprint}}
	r = e.runWith(web2Env, "-r", s.url("fleet"), "--password-file", e.pwFile, "backup", src)
	expectCode(t, r, 14)
	if !strings.Contains(r.stderr, "quota of 24.0 MiB") {
		t.Errorf("over quota: unclear error:\n%s", r)
	}
	// the refusal left the repository sound
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "check"), 0)
	// the quota raised, the next backup succeeds and reuses what arrived
	var web2ID string
	for _, tk := range decodeJSON[struct{ Tokens []struct{ ID, Host string } }](t, e.run("serve", "token", "list", "--root", s.root, "--json")).Tokens {
		if tk.Host == "web2" {
			web2ID = tk.ID
		}
	}
	expectCode(t, e.run("serve", "token", "quota", "--root", s.root, web2ID, "128MiB"), 0)
	r = e.runWith(web2Env, "-r", s.url("fleet"), "--password-file", e.pwFile, "backup", "--json", src)
	expectCode(t, r, 0)
	if added := decodeJSON[backupOut](t, r).Summary.DataAdded; added == 0 || added > 30<<20 {
		t.Errorf("after the quota was raised the backup added %d bytes of 40 MiB: it did not reuse the pack that arrived", added)
	}
	filepath.WalkDir(filepath.Join(s.root, "fleet"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), ".tmp-") {
			t.Errorf("a refused upload left %s", p)
		}
		return nil
	})
	r = e.run("serve", "usage", "--root", s.root, "--json")
	expectCode(t, r, 0)
	var u struct {
		Repositories []struct {
			Repo  string
			Bytes int64
		}
		Tokens []struct {
			Host         string
			Bytes, Quota int64
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &u); err != nil {
		t.Fatalf("usage --json: %v\n%s", err, r)
	}
	if len(u.Repositories) != 1 || u.Repositories[0].Repo != "fleet" || u.Repositories[0].Bytes <= 0 {
		t.Errorf("usage: repositories %+v", u.Repositories)
	}
	for _, tk := range u.Tokens {
		if tk.Host == "web2" && (tk.Quota != 128<<20 || tk.Bytes > tk.Quota || tk.Bytes < 40<<20) {
			t.Errorf("usage: token %+v", tk)
		}
	}
	// a repository quota applies to every token, admin included
	expectCode(t, e.run("serve", "quota", "--root", s.root, "fleet", "64K"), 0)
	r = s.remote("fleet", admin, "--password-file", e.pwFile, "backup", src)
	expectCode(t, r, 14)
	if !strings.Contains(r.stderr, "repository fleet holds") {
		t.Errorf("over the repository quota: unclear error:\n%s", r)
	}
	expectCode(t, e.run("serve", "quota", "--root", s.root, "fleet", "0"), 0)
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "backup", src), 0)

	// Prometheus metrics on their own listener
	resp, err := http.Get(s.metrics)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`floe_server_refused_total{code="quota"}`, `floe_server_stored_bytes_total{repo="fleet"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s:\n%.2000s", want, body)
		}
	}
}
