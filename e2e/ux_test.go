//go:build linux

package e2e

import (
	"net"
	"os"
	"strings"
	"testing"
)

// hintOf returns the "hint: " line of r's stderr, or "".
func hintOf(r result) string {
	for _, l := range strings.Split(r.stderr, "\n") {
		if h, ok := strings.CutPrefix(l, "hint: "); ok {
			return h
		}
	}
	return ""
}

// TestTypos: a mistyped command, subcommand, help topic or flag is wrong
// usage (exit 2) whose hint names the closest ones, on a line of its own
// (cobra's own suggestions came inside the error, as "\n" escapes); an
// argument a command does not take, or a missing one, shows its usage.
func TestTypos(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		args []string
		want string // in the hint
	}{
		{[]string{"snapshts"}, "did you mean `floe snapshots`?"},
		{[]string{"key", "lst"}, "did you mean `floe key list`?"},
		{[]string{"serve", "tokn", "list"}, "did you mean `floe serve token`?"},
		{[]string{"help", "restor"}, "did you mean `floe restore`?"},
		{[]string{"help", "key", "lst"}, "did you mean `floe key list`?"},
		{[]string{"bogus"}, "`floe --help` lists the commands"},
		{[]string{"backup", "--exlude", "x", "/etc"}, "did you mean --exclude"},
		{[]string{"restore", "--tagret", "/tmp/x", "latest"}, "did you mean --target?"},
		{[]string{"key", "list", "--jsn"}, "did you mean --json?"},
		{[]string{"snapshots", "-Z"}, "`floe snapshots --help` lists its flags"},
		{[]string{"snapshots", "extra"}, "`floe snapshots --help`"},
		{[]string{"ls"}, "usage: floe ls SNAPSHOT[:PATH] [PATH]"},
		{[]string{"diff", "latest"}, "usage: floe diff SNAPSHOT1"},
	} {
		r := e.run(c.args...)
		expectCode(t, r, 2)
		if h := hintOf(r); !strings.Contains(h, c.want) {
			t.Errorf("floe %s: hint %q, want %q in it\n%s", quoteArgs(c.args), h, c.want, r)
		}
		if strings.Contains(r.stderr, `\n`) || strings.Contains(r.stderr, "Did you mean this") {
			t.Errorf("floe %s: cobra's suggestion text in the error: %s", quoteArgs(c.args), r)
		}
	}
	r := e.run("snapshots", "extra")
	if !strings.Contains(r.stderr, `floe snapshots takes no argument "extra"`) {
		t.Errorf("an argument to a command without subcommands: %s", r)
	}
	// and help itself still works, for commands and subcommands
	for _, args := range [][]string{{"help"}, {"help", "restore"}, {"help", "key", "list"}} {
		r := e.run(args...)
		expectCode(t, r, 0)
		if !strings.Contains(r.stdout, "Usage:") {
			t.Errorf("floe %s: no usage: %s", quoteArgs(args), r)
		}
	}
}

// closedPort returns a local TCP address that nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestCredentialFileAndServerErrors: a token, key or password file that
// is not there is an error (exit 1) whose hint names the flag to check; a
// missing token file used to read as a missing repository (exit 10, "create
// one with floe init"). A server nobody answers at is "repository
// unreachable" (exit 10, as documented), with what to check, not a plain
// error (exit 1).
func TestCredentialFileAndServerErrors(t *testing.T) {
	e := newEnv(t)
	e.init()
	tok := e.path("web1.token")
	if err := os.WriteFile(tok, []byte("floe_not_a_real_token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	url := "https://" + closedPort(t) + "/fleet"
	fp := "--server-fingerprint=sha256:" + strings.Repeat("ab", 32)

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-r", url, "--token-file", e.path("missing.token"), fp, "--password-file", e.pwFile, "snapshots"}, "--token-file or FLOE_TOKEN_FILE"},
		{[]string{"-r", e.repo, "--key-file", e.path("missing.key"), "snapshots"}, "--key-file or FLOE_KEY_FILE"},
		{[]string{"-r", e.repo, "--password-file", e.path("missing.pw"), "snapshots"}, "--password-file or FLOE_PASSWORD_FILE"},
	} {
		r := e.run(c.args...)
		expectCode(t, r, 1)
		if h := hintOf(r); !strings.Contains(h, c.want) || strings.Contains(h, "floe init") {
			t.Errorf("floe %s: hint %q, want %q in it\n%s", quoteArgs(c.args), h, c.want, r)
		}
	}

	r := e.run("-r", url, "--token-file", tok, fp, "--password-file", e.pwFile, "snapshots")
	expectCode(t, r, 10)
	if h := hintOf(r); !strings.Contains(h, "`floe serve` running") {
		t.Errorf("unreachable server: hint %q\n%s", h, r)
	}
}

// TestUnknownSnapshotHint: a snapshot ID that matches nothing says where
// the IDs are.
func TestUnknownSnapshotHint(t *testing.T) {
	e := newEnv(t)
	e.init()
	r := e.floe("ls", "ffffffff")
	expectCode(t, r, 1)
	if h := hintOf(r); !strings.Contains(h, "`floe snapshots`") {
		t.Errorf("hint %q\n%s", h, r)
	}
}
