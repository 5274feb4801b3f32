//go:build linux

package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestVersion: `floe version` (text and JSON) and -V/--version; -v is not
// --version (it is kept for --verbose).
func TestVersion(t *testing.T) {
	e := newEnv(t)
	r := e.run("version")
	expectCode(t, r, 0)
	if !strings.HasPrefix(r.stdout, "floe ") || !strings.Contains(r.stdout, "go1.") || !strings.Contains(r.stdout, "linux/") {
		t.Fatalf("floe version: want version, Go version and platform: %s", r)
	}
	var v struct {
		Version   string `json:"version"`
		GoVersion string `json:"go_version"`
		Platform  string `json:"platform"`
	}
	r = e.run("version", "--json")
	expectCode(t, r, 0)
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || v.Version == "" || !strings.HasPrefix(v.GoVersion, "go") || v.Platform == "" {
		t.Fatalf("floe version --json: %v %+v\n%s", err, v, r)
	}
	for _, flag := range []string{"-V", "--version"} {
		r = e.run(flag)
		expectCode(t, r, 0)
		if !strings.Contains(r.stdout, v.Version) {
			t.Fatalf("floe %s does not print the version %q: %s", flag, v.Version, r)
		}
	}
	r = e.run("-v")
	if r.code == 0 && strings.Contains(r.stdout, v.Version) {
		t.Fatalf("-v still prints the version (it is for --verbose): %s", r)
	}
}

// TestUnknownCommandIsUsage: a mistyped command is wrong usage (exit 2),
// with a hint where the commands are listed.
func TestUnknownCommandIsUsage(t *testing.T) {
	e := newEnv(t)
	r := e.run("bogus")
	expectCode(t, r, 2)
	if !strings.Contains(r.stderr, "floe --help") {
		t.Fatalf("no hint at floe --help: %s", r)
	}
}
