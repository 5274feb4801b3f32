//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// excludeTree writes a small tree below src for the exclude tests.
func excludeTree(t *testing.T, src string) {
	t.Helper()
	files := map[string]string{
		"var/cache/apt/archives/x.deb": "deb",
		"usr/bin/apt":                  "binary",
		"etc/ssh/sshd_config":          "sshd",
		"etc/ssh/ssh_config":           "ssh",
		"srv/a/b/ssh_config":           "ssh2",
		"srv/ssh_config":               "ssh3",
		"home/keep.txt":                "keep",
		"home/notes.txt":               "notes",
		"home/x.tmp":                   "tmp",
		"home/Photo.JPG":               "jpg",
		"home/big.bin":                 strings.Repeat("b", 3000),
		"nobk/.nobackup":               "",
		"nobk/data":                    "data",
		"marked/.marker":               "floe-skip here",
		"marked/d":                     "d",
		"other/.marker":                "something else",
		"other/d":                      "d",
	}
	for name, data := range files {
		testutil.WriteFile(t, filepath.Join(src, name), []byte(data))
	}
}

// listed runs a dry-run, verbose backup and returns the files it lists,
// relative to src, sorted.
func listed(t *testing.T, e *floeEnv, src string, args ...string) ([]string, result) {
	t.Helper()
	r := e.ok(append([]string{"backup", "--dry-run", "-v"}, args...)...)
	var out []string
	for _, line := range strings.Split(r.stdout, "\n") {
		// "ACTION    PATH  SIZE"
		action, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimLeft(rest, " ")
		if i := strings.LastIndex(rest, "  "); i >= 0 {
			rest = rest[:i]
		}
		if (action == "new" || action == "changed" || action == "unchanged") && strings.HasPrefix(rest, src+"/") {
			out = append(out, strings.TrimPrefix(rest, src+"/"))
		}
	}
	sort.Strings(out)
	return out, r
}

// Excludes follow restic's documented rules; each case lists what is left
// out of the whole tree.
func TestExcludePatterns(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	excludeTree(t, src)
	all, _ := listed(t, e, src, src)
	if len(all) != 17 {
		t.Fatalf("dry run -v lists %d files, want 17: %q", len(all), all)
	}
	exf := e.path("excludes")
	os.WriteFile(exf, []byte("# text files, but keep one\n*.txt\n!keep.txt\n\n"), 0o644)
	for _, c := range []struct {
		name    string
		args    []string
		skipped []string
	}{
		{"trailing slash: directories only", []string{"--exclude", "apt/"}, []string{"var/cache/apt/archives/x.deb"}},
		{"relative with slash, any depth", []string{"--exclude", "ssh/*"}, []string{"etc/ssh/ssh_config", "etc/ssh/sshd_config"}},
		{"double star", []string{"--exclude", "**/ssh_config"}, []string{"etc/ssh/ssh_config", "srv/a/b/ssh_config", "srv/ssh_config"}},
		{"anchored double star", []string{"--exclude", src + "/srv/**/ssh_config"}, []string{"srv/a/b/ssh_config", "srv/ssh_config"}},
		{"anchored directory", []string{"--exclude", src + "/var"}, []string{"var/cache/apt/archives/x.deb"}},
		{"name anywhere", []string{"-e", "*.tmp"}, []string{"home/x.tmp"}},
		{"case", []string{"--exclude", "*.jpg"}, nil},
		{"iexclude", []string{"--iexclude", "*.jpg"}, []string{"home/Photo.JPG"}},
		{"exclude-file with negation", []string{"--exclude-file", exf}, []string{"home/notes.txt"}},
		{"iexclude-file", []string{"--iexclude-file", exf}, []string{"home/notes.txt"}},
		{"exclude-if-present", []string{"--exclude-if-present", ".nobackup"}, []string{"nobk/.nobackup", "nobk/data"}},
		{"exclude-if-present with header", []string{"--exclude-if-present", ".marker:floe-skip"}, []string{"marked/.marker", "marked/d"}},
		{"exclude-larger-than", []string{"--exclude-larger-than", "2k"}, []string{"home/big.bin"}},
	} {
		got, _ := listed(t, e, src, append(c.args, src)...)
		var want []string
		for _, f := range all {
			if !slices.Contains(c.skipped, f) {
				want = append(want, f)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s (%q): saved %q, want all but %q", c.name, c.args, got, c.skipped)
		}
	}
	if s := e.snapshots(); len(s) != 0 {
		t.Fatalf("dry runs saved %d snapshots", len(s))
	}

	// a pattern that can never match is reported
	r := e.ok("backup", "-n", "--exclude", "/nowhere/cache", "--exclude", "./build", src)
	for _, p := range []string{`"/nowhere/cache"`, `"./build"`} {
		if !strings.Contains(r.stderr, p) || !strings.Contains(r.stderr, "never match") {
			t.Errorf("no warning about %s: %s", p, r)
		}
	}
	// bad input: a clear usage error
	expectCode(t, e.floe("backup", "--exclude", "[x", src), 2)
	expectCode(t, e.floe("backup", "--exclude-larger-than", "12q", src), 2)
	expectFail(t, e.floe("backup", "--exclude-if-present", "a/b", src))

	// a real backup leaves out the same files, and restores the rest
	b, _ := e.backup("--exclude", "ssh/*", "--exclude-if-present", ".nobackup", src)
	dst := e.path("restored")
	e.ok("restore", b.Snapshot+":"+src, "--target", dst)
	for _, gone := range []string{"etc/ssh/sshd_config", "nobk/data"} {
		if _, err := os.Lstat(filepath.Join(dst, gone)); err == nil {
			t.Errorf("%s was excluded but restored", gone)
		}
	}
	if _, err := os.Stat(filepath.Join(dst, "srv/a/b/ssh_config")); err != nil {
		t.Errorf("a file that no pattern excludes is missing: %v", err)
	}
}

// --files-from reads patterns, --files-from-verbatim and --files-from-raw
// paths; "-" is standard input.
func TestFilesFrom(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	excludeTree(t, src)
	odd := filepath.Join(src, "odd", "# not a comment ")
	os.MkdirAll(filepath.Dir(odd), 0o755)
	os.WriteFile(odd, []byte("x"), 0o644)

	list := e.path("list")
	os.WriteFile(list, []byte("# ssh files\n  "+src+"/etc/**/ssh*_config  \n\n"+src+"/nothing-*\n"), 0o644)
	got, r := listed(t, e, src, "--files-from", list)
	if want := []string{"etc/ssh/ssh_config", "etc/ssh/sshd_config"}; !slices.Equal(got, want) {
		t.Errorf("--files-from: %q, want %q", got, want)
	}
	if !strings.Contains(r.stderr, "nothing-*") {
		t.Errorf("no warning about a pattern matching nothing: %s", r)
	}

	verb := e.path("verbatim")
	os.WriteFile(verb, []byte(odd+"\n\n"+src+"/home/keep.txt\n"), 0o644)
	got, _ = listed(t, e, src, "--files-from-verbatim", verb, src+"/usr")
	if want := []string{"home/keep.txt", "odd/# not a comment ", "usr/bin/apt"}; !slices.Equal(got, want) {
		t.Errorf("--files-from-verbatim plus a path: %q, want %q", got, want)
	}

	raw := odd + "\x00" + src + "/srv/ssh_config\x00"
	r = e.runWith(runOpts{stdin: strings.NewReader(raw)}, append(e.repoArgs(), "backup", "--json", "--files-from-raw", "-")...)
	expectCode(t, r, 0)
	b := decodeJSON[backupOut](t, r)
	if b.Summary.FilesNew != 2 {
		t.Errorf("--files-from-raw -: %d new files, want 2: %s", b.Summary.FilesNew, r)
	}
	dst := e.path("restored")
	e.ok("restore", b.Snapshot, "--target", dst)
	if got, err := os.ReadFile(filepath.Join(dst, odd)); err != nil || string(got) != "x" {
		t.Errorf("the odd name was not backed up: %q %v", got, err)
	}
	expectFail(t, e.floe("backup", "--files-from", e.path("no-such-list")))
	expectCode(t, e.floe("backup", "--stdin", "--files-from", list), 2)
}

// --dry-run writes nothing and reports what would be added.
func TestBackupDryRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	os.WriteFile(filepath.Join(src, "a"), []byte(strings.Repeat("dry run data ", 1000)), 0o644)
	before, _ := countFiles(t, e.repo)
	r := e.ok("backup", "--json", "--dry-run", src)
	type dryOut struct {
		Snapshot *string `json:"snapshot"`
		DryRun   bool    `json:"dry_run"`
		Summary  summary `json:"summary"`
	}
	out := decodeJSON[dryOut](t, r)
	if !out.DryRun || out.Snapshot != nil || out.Summary.FilesNew != 1 || out.Summary.DataAdded < 13000 {
		t.Errorf("dry run JSON: %+v", out)
	}
	if after, _ := countFiles(t, e.repo); after != before {
		t.Errorf("a dry run wrote to the repository: %d files before, %d after", before, after)
	}
	e.backup(src)
	before, _ = countFiles(t, e.repo)
	r = e.ok("backup", "-n", src)
	// The file is unchanged, so no file data would be added; the trees of
	// its ancestors may still differ (other tests change /tmp meanwhile).
	if !strings.Contains(r.stdout, "0 new, 0 changed, 1 unchanged") || !strings.Contains(r.stdout, "dry run") {
		t.Errorf("a dry run after the real backup should find the file unchanged: %s", r)
	}
	if after, _ := countFiles(t, e.repo); after != before {
		t.Errorf("a dry run wrote to the repository: %d files before, %d after", before, after)
	}
	if s := e.snapshots(); len(s) != 1 {
		t.Errorf("%d snapshots, want 1", len(s))
	}
}

// restore --include/--exclude and find take the same patterns.
func TestRestorePatterns(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	excludeTree(t, src)
	b, _ := e.backup(src)
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--include", "**/ssh_config"}, []string{"etc/ssh/ssh_config", "srv/a/b/ssh_config", "srv/ssh_config"}},
		{[]string{"--include", "ssh/", "--exclude", "sshd_*"}, []string{"etc/ssh/ssh_config"}},
		{[]string{"--include", src + "/srv/**/b", "--include", "*.JPG"}, []string{"home/Photo.JPG", "srv/a/b/ssh_config"}},
	} {
		dst := e.path("restore-" + strings.NewReplacer("/", "_", "*", "x").Replace(strings.Join(c.args, "")))
		e.ok(append([]string{"restore", b.Snapshot + ":" + src, "--target", dst}, c.args...)...)
		var got []string
		filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				rel, _ := filepath.Rel(dst, p)
				got = append(got, rel)
			}
			return nil
		})
		sort.Strings(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("restore %q: %q, want %q", c.args, got, c.want)
		}
	}
	r := e.ok("find", "--json", "ssh/")
	found := decodeJSON[struct {
		Matches []struct {
			Path string `json:"path"`
		} `json:"matches"`
	}](t, r).Matches
	if len(found) != 1 || !strings.HasSuffix(found[0].Path, "/etc/ssh") {
		t.Errorf("find ssh/ should list the directory only: %s", r)
	}
}
