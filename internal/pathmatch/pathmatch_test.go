package pathmatch

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMatchResticExamples holds the examples of restic's documentation
// ("Excluding Files"), then the cases floe adds (a trailing "/", case).
func TestMatchResticExamples(t *testing.T) {
	tests := []struct {
		patterns []string
		path     string
		dir      bool
		want     bool
	}{
		{nil, "/a/b", false, false},
		// "*.c", "*.go": files anywhere
		{[]string{"*.c"}, "/home/ann/work/main.c", false, true},
		{[]string{"*.go"}, "/main.go", false, true},
		{[]string{"*.go"}, "/src/main.go.orig", false, false},
		// "foo/**/bar": everything named bar somewhere below a foo
		{[]string{"foo/**/bar"}, "/dir1/foo/dir2/bar/file", false, true},
		{[]string{"foo/**/bar"}, "/foo/bar/file", false, true},
		{[]string{"foo/**/bar"}, "/tmp/foo/bar", false, true},
		{[]string{"foo/**/bar"}, "/tmp/foo/baz", false, false},
		// whole components: "foo"
		{[]string{"foo"}, "/dir1/foo/dir2/file", false, true},
		{[]string{"foo"}, "/dir/foo", false, true},
		{[]string{"foo"}, "/dir/foobar", false, false},
		{[]string{"foo"}, "/barfoo", false, false},
		// a leading "/" anchors: "/bin"
		{[]string{"/bin"}, "/bin/bash", false, true},
		{[]string{"/bin"}, "/usr/bin/restic", false, false},
		// "*" does not cross "/": "b*ash"
		{[]string{"b*ash"}, "/bin/bash", false, true},
		{[]string{"b*ash"}, "/bin/ash", false, false},
		// "!" re-includes; an excluded directory stays excluded
		{[]string{"/home/ann/*", "!/home/ann/Documents"}, "/home/ann/Documents/cv.odt", false, false},
		{[]string{"/home/ann/*", "!/home/ann/Documents"}, "/home/ann/Music/a.ogg", false, true},
		{[]string{"*.log", "!keep.log"}, "/var/log/keep.log", false, false},
		{[]string{"*.log", "!keep.log"}, "/var/log/other.log", false, true},
		// the cases reported against floe's old matcher
		{[]string{"apt/"}, "/var/cache/apt", true, true},
		{[]string{"apt/"}, "/var/cache/apt/archives/x.deb", false, true},
		{[]string{"apt/"}, "/usr/bin/apt", false, false}, // a file, not a directory
		{[]string{"ssh/*"}, "/etc/ssh/sshd_config", false, true},
		{[]string{"ssh/*"}, "/etc/ssh", true, false},
		{[]string{"**/ssh_config"}, "/etc/ssh/ssh_config", false, true},
		{[]string{"/srv/**/ssh_config"}, "/srv/a/b/ssh_config", false, true},
		{[]string{"/srv/**/ssh_config"}, "/srv/ssh_config", false, true},
		{[]string{"/srv/**/ssh_config"}, "/etc/ssh/ssh_config", false, false},
		// anchored paths and their contents
		{[]string{"/var/cache"}, "/var/cache", true, true},
		{[]string{"/var/cache"}, "/var/cache/apt/x.deb", false, true},
		{[]string{"/var/cache"}, "/var/cached", true, false},
		{[]string{"/home/*/.cache"}, "/home/ann/.cache/thumbs", false, true},
		{[]string{"/home/*/.cache"}, "/home/ann/src/.cache", true, false},
		{[]string{"{*.tmp,*.bak}"}, "/x.bak", false, true},
		{[]string{"# comment", "", "  *.bak  "}, "/x.bak", false, true},
		{[]string{"/"}, "/anything", false, true},
	}
	for _, tt := range tests {
		m, err := New(tt.patterns)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Match(tt.path, tt.dir); got != tt.want {
			t.Errorf("%q Match(%q, dir=%v) = %v, want %v", tt.patterns, tt.path, tt.dir, got, tt.want)
		}
	}
	for _, bad := range []string{"[unclosed", "!", "a/[b"} {
		if _, err := New([]string{bad}); err == nil {
			t.Errorf("bad pattern %q accepted", bad)
		}
	}
}

func TestIgnoreCaseAndSelf(t *testing.T) {
	m := &Matcher{}
	if err := m.Add([]string{"*.JPG", "/Home/Ann/TMP"}, true); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{"/a/b.jpg": true, "/a/B.Jpg": true, "/home/ann/tmp/x": true, "/home/ann/tmpx": false} {
		if got := m.Match(p, false); got != want {
			t.Errorf("ignore case Match(%q) = %v, want %v", p, got, want)
		}
	}
	m, _ = New([]string{"node_modules"})
	if !m.MatchSelf("/src/node_modules", true) || m.MatchSelf("/src/node_modules/x.js", false) {
		t.Error("MatchSelf should match the named entry only")
	}
	if !m.Match("/src/node_modules/x.js", false) {
		t.Error("Match should match below a matching directory")
	}
}

func TestUnmatchable(t *testing.T) {
	m, err := New([]string{"/var/cache", "/home/*/.cache", "./build", "~/tmp", "*.tmp", "/srv/**/x", "/**/y", "!/opt/keep"})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(m.Unmatchable([]string{"/home/ann", "/srv"}), "\n")
	for _, want := range []string{`"/var/cache"`, `"./build"`, `"~/tmp"`, `"!/opt/keep"`} {
		if !strings.Contains(got, want) {
			t.Errorf("Unmatchable misses %s:\n%s", want, got)
		}
	}
	for _, fine := range []string{`"/home/*/.cache"`, `"*.tmp"`, `"/srv/**/x"`, `"/**/y"`} {
		if strings.Contains(got, fine) {
			t.Errorf("Unmatchable warns about %s:\n%s", fine, got)
		}
	}
	// a pattern naming a parent of a root selects the whole root
	m, _ = New([]string{"/home"})
	if w := m.Unmatchable([]string{"/home/ann"}); len(w) != 0 {
		t.Errorf("parent of a root: %v", w)
	}
}

func TestCacheTagAndReadFile(t *testing.T) {
	dir := t.TempDir()
	if HasCacheTag(dir) {
		t.Fatal("no tag, but HasCacheTag")
	}
	os.WriteFile(filepath.Join(dir, CacheTag), []byte("Signature: 8a477f597d28d172789f06886806bc55\n"), 0o644)
	if !HasCacheTag(dir) {
		t.Fatal("tag not recognised")
	}
	os.WriteFile(filepath.Join(dir, CacheTag), []byte("Signature: wrong"), 0o644)
	if HasCacheTag(dir) {
		t.Fatal("wrong signature accepted")
	}
	if !HasFile(dir, CacheTag, "") || HasFile(dir, "nothing", "") {
		t.Fatal("HasFile without header")
	}
	f := filepath.Join(dir, "ex")
	t.Setenv("FLOE_TEST_HOME", "/home/ann")
	os.WriteFile(f, []byte("*.tmp\n# c\n/var/cache\n$FLOE_TEST_HOME/.cache\n${FLOE_TEST_HOME}/x\nprice$$\n"), 0o644)
	pats, err := ReadFile(f)
	if err != nil || strings.Join(pats, "|") != "*.tmp|# c|/var/cache|/home/ann/.cache|/home/ann/x|price$" {
		t.Fatalf("ReadFile = %q, %v", pats, err)
	}
}

// FuzzMatch: any pattern and path give an answer or an error, never a panic.
func FuzzMatch(f *testing.F) {
	f.Add("foo/**/bar", "/dir1/foo/dir2/bar/file", true)
	f.Add("!/home/*/", "/home/ann", false)
	f.Add("{a,b}/[c-d]?", "/a/c1", true)
	f.Fuzz(func(t *testing.T, pattern, path string, ignoreCase bool) {
		m := &Matcher{}
		if err := m.Add([]string{pattern}, ignoreCase); err != nil {
			return
		}
		m.Match(path, true)
		m.MatchSelf(path, false)
		m.Unmatchable([]string{path, "/"})
	})
}
