package backup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

// Options.SourceRoot: the snapshot records the original paths, while the
// contents (and metadata) come from the mapped directories, including a
// nested mapping; excludes and the progress scan use the original paths.
func TestSourceRoot(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	live := filepath.Join(base, "live")
	frozen := filepath.Join(base, "frozen")
	nested := filepath.Join(base, "nested-frozen")
	write := func(p, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// the live tree differs from the frozen views
	write(filepath.Join(live, "a.txt"), "live a")
	write(filepath.Join(live, "only-live"), "x")
	write(filepath.Join(live, "home", "h.txt"), "live h")
	write(filepath.Join(frozen, "a.txt"), "frozen a")
	write(filepath.Join(frozen, "sub", "b.txt"), "frozen b")
	write(filepath.Join(frozen, "skip.tmp"), "excluded")
	write(filepath.Join(frozen, "sub", "skipdir", "x"), "excluded")
	os.Mkdir(filepath.Join(frozen, "home"), 0o755) // a mount point in the frozen view
	write(filepath.Join(nested, "h.txt"), "nested h")
	os.Symlink("a.txt", filepath.Join(frozen, "link"))

	r := newRepo(t)
	p := &ui.Meter{}
	res, err := Run(ctx, r, Options{
		Paths:      []string{live},
		Excludes:   []string{"*.tmp", live + "/sub/skipdir"},
		SourceRoot: map[string]string{live: frozen, live + "/home": nested},
		Frozen:     true,
		Progress:   p,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) > 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	sn := res.Snapshot
	if len(sn.Paths) != 1 || sn.Paths[0] != live || !sn.Consistency.Frozen {
		t.Fatalf("paths %v, frozen %v; want [%s], frozen", sn.Paths, sn.Consistency.Frozen, live)
	}
	files := map[string]string{}
	var homeIno uint64
	var walk func(dir string, id hash.Ref)
	walk = func(dir string, id hash.Ref) {
		tree, err := snapshot.LoadTree(ctx, r, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range tree.Nodes {
			p := filepath.Join(dir, n.Name)
			switch n.Type {
			case snapshot.TypeDir:
				if p == live+"/home" {
					homeIno = n.Inode
				}
				walk(p, n.Subtree)
			case snapshot.TypeFile:
				var data []byte
				for _, c := range n.Content {
					b, err := r.LoadBlob(ctx, repo.DataBlob, c, nil)
					if err != nil {
						t.Fatal(err)
					}
					data = append(data, b...)
				}
				files[p] = string(data)
			case snapshot.TypeSymlink:
				files[p] = "-> " + n.LinkTarget
			}
		}
	}
	walk("/", sn.Tree)
	// the mapped directory's own metadata comes from where it is read
	if st, err := os.Stat(nested); err != nil || homeIno != st.Sys().(*syscall.Stat_t).Ino {
		t.Errorf("home: inode %d, want that of %s (%v)", homeIno, nested, err)
	}
	want := map[string]string{
		live + "/a.txt":      "frozen a",
		live + "/sub/b.txt":  "frozen b",
		live + "/home/h.txt": "nested h",
		live + "/link":       "-> a.txt",
	}
	if len(files) != len(want) {
		t.Errorf("snapshot files %v, want %v", files, want)
	}
	for k, v := range want {
		if files[k] != v {
			t.Errorf("%s = %q, want %q (all: %v)", k, files[k], v, files)
		}
	}
	if _, _, _, got, _, _ := p.Current(); got != 3 {
		t.Errorf("scan counted %d files, want 3", got)
	}

	// a mapped directory that cannot be read is reported by its original path
	gone := filepath.Join(base, "gone")
	res, err = Run(ctx, r, Options{Paths: []string{live}, SourceRoot: map[string]string{live: frozen, live + "/home": gone}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || res.Errors[0].Path != live+"/home" || strings.Contains(res.Errors[0].Error(), gone) ||
		!strings.Contains(res.Errors[0].Error(), live+"/home") {
		t.Fatalf("errors %v: want one about %s/home that does not name %s", res.Errors, live, gone)
	}
}

// Errors about files read from a mapped location name the original path.
func TestSourceRootErrorsNameOriginalPaths(t *testing.T) {
	orig, src := "/srv/data", "/tmp/floe-snap-1/data"
	err := origErr(&os.PathError{Op: "open", Path: src + "/x/y", Err: os.ErrPermission}, orig+"/x/y", src+"/x/y")
	var pe *os.PathError
	if !errors.As(err, &pe) || pe.Path != orig+"/x/y" || !errors.Is(err, os.ErrPermission) {
		t.Fatalf("got %v", err)
	}
	err = origErr(errors.New("read "+src+": input/output error"), orig, src)
	if err.Error() != "read "+orig+": input/output error" {
		t.Fatalf("got %v", err)
	}
	if e := errors.New("other"); origErr(e, orig, src) != e {
		t.Fatal("an error without the path changed")
	}
	for _, c := range []struct{ p, from, to, want string }{
		{"/a/b", "/a", "/s", "/s/b"},
		{"/a", "/a", "/s", "/s"},
		{"/x", "/", "/s", "/s/x"},
		{"/a/b", "/a", "/", "/b"},
	} {
		if got := pathmatch.Rebase(c.p, c.from, c.to); got != c.want {
			t.Errorf("rebase(%s, %s, %s) = %s, want %s", c.p, c.from, c.to, got, c.want)
		}
	}
	if _, err := sourceMappings(map[string]string{"rel": "/x"}); err == nil {
		t.Error("a relative source root key was accepted")
	}
}

// A path given through a symlinked directory is saved with everything
// below it; the symlinked component becomes the directory it leads to.
func TestPathThroughSymlinkedDirectory(t *testing.T) {
	ctx := context.Background()
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.MkdirAll(filepath.Join(real, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(real, "data", "f"), []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	r := newRepo(t)
	res, err := Run(ctx, r, Options{Paths: []string{filepath.Join(base, "link", "data")}})
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Snapshot.Summary; s.FilesNew != 1 || s.TotalBytes != 7 {
		t.Fatalf("%d files, %d bytes saved; want the one file below the symlinked directory", s.FilesNew, s.TotalBytes)
	}
}
