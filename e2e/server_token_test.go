//go:build linux

package e2e

import (
	"os"
	"strings"
	"testing"
)

// `floe serve token add --output FILE` writes the token to a new file of
// mode 0600 (whatever the umask; a redirect of standard output makes one
// the umask's way, often world-readable), never over an existing file,
// and prints nothing of it; the file works as --token-file.
func TestServerTokenFile(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, _ := e.startFleetServer()
	path := e.path("web1.token")
	r := e.run("serve", "token", "add", "--root", s.root, "--repo", "fleet", "--host", "web1", "--role", "backup", "--output", path)
	expectCode(t, r, 0)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file has mode %v, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(path)
	tok := strings.TrimSpace(string(raw))
	if !strings.HasPrefix(tok, "floe_") {
		t.Fatalf("token file holds %q", raw)
	}
	addSecret(tok)
	if strings.Contains(r.stdout+r.stderr, tok) {
		t.Errorf("token add --output printed the token")
	}
	if !strings.Contains(r.stderr, path) {
		t.Errorf("token add --output does not say where the token is:\n%s", r)
	}
	src := e.mkdir("src")
	if err := os.WriteFile(src+"/f", []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	expectCode(t, s.remote("fleet", path, "--password-file", e.pwFile, "backup", src), 0)
	// --json says where, and shows no token either
	path2 := e.path("web3.token")
	r = e.run("serve", "token", "add", "--root", s.root, "--repo", "fleet", "--host", "web3", "--role", "backup", "--output", path2, "--json")
	expectCode(t, r, 0)
	if raw2, err := os.ReadFile(path2); err == nil {
		addSecret(strings.TrimSpace(string(raw2)))
	}
	doc := decodeJSON[map[string]any](t, r)
	if doc["token_file"] != path2 || doc["token"] != nil || strings.Contains(r.stdout, "floe_") {
		t.Errorf("token add --output --json: %s", r.stdout)
	}
	// never over an existing file (another host's token, or anything)
	r = e.run("serve", "token", "add", "--root", s.root, "--repo", "fleet", "--host", "web2", "--role", "backup", "--output", path)
	expectCode(t, r, 1)
	if again, _ := os.ReadFile(path); string(again) != string(raw) {
		t.Errorf("token add --output overwrote an existing file")
	}
	if !strings.Contains(r.stderr, "exists") {
		t.Errorf("unclear error:\n%s", r)
	}
}
