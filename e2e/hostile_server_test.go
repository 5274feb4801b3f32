//go:build linux

package e2e

import (
	"bytes"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/floe-backup/floe/internal/storage/remote"
)

// A hostile server that redirects every request, to a plain-http port of
// the same host (where Go's client would have sent the token along) or
// to another server, gets nothing: floe fails with an error that names
// the redirect, and the token reaches neither place.
func TestHostileServerRedirect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var reached, withToken atomic.Int64
	catch := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		if r.Header.Get("Authorization") != "" {
			withToken.Add(1)
		}
	})
	plain := httptest.NewServer(catch)
	defer plain.Close()
	other := httptest.NewTLSServer(catch)
	defer other.Close()
	tok := "floe_0123456789abcdef_" + strings.Repeat("S", 43)
	addSecret(tok)
	tokFile := e.path("hostile.token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{plain.URL, other.URL} {
		evil := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target+r.URL.RequestURI(), http.StatusTemporaryRedirect)
		}))
		evil.EnableHTTP2 = true
		evil.StartTLS()
		defer evil.Close()
		fp := remote.Fingerprint(evil.Certificate().Raw)
		for _, args := range [][]string{{"snapshots"}, {"cat", "config"}, {"backup", e.mkdir("src-" + target[len(target)-5:])}} {
			r := e.run(append([]string{"-r", evil.URL + "/fleet", "--token-file", tokFile, "--server-fingerprint", fp,
				"--password-file", e.pwFile}, args...)...)
			expectFail(t, r)
			if !strings.Contains(r.stderr, "redirect") {
				t.Errorf("%s against a server that redirects to %s: unclear error:\n%s", args[0], target, r)
			}
		}
	}
	if reached.Load() != 0 || withToken.Load() != 0 {
		t.Errorf("floe followed %d redirects, %d with the token", reached.Load(), withToken.Load())
	}
}

// A server that answers with another object than the one asked for (an
// authentic snapshot record for another, another pack's bytes for a
// pack) gets nothing accepted: the client hashes what it loads, so the
// snapshot is reported as not matching its name and the restore fails
// instead of writing other data.
func TestHostileServerSwapsObjects(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	srcA, srcB := e.mkdir("a"), e.mkdir("b")
	contentA := bytes.Repeat([]byte("content of A\n"), 5000)
	// B's packs: random bytes, larger than every pack of A, so that every
	// range of A's packs can be answered with B's bytes
	contentB := make([]byte, 2<<20)
	rand.Read(contentB)
	if err := os.WriteFile(filepath.Join(srcA, "file"), contentA, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(srcB, "file"), contentB, 0o644); err != nil {
		t.Fatal(err)
	}
	backup := func(src string) string {
		r := s.remote("fleet", admin, "--password-file", e.pwFile, "backup", "--json", src)
		expectCode(t, r, 0)
		return decodeJSON[backupOut](t, r).Snapshot
	}
	idA := backup(srcA)
	packsA := packNames(t, filepath.Join(s.root, "fleet"))
	idB := backup(srcB)
	var packB string
	var sizeB int64
	for p, size := range packNames(t, filepath.Join(s.root, "fleet")) {
		if _, ok := packsA[p]; !ok && size > sizeB {
			packB, sizeB = p, size // B's data pack: its bytes answer every load of a pack
		}
	}
	if packB == "" {
		t.Fatal("backup B stored no pack")
	}

	// the hostile server: floe serve behind a proxy that swaps objects
	upstream, _ := url.Parse("https://" + s.addr)
	proxy := httputil.NewSingleHostReverseProxy(upstream)
	proxy.Transport = rawClient().Transport
	swapping := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/fleet/snapshots/"+idB:
			r.URL.Path = "/fleet/snapshots/" + idA
		case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/fleet/data/"):
			r.URL.Path = "/fleet/data/" + packB
		}
		proxy.ServeHTTP(w, r)
	}))
	swapping.EnableHTTP2 = true
	swapping.StartTLS()
	defer swapping.Close()
	fp := remote.Fingerprint(swapping.Certificate().Raw)
	run := func(args ...string) result {
		return e.run(append([]string{"-r", swapping.URL + "/fleet", "--token-file", admin, "--server-fingerprint", fp,
			"--password-file", e.pwFile, "--no-cache"}, args...)...)
	}

	// B's record is A's: not taken for B
	r := run("snapshots", "--json")
	out := r.stdout + r.stderr
	if !strings.Contains(out, idB[:8]) || !strings.Contains(out, "does not match its name") {
		t.Errorf("snapshots with a swapped record does not report it:\n%s", r)
	}
	if n := strings.Count(r.stdout, `"id": "`+idA+`"`) + strings.Count(r.stdout, `"id":"`+idA+`"`); n > 1 {
		t.Errorf("snapshot A listed %d times", n)
	}
	expectFail(t, run("restore", idB, "--target", e.path("restoreB")))

	// every pack is B's: A's restore must not write B's (or any other) bytes
	target := e.path("restoreA")
	r = run("restore", idA, "--target", target)
	expectFail(t, r)
	filepath.WalkDir(target, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		got, _ := os.ReadFile(p)
		if len(got) > 0 && !bytes.HasPrefix(contentA, bytes.TrimRight(got, "\x00")) {
			t.Errorf("restore through a swapping server wrote %s with other bytes (%d)", p, len(got))
		}
		return nil
	})
}

// packNames returns the names and sizes of the packs stored in a
// repository directory.
func packNames(t *testing.T, repoDir string) map[string]int64 {
	t.Helper()
	names := map[string]int64{}
	filepath.WalkDir(filepath.Join(repoDir, "data"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && len(d.Name()) == 64 {
			if fi, err := d.Info(); err == nil {
				names[d.Name()] = fi.Size()
			}
		}
		return nil
	})
	return names
}
