//go:build linux

package e2e

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	// a script that asked for JSON gets its error as JSON, even when the
	// command or a flag is unknown (cobra stops before parsing --json)
	for _, args := range [][]string{{"snapshts", "--json"}, {"snapshots", "--hots", "x", "--json"}} {
		r := e.run(args...)
		expectCode(t, r, 2)
		m := decodeJSON[struct {
			MessageType string `json:"message_type"`
			ExitCode    int    `json:"exit_code"`
			Hint        string `json:"hint"`
		}](t, r)
		if m.MessageType != "error" || m.ExitCode != 2 || !strings.Contains(m.Hint, "did you mean") {
			t.Errorf("floe %s: %+v\n%s", quoteArgs(args), m, r)
		}
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
	url := "https://" + freePort(t) + "/fleet"
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

	// the destination of copy has flags of its own: naming -r's would not help
	e.ok("backup", e.mkdir("src"))
	other := e.path("other")
	e.ok("init", "-r", other)
	r := e.floe("copy", "--all", "--to", other)
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "--to-password-file") || strings.Contains(r.stderr, "FLOE_PASSWORD_FILE") {
		t.Errorf("copy --to without its password: %s", r)
	}

	r = e.run("-r", url, "--token-file", tok, fp, "--password-file", e.pwFile, "snapshots")
	expectCode(t, r, 10)
	if h := hintOf(r); !strings.Contains(h, "`floe serve` (or the S3 service) runs there") {
		t.Errorf("unreachable server: hint %q\n%s", h, r)
	}
}

// TestUnknownSnapshotHint: a snapshot ID that matches nothing says where
// the IDs are, a path not in the snapshot where its paths are.
func TestUnknownSnapshotHint(t *testing.T) {
	e := newEnv(t)
	e.init()
	r := e.floe("ls", "ffffffff")
	expectCode(t, r, 1)
	if h := hintOf(r); !strings.Contains(h, "`floe snapshots`") {
		t.Errorf("hint %q\n%s", h, r)
	}
	e.ok("backup", e.mkdir("src"))
	for _, args := range [][]string{{"ls", "latest:src"}, {"dump", "latest:src"}, {"restore", "latest:src", "--target", e.path("r")}} {
		r = e.floe(args...)
		cmd := args[0]
		expectCode(t, r, 1)
		if h := hintOf(r); !strings.Contains(h, "absolute") || !strings.Contains(h, "`floe ls SNAPSHOT`") {
			t.Errorf("%s of a relative path: hint %q\n%s", cmd, h, r)
		}
	}
}

// TestJSONServeAndAgentConfig: the commands a provisioning script runs on
// a server (fingerprint to pin, token revoke, quota, host list and revoke)
// and before installing an agent's configuration (config check) print one
// JSON document with --json, as docs/JSON.md says; they printed nothing
// (or plain text, or "hosts": null) before.
func TestJSONServeAndAgentConfig(t *testing.T) {
	c := &jsonChecker{t: t, specs: readJSONSpec(t), seen: map[string]bool{}}
	e := newEnv(t)
	root := e.mkdir("server")
	e.mkdir("server", "fleet")

	r := e.run("serve", "host", "list", "--root", root, "--json")
	expectCode(t, r, 0)
	c.document("serve host list", r)
	if !strings.Contains(r.stdout, `"hosts": []`) {
		t.Errorf("no hosts: want an empty list, not null: %s", r)
	}

	r = e.run("serve", "usage", "--root", root, "--json")
	expectCode(t, r, 0)
	if strings.Contains(r.stdout, "null") {
		t.Errorf("nothing stored: want empty lists, not null: %s", r)
	}

	s := e.startServer(root, freePort(t))
	r = e.run("serve", "fingerprint", "--root", root, "--json")
	expectCode(t, r, 0)
	c.document("serve fingerprint", r)
	fp := decodeJSON[struct {
		Fingerprint string `json:"fingerprint"`
	}](t, r)
	if fp.Fingerprint != s.fingerprint {
		t.Errorf("serve fingerprint --json says %q, the server %q", fp.Fingerprint, s.fingerprint)
	}

	r = e.run("serve", "token", "add", "--root", root, "--repo", "fleet", "--host", "web1", "--role", "backup", "--json")
	expectCode(t, r, 0)
	tok := decodeJSON[struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}](t, r)
	addSecret(tok.Token)
	r = e.run("serve", "token", "revoke", "--root", root, tok.ID, "--json")
	expectCode(t, r, 0)
	c.document("serve token revoke", r)
	if rev := decodeJSON[struct {
		Revoked []string `json:"revoked"`
	}](t, r); len(rev.Revoked) != 1 || rev.Revoked[0] != tok.ID {
		t.Errorf("token revoke --json: %s", r)
	}

	r = e.run("serve", "quota", "--root", root, "fleet", "1MiB", "--json")
	expectCode(t, r, 0)
	c.document("serve quota", r)
	if q := decodeJSON[struct {
		Repo  string `json:"repo"`
		Quota int64  `json:"quota"`
	}](t, r); q.Repo != "fleet" || q.Quota != 1<<20 {
		t.Errorf("quota --json: %s", r)
	}

	r = e.run("serve", "host", "add", "--root", root, "--repo", "fleet", "web2", "--json")
	expectCode(t, r, 0)
	addSecret(decodeJSON[struct {
		Token string `json:"enrollment_token"`
	}](t, r).Token)
	r = e.run("serve", "host", "revoke", "--root", root, "web2", "--json")
	expectCode(t, r, 0)
	c.document("serve host revoke", r)

	good := filepath.Join(e.dir, "agent.toml")
	os.WriteFile(good, []byte(`[[job]]
name = "system"
repository = "`+e.repo+`"
password_file = "`+e.pwFile+`"
paths = ["/etc"]
schedule = "daily"
`), 0o644)
	r = e.run("agent", "config", "check", good, "--json")
	expectCode(t, r, 0)
	c.document("agent config check", r)
	type checkOut struct {
		OK   bool `json:"ok"`
		Jobs []struct {
			Name     string   `json:"name"`
			Schedule []string `json:"schedule"`
		} `json:"jobs"`
		Problems []struct {
			Line    int    `json:"line"`
			Message string `json:"message"`
		} `json:"problems"`
	}
	if out := decodeJSON[checkOut](t, r); !out.OK || len(out.Jobs) != 1 || out.Jobs[0].Name != "system" || len(out.Problems) != 0 {
		t.Errorf("a good configuration: %+v\n%s", out, r)
	}
	bad := filepath.Join(e.dir, "bad.toml")
	os.WriteFile(bad, []byte("[[job]]\nname = \"x\"\nbogus = 1\n"), 0o644)
	r = e.run("agent", "config", "check", bad, "--json")
	expectCode(t, r, 1)
	c.document("agent config check", r)
	out := decodeJSON[checkOut](t, r)
	if out.OK || len(out.Problems) == 0 {
		t.Fatalf("a bad configuration: %+v\n%s", out, r)
	}
	found := false
	for _, p := range out.Problems {
		found = found || p.Line == 3 && strings.Contains(p.Message, "bogus")
	}
	if !found {
		t.Errorf("the unknown key on line 3 is not among the problems: %+v", out.Problems)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || doc["exit_code"] != nil {
		t.Errorf("a second (error) document after the problems: %s", r)
	}
}

// TestDiskFull: a repository or a restore target on a full file system
// says so in the hint, with what to do, rather than only the failed write
// deep in the error: backup exits 1, restore 3 (partial).
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	e := newEnv(t)
	full := e.mkdir("full")
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", full).Run() })

	src := e.mkdir("src")
	data := make([]byte, 3<<20)
	rand.Read(data) // incompressible: more than the tmpfs holds
	if err := os.WriteFile(filepath.Join(src, "big"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	e.init()
	e.ok("backup", src)

	onFull := filepath.Join(full, "repo")
	e.ok("init", "-r", onFull)
	r := e.floe("-r", onFull, "backup", src)
	expectCode(t, r, 1)
	if h := hintOf(r); !strings.Contains(h, "file system is full") || !strings.Contains(h, "floe prune") {
		t.Errorf("backup into a full repository: hint %q\n%s", h, r)
	}
	os.RemoveAll(onFull)

	r = e.floe("restore", "latest", "--target", filepath.Join(full, "restored"))
	expectCode(t, r, 3)
	if h := hintOf(r); !strings.Contains(h, "target's file system is full") {
		t.Errorf("restore onto a full file system: hint %q\n%s", h, r)
	}
}

// TestProgressOnlyOnATerminal: on a terminal restore shows progress with
// a rate and an ETA; without one (cron, systemd, a log file) it prints no
// progress lines and no carriage returns, only its summary.
func TestProgressOnlyOnATerminal(t *testing.T) {
	e := newEnv(t)
	src := e.mkdir("src")
	// restore counts bytes as it writes them, pack by pack: an ETA needs
	// a few packs (of a few MiB each) done and more to come
	data := make([]byte, 12<<20)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(src, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	e.init()
	e.ok("backup", src)
	slow := []string{"--limit-download", "4096"} // about 3 s: progress is drawn every 200 ms

	r := e.ok(append(slow, "restore", "latest", "--target", e.path("quiet"))...)
	if strings.ContainsAny(r.stderr+r.stdout, "\r") || strings.Contains(r.stderr, "ETA") {
		t.Errorf("progress without a terminal: %q %q", r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "restored snapshot") {
		t.Errorf("no summary: %s", r)
	}

	script, err := exec.LookPath("script")
	if err != nil {
		t.Skip("no script(1) to give floe a terminal")
	}
	args := append(append(e.repoArgs(), slow...), "restore", "latest", "--target", e.path("tty"))
	line := "'" + floeBin + "'"
	for _, a := range args {
		line += " '" + a + "'"
	}
	cmd := exec.Command(script, "-qec", line, "/dev/null")
	cmd.Env = e.environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("floe on a terminal: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "\r") || !strings.Contains(s, "ETA") || !strings.Contains(s, "MiB/s") {
		t.Errorf("on a terminal: want progress redrawn in place with a rate and an ETA:\n%q", s)
	}
	// Through the limit a range of 4 MiB is written only once all of it
	// is paid for: before any byte is written the line shows what was
	// fetched, with a rate and an ETA, where it said "0 B/s" and none.
	if !regexp.MustCompile(`0/1 files, 0 B/12\.00 MiB \(0%\), fetched [1-9][0-9.]* MiB, [0-9.]+ [KM]iB/s, ETA `).MatchString(s) {
		t.Errorf("on a terminal, before the first range is written: want the bytes fetched, a rate and an ETA:\n%q", s)
	}

	// A backup whose reading is done but whose upload is slow says so,
	// with the upload's rate and ETA, instead of "100%" and a falling rate.
	src2 := e.mkdir("src2")
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(src2, "g"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	line = "'" + floeBin + "'"
	for _, a := range append(e.repoArgs(), "--limit-upload", "4096", "backup", src2) {
		line += " '" + a + "'"
	}
	cmd = exec.Command(script, "-qec", line, "/dev/null")
	cmd.Env = e.environ()
	if out, err = cmd.CombinedOutput(); err != nil {
		t.Fatalf("backup on a terminal: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`12\.00 MiB/12\.00 MiB read; uploading: [0-9.]+ [KM]iB pending of 12\.[0-9]+ MiB, [0-9.]+ [KM]iB/s, ETA `).Match(out) {
		t.Errorf("backup on a terminal with a slow upload: want the upload's pending bytes, rate and ETA:\n%q", out)
	}
}

// TestRefusalNamesTheRole: a command the token's role does not allow is
// refused (exit 14) with a hint naming the role that command needs.
func TestRefusalNamesTheRole(t *testing.T) {
	e := newEnv(t)
	root := e.mkdir("server")
	e.mkdir("server", "fleet")
	s := e.startServer(root, freePort(t))
	token := func(role string) string {
		r := e.run("serve", "token", "add", "--root", root, "--repo", "fleet", "--host", "web1", "--role", role, "--json")
		expectCode(t, r, 0)
		tok := decodeJSON[struct {
			Token string `json:"token"`
		}](t, r).Token
		addSecret(tok)
		p := e.path(role + ".token")
		if err := os.WriteFile(p, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	admin, backup := token("admin"), token("backup")
	e.repo = "https://" + s.addr + "/fleet"
	e.env = append(e.env, "FLOE_SERVER_FINGERPRINT="+s.fingerprint)
	e.ok("--token-file", admin, "init")
	e.ok("--token-file", backup, "backup", e.mkdir("src"))

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"snapshots"}, "`floe snapshots` needs the restore (or admin) role"},
		{[]string{"restore", "latest", "--target", e.path("r")}, "`floe restore` needs the restore (or admin) role"},
		{[]string{"forget", "--keep-last", "1"}, "`floe forget` needs the admin role"},
	} {
		r := e.floe(append([]string{"--token-file", backup}, c.args...)...)
		expectCode(t, r, 14)
		if h := hintOf(r); !strings.Contains(h, c.want) {
			t.Errorf("floe %s with a backup token: hint %q, want %q\n%s", quoteArgs(c.args), h, c.want, r)
		}
	}
}
