//go:build linux

package e2e

import (
	"net/http"
	"net/http/httptest"
	"os"
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
