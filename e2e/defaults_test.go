//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A password or key file without a repository points at a repository the
// user forgot to name: floe says so (exit 2) and creates nothing. With
// nothing given, the first backup creates the default repository and says
// what it created and with which secret.
func TestDefaultRepositoryNotWithCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	src := e.mkdir("src")
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	repoDir := filepath.Join(e.data, "floe", "repository")
	keyFile := filepath.Join(e.config, "floe", "repository.key")
	otherKey := e.path("other.key")
	for _, c := range []struct {
		name string
		env  []string
		args []string
	}{
		{"FLOE_PASSWORD_FILE", []string{"FLOE_PASSWORD_FILE=" + e.pwFile}, nil},
		{"FLOE_PASSWORD_COMMAND", []string{"FLOE_PASSWORD_COMMAND=cat " + e.pwFile}, nil},
		{"--password-file", nil, []string{"--password-file", e.pwFile}},
		{"--key-file", nil, []string{"--key-file", otherKey}},
		{"FLOE_KEY_FILE", []string{"FLOE_KEY_FILE=" + otherKey}, nil},
	} {
		for _, cmd := range [][]string{{"backup", src}, {"snapshots"}} {
			r := e.runWith(runOpts{env: c.env}, append(c.args, cmd...)...)
			expectCode(t, r, 2)
			if !strings.Contains(r.stderr, "no repository given") || !strings.Contains(r.stderr, "hint: use -r or FLOE_REPOSITORY") {
				t.Errorf("%s, %s: %s", c.name, cmd[0], r)
			}
		}
		if _, err := os.Stat(repoDir); err == nil {
			t.Fatalf("%s: the default repository was created", c.name)
		}
		if _, err := os.Stat(otherKey); err == nil {
			t.Fatalf("%s: a key file was written", c.name)
		}
	}

	r := e.run("backup", src)
	expectCode(t, r, 0)
	for _, want := range []string{repoDir, keyFile, "key file", "no password"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the first backup does not say %q: %s", want, r)
		}
	}
	registerKeyFile(t, keyFile)
	checkMode0600(t, keyFile)
	// with --json, the news goes to standard error
	e2 := newEnv(t)
	r = e2.run("backup", "--json", src)
	expectCode(t, r, 0)
	decodeJSON[backupOut](t, r)
	registerKeyFile(t, filepath.Join(e2.config, "floe", "repository.key"))
	if !strings.Contains(r.stderr, filepath.Join(e2.config, "floe", "repository.key")) {
		t.Errorf("backup --json does not say which key file it created: %s", r)
	}
	// the default key file named explicitly is the default repository's
	r = e.runWith(runOpts{env: []string{"FLOE_KEY_FILE=" + keyFile}}, "snapshots")
	expectCode(t, r, 0)
}
