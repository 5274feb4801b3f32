//go:build linux

package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// A file that cannot be read: the backup goes on (exit 3, partial), names
// the file, and the snapshot holds everything else. Root reads every file,
// so floe runs as nobody here.
func TestUnreadableFileAsUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run floe as another user")
	}
	const nobody = 65534
	e := newEnv(t)
	// nobody must reach the test directory and own its floe directories
	for _, d := range []string{filepath.Dir(e.dir), e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{e.home, e.config, e.data, e.cache, e.floeCache, e.pwFile} {
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	repoParent := e.mkdir("repos")
	os.Chown(repoParent, nobody, nobody)
	e.repo = filepath.Join(repoParent, "repo")
	asNobody := runOpts{uid: nobody}
	expectCode(t, e.runWith(asNobody, append(e.repoArgs(), "init")...), 0)

	src := e.mkdir("src")
	for rel, mode := range map[string]os.FileMode{"a.txt": 0o644, "secret.txt": 0, "sub/c.txt": 0o644, "z.txt": 0o644, "closed/x": 0o644} {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("content of "+rel), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	os.Chmod(filepath.Join(src, "closed"), 0o700) // a directory nobody cannot list
	// a hostile name: terminal escape sequences must not reach the terminal
	hostile := filepath.Join(src, "evil-\x1b]0;owned\a-\x1b[2J-name")
	os.WriteFile(hostile, []byte("x"), 0)

	r := e.runWith(asNobody, append(e.repoArgs(), "backup", src)...)
	expectCode(t, r, 3)
	textOut := r
	for _, name := range []string{filepath.Join(src, "secret.txt"), filepath.Join(src, "closed")} {
		if !strings.Contains(r.stderr, name) {
			t.Errorf("the error output does not name %s: %s", name, r)
		}
	}
	r = e.runWith(asNobody, append(e.repoArgs(), "backup", "--json", src)...)
	expectCode(t, r, 3)
	b := decodeJSON[backupOut](t, r)
	if b.Summary.Errors != 3 || len(b.Errors) != 3 || b.Snapshot == "" {
		t.Errorf("--json: %d errors %+v, snapshot %q; want 3 errors and a snapshot", b.Summary.Errors, b.Errors, b.Snapshot)
	}
	// and each as an error line before the summary (docs/JSON.md)
	itemErrors := 0
	for _, line := range strings.Split(r.stdout, "\n") {
		var m struct {
			MessageType string `json:"message_type"`
			Item        string `json:"item"`
			During      string `json:"during"`
			Error       string `json:"error"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.MessageType == "error" {
			if !strings.HasPrefix(m.Item, src) || m.During != "read" || m.Error == "" {
				t.Errorf("error line %s: want item, during and error", line)
			}
			itemErrors++
		}
	}
	if itemErrors != 3 {
		t.Errorf("--json: %d error lines, want 3: %s", itemErrors, r)
	}

	if s := e.snapshots(); len(s) != 2 {
		t.Fatalf("%d snapshots, want 2 (partial backups are kept)", len(s))
	}
	dst := e.path("restored")
	e.ok("restore", "--verify", b.Snapshot+":"+src, "--target", dst)
	for _, rel := range []string{"a.txt", "sub/c.txt", "z.txt"} {
		if got, err := os.ReadFile(filepath.Join(dst, rel)); err != nil || string(got) != "content of "+rel {
			t.Errorf("%s: %q %v", rel, got, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dst, "secret.txt")); err == nil {
		t.Errorf("the unreadable file is in the snapshot")
	}
	knownBug(t, strings.ContainsAny(textOut.stdout+textOut.stderr, "\x1b\a"),
		"cmd/floe/backup.go printBackupResult: file names in error messages are printed raw, so a file name with terminal escape sequences (ESC ] ... BEL, ESC [2J) reaches the terminal; quote them (%%q, as storage.Handle.String does)")

	// the post-hook of a partial backup hears "partial", with the figures
	envFile := e.path("hook-env")
	os.WriteFile(envFile, nil, 0o644)
	os.Chown(envFile, nobody, nobody)
	r = e.runWith(asNobody, append(e.repoArgs(), "backup", "--json", "--post-hook", "env > "+envFile, src)...)
	expectCode(t, r, 3)
	b = decodeJSON[backupOut](t, r)
	env := hookEnv(t, envFile)
	if env["FLOE_BACKUP_STATUS"] != "partial" || env["FLOE_SNAPSHOT_ID"] != b.Snapshot || env["FLOE_ERRORS"] != "3" {
		t.Errorf("post-hook after a partial backup: status %q, snapshot %q (want %s), errors %q", env["FLOE_BACKUP_STATUS"], env["FLOE_SNAPSHOT_ID"], b.Snapshot, env["FLOE_ERRORS"])
	}
}

// hookEnv reads the FLOE_ variables a hook wrote with env.
func hookEnv(t *testing.T, file string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "FLOE_") {
			env[k] = v
		}
	}
	return env
}

// A file that keeps growing while it is read is recorded in the snapshot's
// consistency record, and `snapshots` says so.
func TestChangedWhileRead(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "stable"), 1<<20, 70)
	growing := filepath.Join(src, "growing.log")
	testutil.WriteRandom(t, growing, 48<<20, 71)

	stop := appendLines(t, growing)
	b, _ := e.backup(src)
	stop()

	if b.Consistency.ChangedCount < 1 || !slices.Contains(b.Consistency.ChangedDuringRead, growing) {
		t.Errorf("consistency %+v, want %s listed", b.Consistency, growing)
	}
	if slices.Contains(b.Consistency.ChangedDuringRead, filepath.Join(src, "stable")) {
		t.Errorf("the stable file is listed as changed")
	}
	r := e.ok("snapshots")
	if !strings.Contains(r.stdout, "changed while being read") || !strings.Contains(r.stdout, growing) {
		t.Errorf("snapshots does not show the file that changed while being read: %s", r)
	}
	s := e.snapshots()
	if len(s) != 1 || s[0].Consistency.ChangedCount < 1 {
		t.Errorf("snapshots --json: %+v", s)
	}
	// a quiet file afterwards: the next backup is consistent again
	b2, _ := e.backup(src)
	if b2.Consistency.ChangedCount != 0 || !b2.Consistency.Checked {
		t.Errorf("second backup: consistency %+v, want checked and nothing changed", b2.Consistency)
	}
}

// Hooks: a failing pre-hook stops the backup; the post-hook runs after
// every backup, failed or not, and learns how it went.
func TestHooks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	os.WriteFile(filepath.Join(src, "file"), []byte("data"), 0o644)
	marker := e.path("post-hook-status")
	post := `echo "$FLOE_BACKUP_STATUS" >> ` + marker
	readMarker := func() string {
		b, _ := os.ReadFile(marker)
		os.Remove(marker)
		return strings.TrimSpace(string(b))
	}

	// failing pre-hook: no snapshot, non-zero exit, the post-hook sees "failed"
	r := e.floe("backup", "--pre-hook", "exit 7", "--post-hook", post, src)
	expectFail(t, r)
	if !strings.Contains(r.stderr, "pre-hook") {
		t.Errorf("the message does not name the pre-hook: %s", r)
	}
	if s := e.snapshots(); len(s) != 0 {
		t.Errorf("a failed pre-hook left %d snapshots", len(s))
	}
	if got := readMarker(); got != "failed" {
		t.Errorf("post-hook after a failed pre-hook saw %q, want failed", got)
	}

	// the backup itself fails: the post-hook still runs
	r = e.floe("backup", "--post-hook", post+"; env > "+e.path("failed-env"), e.path("does-not-exist"))
	expectFail(t, r)
	if got := readMarker(); got != "failed" {
		t.Errorf("post-hook after a failed backup saw %q, want failed", got)
	}
	if env := hookEnv(t, e.path("failed-env")); env["FLOE_SNAPSHOT_ID"] != "" || !strings.Contains(env["FLOE_BACKUP_ERROR"], "does-not-exist") {
		t.Errorf("post-hook after a failed backup: %v", env)
	}

	// success: the pre-hook runs before the files are read (a database dump)
	envFile := e.path("hook-env")
	r = e.floe("backup", "--json", "--pre-hook", "echo dumped > "+filepath.Join(src, "dump.sql"), "--post-hook", post+"; env > "+envFile, src)
	expectCode(t, r, 0)
	if got := readMarker(); got != "ok" {
		t.Errorf("post-hook after a good backup saw %q, want ok", got)
	}
	b := decodeJSON[backupOut](t, r)
	env := hookEnv(t, envFile)
	if env["FLOE_SNAPSHOT_ID"] != b.Snapshot || env["FLOE_FILES_NEW"] != "2" || env["FLOE_TOTAL_BYTES"] != "11" ||
		env["FLOE_DATA_ADDED"] == "" || env["FLOE_DURATION_SECONDS"] == "" {
		t.Errorf("post-hook after a good backup: %v (snapshot %s)", env, b.Snapshot)
	}
	dst := e.path("restored")
	e.ok("restore", b.Snapshot+":"+src, "--target", dst)
	if got, err := os.ReadFile(filepath.Join(dst, "dump.sql")); err != nil || string(got) != "dumped\n" {
		t.Errorf("the pre-hook's file is not in the snapshot: %q %v", got, err)
	}

	// a failing post-hook makes the exit non-zero (the snapshot is kept)
	r = e.floe("backup", "--post-hook", "exit 5", src)
	expectFail(t, r)
	if !strings.Contains(r.stderr, "post-hook") {
		t.Errorf("the message does not name the post-hook: %s", r)
	}
}
