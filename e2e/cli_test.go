//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
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

// TestCompletionAndManPages: completion scripts for the three shells,
// snapshot IDs completed where a snapshot is expected (only with a
// repository and credentials configured, silently nothing otherwise), and
// a man page per command.
func TestCompletionAndManPages(t *testing.T) {
	e := newEnv(t)
	for _, sh := range []string{"bash", "zsh", "fish"} {
		r := e.run("completion", sh)
		expectCode(t, r, 0)
		if !strings.Contains(r.stdout, "floe") || len(r.stdout) < 500 {
			t.Fatalf("completion %s: %s", sh, r)
		}
	}
	e.init()
	out, _ := e.backup(e.mkdir("data"))
	short := out.Snapshot[:8]
	for _, cmd := range []string{"restore", "ls", "diff", "forget"} {
		r := e.floe("__complete", cmd, "")
		expectCode(t, r, 0)
		if !strings.Contains(r.stdout, short+"\t") || !strings.Contains(r.stdout, "latest\t") {
			t.Fatalf("completing %s does not offer the snapshot %s: %s", cmd, short, r)
		}
	}
	// ls takes one snapshot: the second argument is a path
	if r := e.floe("__complete", "ls", "latest", ""); strings.Contains(r.stdout, short) {
		t.Fatalf("ls completes a snapshot as its second argument: %s", r)
	}
	// no credential: nothing, no prompt, no error on the terminal
	r := e.run("-r", e.repo, "__complete", "restore", "")
	expectCode(t, r, 0)
	if strings.Contains(r.stdout, short) || strings.Contains(r.stderr, "floe:") {
		t.Fatalf("completion without credentials: %s", r)
	}
	// no repository there: nothing either
	r = e.run("-r", e.path("nothing"), "--password-file", e.pwFile, "__complete", "restore", "")
	expectCode(t, r, 0)
	if strings.Contains(r.stdout, "latest") {
		t.Fatalf("completion without a repository: %s", r)
	}

	man := e.path("man")
	expectCode(t, e.run("gen", "man", man), 0)
	for _, page := range []string{"floe.1", "floe-backup.1", "floe-restore.1", "floe-key-add.1", "floe-version.1"} {
		data, err := os.ReadFile(filepath.Join(man, page))
		if err != nil || !bytes.Contains(data, []byte(".TH ")) {
			t.Fatalf("man page %s: %v\n%s", page, err, data)
		}
	}
	expectCode(t, e.run("gen", "man"), 2)
}

// TestPlurals: counts agree with their nouns ("1 snapshot", not "1
// snapshots"), in the output and in the source: a format string that
// puts %d before a plural noun, or says "(s)", is a plural bug waiting for
// a count of 1 (ui.Count says it right).
func TestPlurals(t *testing.T) {
	e := newEnv(t)
	e.init()
	data := e.mkdir("data")
	if err := os.WriteFile(filepath.Join(data, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.ok("backup", data)
	if !strings.Contains(r.stdout, "0 errors") || strings.Contains(r.stdout, "1 directories") {
		t.Errorf("backup summary: %s", r)
	}
	r = e.ok("snapshots")
	if !strings.Contains(r.stdout, "\n1 snapshot\n") {
		t.Errorf("snapshots does not say \"1 snapshot\": %s", r)
	}

	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	// (not "matches" or "entries": floe says "%d matches" only of 2 or more)
	bad := regexp.MustCompile(`%d (errors|snapshots|files|blobs|packs|directories|records|problems|marks|actions|repairs)\b|\b(blob|record|problem|mark|snapshot|file|error|pack|repair|action|entry|entrie)\(s\)`)
	for _, dir := range []string{"cmd", "internal"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") || strings.Contains(p, "testutil") || strings.Contains(p, "storagetest") {
				return err
			}
			src, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			for i, line := range strings.Split(string(src), "\n") {
				if strings.HasPrefix(strings.TrimSpace(line), "//") {
					continue
				}
				if m := bad.FindString(line); m != "" {
					t.Errorf("%s:%d: %q: say it with ui.Count", p, i+1, m)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestErrorsAreOneSentence: common mistakes get one clear sentence and
// what to do next, not a chain of wrapped errors.
func TestErrorsAreOneSentence(t *testing.T) {
	e := newEnv(t)
	e.init()
	r := e.floe("init")
	expectFail(t, r)
	if first := strings.SplitN(r.stderr, "\n", 2)[0]; first != "floe: a repository exists at "+e.repo+" already (it has a config file): give a new directory" {
		t.Errorf("init over a repository: %s", r)
	}
	r = e.floe("key", "remove", "abc")
	expectFail(t, r)
	if !strings.Contains(r.stderr, "floe: no key with ID \"abc\" in the repository\n") || !strings.Contains(r.stderr, "hint: `floe snapshots` and `floe key list`") ||
		strings.Contains(r.stderr, "floe check") {
		t.Errorf("key remove of an unknown ID: %s", r)
	}
}
