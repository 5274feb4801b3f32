//go:build linux

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestStaticReproducibleBuild: scripts/build.sh (README's first command)
// gives a statically linked binary that reports the version stamped from
// `git describe`, and building twice gives the same bytes.
func TestStaticReproducibleBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds floe twice")
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	build := func(out string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(root, "scripts", "build.sh"), "-o", out)
		cmd.Dir = root
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("scripts/build.sh: %v\n%s", err, b)
		}
		return string(b)
	}
	a, b := filepath.Join(dir, "a", "floe"), filepath.Join(dir, "b", "floe")
	build(a)

	// file(1) says "statically linked"; without it, ldd says "not a
	// dynamic executable" (and exits 1) for a static binary
	var how string
	static := false
	if out, err := exec.Command("file", a).CombinedOutput(); err == nil {
		how, static = "file: "+string(out), strings.Contains(string(out), "statically linked")
	} else {
		out, _ := exec.Command("ldd", a).CombinedOutput()
		how, static = "ldd: "+string(out), strings.Contains(string(out), "not a dynamic executable")
	}
	if !static {
		t.Fatalf("scripts/build.sh did not build a static binary (%s)", strings.TrimSpace(how))
	}

	want := "0.1.0-dev"
	if out, err := exec.Command("git", "-C", root, "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		want = strings.TrimSpace(string(out))
	}
	e := newEnv(t)
	cmd := exec.Command(a, "version")
	cmd.Env = e.environ()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "floe "+want+" ") {
		t.Fatalf("floe version: want the stamped version %q: %v\n%s", want, err, out)
	}

	build(b)
	ab, errA := os.ReadFile(a)
	bb, errB := os.ReadFile(b)
	if errA != nil || errB != nil || !bytes.Equal(ab, bb) {
		t.Fatalf("two builds of the same tree differ (%v, %v)", errA, errB)
	}
}
