package pathmatch

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		patterns []string
		path     string
		want     bool
	}{
		{nil, "/a/b", false},
		{[]string{"*.tmp"}, "/var/x.tmp", true},
		{[]string{"*.tmp"}, "/var/x.tmpl", false},
		{[]string{"node_modules"}, "/src/app/node_modules", true},
		{[]string{"/var/cache"}, "/var/cache", true},
		{[]string{"/var/cache"}, "/var/cache/apt/x.deb", true},
		{[]string{"/var/cache"}, "/var/cached", false},
		{[]string{"/home/*/.cache"}, "/home/ann/.cache/thumbs", true},
		{[]string{"/home/*/.cache"}, "/home/ann/src/.cache", false},
		{[]string{"*.log", "!keep.log"}, "/var/log/keep.log", false},
		{[]string{"*.log", "!keep.log"}, "/var/log/other.log", true},
		{[]string{"# comment", "", "  *.bak  "}, "/x.bak", true},
	}
	for _, tt := range tests {
		m, err := New(tt.patterns)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Match(tt.path); got != tt.want {
			t.Errorf("%q Match(%q) = %v, want %v", tt.patterns, tt.path, got, tt.want)
		}
	}
	if _, err := New([]string{"[unclosed"}); err == nil {
		t.Error("bad pattern accepted")
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
	f := filepath.Join(dir, "ex")
	os.WriteFile(f, []byte("*.tmp\n# c\n/var/cache\n"), 0o644)
	pats, err := ReadFile(f)
	if err != nil || len(pats) != 3 {
		t.Fatalf("ReadFile = %q, %v", pats, err)
	}
}
