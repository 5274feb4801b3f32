//go:build linux

package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Two trees built alike compare equal, and DiffTrees notices each kind of
// difference a broken restore could make.
func TestDiffTrees(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	a, b := filepath.Join(base, "a"), filepath.Join(base, "b")
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	info := BuildTrickyTree(t, a, TreeOptions{DeepLevels: 10})
	BuildTrickyTree(t, b, TreeOptions{DeepLevels: 10})
	t.Logf("skipped: %q", info.Skipped)
	if diffs, err := DiffTrees(a, b, CompareOptions{}); err != nil || len(diffs) > 0 {
		t.Fatalf("two builds differ: %v %q", err, diffs)
	}

	p := func(rel string) string { return filepath.Join(b, rel) }
	mutations := []struct {
		name, want string
		mutate     func() error
	}{
		{"mode", `"modes/setuid": mode 0755, want 04755`, func() error { return unix.Chmod(p("modes/setuid"), 0o755) }},
		{"mtime ns", `"files/one": mtime`, func() error {
			var st unix.Stat_t
			unix.Lstat(p("files/one"), &st)
			tm := time.Unix(st.Mtim.Sec, st.Mtim.Nsec+1)
			return os.Chtimes(p("files/one"), tm, tm)
		}},
		{"content", `"files/random-5MiB": content differs at offset 3000000`, func() error {
			f, err := os.OpenFile(p("files/random-5MiB"), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			var st unix.Stat_t
			unix.Lstat(p("files/random-5MiB"), &st)
			buf := make([]byte, 1)
			g, _ := os.Open(p("files/random-5MiB"))
			g.ReadAt(buf, 3000000)
			g.Close()
			buf[0] ^= 1
			if _, err := f.WriteAt(buf, 3000000); err != nil {
				return err
			}
			return unix.UtimesNano(p("files/random-5MiB"), []unix.Timespec{st.Atim, st.Mtim})
		}},
		{"data in a hole", `"sparse/small": content differs at offset 15728640 (a hole in the original)`, func() error {
			f, err := os.OpenFile(p("sparse/small"), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte{0, 0, 7}, 15<<20-2)
			return err
		}},
		{"sparseness", `"sparse/allhole": not sparse`, func() error {
			return os.WriteFile(p("sparse/allhole"), make([]byte, 8<<20), 0)
		}},
		{"symlink target", `"symlinks/relative": symlink target "../files/empty", want "../files/one"`, func() error {
			os.Remove(p("symlinks/relative"))
			return os.Symlink("../files/empty", p("symlinks/relative"))
		}},
		{"hard link broken", `"hardlinks/b/third": shares its inode with no other name`, func() error {
			os.Remove(p("hardlinks/b/third"))
			data, _ := os.ReadFile(p("hardlinks/first"))
			return os.WriteFile(p("hardlinks/b/third"), data, 0o640)
		}},
		{"missing", `"empty/outer/inner": missing`, func() error { return os.Remove(p("empty/outer/inner")) }},
		{"extra", `"names/new": extra`, func() error { return os.WriteFile(p("names/new"), nil, 0o644) }},
		{"type", `"special/fifo": type file, want fifo`, func() error {
			os.Remove(p("special/fifo"))
			return os.WriteFile(p("special/fifo"), nil, 0o640)
		}},
	}
	if XattrsSupported(b) {
		mutations = append(mutations, struct {
			name, want string
			mutate     func() error
		}{"xattr", `"xattrs/file": xattrs`, func() error { return unix.Lremovexattr(p("xattrs/file"), "user.binary") }})
	}
	if os.Geteuid() == 0 {
		mutations = append(mutations, struct {
			name, want string
			mutate     func() error
		}{"owner", `"owners/foreign": owner 0:0, want 12345:54321`, func() error { return os.Lchown(p("owners/foreign"), 0, 0) }})
	}
	for _, m := range mutations {
		if err := m.mutate(); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		diffs, err := DiffTrees(a, b, CompareOptions{})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, d := range diffs {
			if strings.HasPrefix(d, m.want) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no difference starting with %s in %q", m.name, m.want, diffs)
		}
	}
}

func TestManifest(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ManyFiles(t, dir, 150, 1000, 1)
	m := Manifest(t, dir)
	if len(m) != 150 {
		t.Fatalf("manifest has %d files, want 150", len(m))
	}
	if m["d1/f100"] == m["d1/f101"] {
		t.Error("ManyFiles made two equal files")
	}
}
