//go:build linux

package e2e

import (
	"os"
	"strings"
	"testing"
)

// What a hostile or broken host writes on standard error over ssh (its
// sshd banner, its shell, a fake floe) reaches the admin's terminal
// escaped: no escape sequence can retitle the terminal, hide text or
// forge lines of floe's output.
func TestSSHStderrEscaped(t *testing.T) {
	e := newEnv(t)
	fake := e.path("fake-ssh")
	script := "#!/bin/sh\nprintf 'banner \\033]0;pwned\\007 \\033[2Jcleared\\rforged\\n' >&2\nexit 255\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	r := e.run("-r", "ssh://vault/srv/floe", "--ssh-command", fake, "--password-file", e.pwFile, "snapshots")
	if r.code == 0 {
		t.Fatalf("a failed ssh succeeded:\n%s", r)
	}
	if !strings.Contains(r.stderr, "banner") {
		t.Fatalf("what ssh said is not shown:\n%s", r)
	}
	if strings.ContainsAny(r.stderr, "\x1b\x07\r") {
		t.Fatalf("control characters from the host reach the terminal: %q", r.stderr)
	}
}
