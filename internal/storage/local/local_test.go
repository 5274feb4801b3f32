package local

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

func newRepo(t *testing.T) (*Backend, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	b, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	return b, dir
}

func TestConformance(t *testing.T) {
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		b, _ := newRepo(t)
		return b
	})
}

// snapshotTree records every path under root with its content.
func snapshotTree(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		v := "dir"
		if !d.IsDir() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v = string(data)
		}
		m[p] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCreateLayout(t *testing.T) {
	b, dir := newRepo(t)
	if b.Location() != dir {
		t.Errorf("Location %q, want %q", b.Location(), dir)
	}
	want := []string{"", "keys", "data", "index", "snapshots", "gc", "data/00", "data/7f", "data/ff"}
	for _, d := range want {
		fi, err := os.Stat(filepath.Join(dir, d))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v, want a directory with 0700", d, fi.Mode())
		}
	}
	entries, err := os.ReadDir(filepath.Join(dir, "data"))
	if err != nil || len(entries) != 256 {
		t.Errorf("data/ has %d entries, %v", len(entries), err)
	}
	if _, err := os.Stat(filepath.Join(dir, "config")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create wrote a config: %v", err)
	}
	// Without a config, Create may run again (a crashed init) and Open fails.
	if _, err := Create(dir); err != nil {
		t.Errorf("Create again without config: %v", err)
	}
	_, err = Open(dir)
	if !errors.Is(err, storage.ErrNotExist) || !strings.Contains(err.Error(), "no repository at "+dir) {
		t.Errorf("Open without config: %v", err)
	}
	if err := b.Save(context.Background(), storage.Handle{Type: storage.Config}, []byte("cfg")); err != nil {
		t.Fatal(err)
	}
	_, err = Create(dir)
	if !errors.Is(err, storage.ErrExist) {
		t.Errorf("Create over a repository: %v, want ErrExist", err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, "config")); string(data) != "cfg" {
		t.Errorf("config changed: %q", data)
	}
	ob, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	data, err := ob.Load(context.Background(), storage.Handle{Type: storage.Config}, 0, 0)
	if err != nil || string(data) != "cfg" {
		t.Errorf("Load config through Open: %q, %v", data, err)
	}
	// A relative path works and is reported absolute.
	t.Chdir(filepath.Dir(dir))
	rb, err := Open("repo")
	if err != nil || rb.Location() != dir {
		t.Errorf("Open relative: %v, %v", rb, err)
	}
}

func TestOpenMissing(t *testing.T) {
	tmp := t.TempDir()
	missing := filepath.Join(tmp, "nothing")
	_, err := Open(missing)
	if !errors.Is(err, storage.ErrNotExist) || !strings.Contains(err.Error(), "no repository at "+missing) {
		t.Errorf("Open missing dir: %v", err)
	}
	file := filepath.Join(tmp, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(file); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Open a file: %v", err)
	}
	if _, err := Create(file); err == nil {
		t.Errorf("Create over a file: no error")
	}
}

func TestFilesAndPaths(t *testing.T) {
	b, dir := newRepo(t)
	ctx := context.Background()
	name := storagetest.Name("pack")
	cases := map[storage.Handle]string{
		{Type: storage.Pack, Name: name}:     "data/" + name[:2] + "/" + name,
		{Type: storage.Index, Name: name}:    "index/" + name,
		{Type: storage.Snapshot, Name: name}: "snapshots/" + name,
		{Type: storage.GCMark, Name: name}:   "gc/" + name,
		{Type: storage.Key, Name: name}:      "keys/" + name,
		{Type: storage.Config}:               "config",
	}
	for h, rel := range cases {
		if err := b.Save(ctx, h, []byte(rel)); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, rel)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s not at %s: %v", h, rel, err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600", rel, fi.Mode())
		}
		if data, _ := os.ReadFile(p); string(data) != rel {
			t.Errorf("%s: content %q", rel, data)
		}
	}
	// No temporary files remain.
	for p := range snapshotTree(t, dir) {
		if strings.HasPrefix(filepath.Base(p), TempPrefix) {
			t.Errorf("temporary file left: %s", p)
		}
	}
}

func TestListSkipsStrays(t *testing.T) {
	b, dir := newRepo(t)
	ctx := context.Background()
	good := storagetest.Name("good")
	if err := b.Save(ctx, storage.Handle{Type: storage.Pack, Name: good}, []byte("x")); err != nil {
		t.Fatal(err)
	}
	other := storagetest.Name("other")
	if other[:2] == good[:2] {
		t.Fatal("pick another name")
	}
	strays := []string{
		"data/" + good[:2] + "/" + TempPrefix + "123",
		"data/" + good[:2] + "/README",
		"data/" + good[:2] + "/" + other, // wrong subdirectory
		"data/" + other,                  // not in a subdirectory
		"data/zz/" + "zz" + other[2:],
		"index/" + TempPrefix + good,
		"index/" + strings.ToUpper(good),
	}
	for _, s := range strays {
		p := filepath.Join(dir, s)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("stray"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "index", other), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, ft := range storage.AllTypes {
		var names []string
		err := b.List(ctx, ft, func(fi storage.FileInfo) error {
			names = append(names, fi.Name)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		if ft == storage.Pack {
			want = 1
		}
		if len(names) != want || (want == 1 && names[0] != good) {
			t.Errorf("List %s: %q", ft, names)
		}
	}
	// A missing type directory lists nothing and Save recreates it.
	if err := os.RemoveAll(filepath.Join(dir, "gc")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "data", other[:2])); err != nil {
		t.Fatal(err)
	}
	if err := b.List(ctx, storage.GCMark, func(storage.FileInfo) error { return errors.New("called") }); err != nil {
		t.Errorf("List of missing directory: %v", err)
	}
	for _, h := range []storage.Handle{{Type: storage.GCMark, Name: good}, {Type: storage.Pack, Name: other}} {
		if err := b.Save(ctx, h, []byte("y")); err != nil {
			t.Errorf("Save into missing directory: %v", err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "gc"))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("recreated gc/: %v, %v", fi, err)
	}
}

func TestHostileNamesStayInside(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "repo")
	b, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Files a naive join would reach.
	valid := storagetest.Name("valid")
	outside := []string{filepath.Join(tmp, "x"), filepath.Join(tmp, "config"), filepath.Join(tmp, valid[:43])}
	for _, p := range outside {
		if err := os.WriteFile(p, []byte("outside"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Save(ctx, storage.Handle{Type: storage.Config}, []byte("cfg")); err != nil {
		t.Fatal(err)
	}
	before := snapshotTree(t, tmp)
	for _, h := range storagetest.HostileHandles() {
		_ = b.Save(ctx, h, []byte("hostile"))
		_, _ = b.Load(ctx, h, 0, 0)
		_, _ = b.Stat(ctx, h)
		_ = b.Remove(ctx, h)
	}
	after := snapshotTree(t, tmp)
	if len(before) != len(after) {
		t.Errorf("hostile names changed the tree: %d paths before, %d after", len(before), len(after))
	}
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed: %q -> %q", p, v, after[p])
		}
	}
}

func TestLeftoverTempFiles(t *testing.T) {
	b, dir := newRepo(t)
	old := time.Now().Add(-2 * time.Hour)
	var want []string
	for i, rel := range []string{
		TempPrefix + "1", "keys/" + TempPrefix + "2", "data/ab/" + TempPrefix + "3",
		"index/" + TempPrefix + "4", "snapshots/" + TempPrefix + "5", "gc/" + TempPrefix + "6",
		"data/00/" + TempPrefix + "new", "index/" + TempPrefix + "new", "index/old-but-not-temp",
	} {
		p := filepath.Join(dir, rel)
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(rel, "new") {
			continue
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
		if i < 6 {
			want = append(want, p)
		}
	}
	got, err := b.LeftoverTempFiles()
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("LeftoverTempFiles:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDiskFull(t *testing.T) {
	b, dir := newRepo(t)
	ctx := context.Background()
	b.write = func(f *os.File, data []byte) error {
		if _, err := f.Write(data[:len(data)/2]); err != nil {
			return err
		}
		return &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("full")}
	err := b.Save(ctx, h, make([]byte, 100000))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Save on a full disk: %v, want ENOSPC", err)
	}
	if !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), h.String()) {
		t.Errorf("unclear error: %v", err)
	}
	if _, err := b.Stat(ctx, h); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat after failed Save: %v, want ErrNotExist", err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "data", h.Name[:2]))
	if err != nil || len(entries) != 0 {
		t.Errorf("files left after failed Save: %v, %v", entries, err)
	}
	// Once space is back, the same object saves.
	b.write = nil
	if err := b.Save(ctx, h, []byte("ok")); err != nil {
		t.Errorf("Save after disk full: %v", err)
	}
}

func TestLinkNoReplace(t *testing.T) {
	dir := t.TempDir()
	a, c := filepath.Join(dir, ".tmp-a"), filepath.Join(dir, "c")
	for _, p := range []string{a, c} {
		if err := os.WriteFile(p, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := linkNoReplace(a, c); !errors.Is(err, fs.ErrExist) {
		t.Errorf("linkNoReplace over existing: %v, want ErrExist", err)
	}
	if err := renameNoReplace(a, c); !errors.Is(err, fs.ErrExist) {
		t.Errorf("renameNoReplace over existing: %v, want ErrExist", err)
	}
	if data, _ := os.ReadFile(c); string(data) != c {
		t.Errorf("target overwritten: %q", data)
	}
	d := filepath.Join(dir, "d")
	if err := linkNoReplace(a, d); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("source kept after link: %v", err)
	}
	if data, _ := os.ReadFile(d); string(data) != a {
		t.Errorf("linked content %q", data)
	}
}

func TestRemoveTempFiles(t *testing.T) {
	b, dir := newRepo(t)
	old := time.Now().Add(-2 * time.Hour)
	oldFile := filepath.Join(dir, "data", TempPrefix+"killed")
	newFile := filepath.Join(dir, "data", TempPrefix+"filling")
	object := filepath.Join(dir, "index", "not-temp")
	for _, p := range []string{oldFile, newFile, object} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
		if p != newFile {
			os.Chtimes(p, old, old)
		}
	}
	n, size, err := b.RemoveTempFiles(time.Hour)
	if err != nil || n != 1 || size != int64(len("partial")) {
		t.Fatalf("RemoveTempFiles(1h) = %d, %d, %v; want 1 file", n, size, err)
	}
	for p, want := range map[string]bool{oldFile: false, newFile: true, object: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists=%v, want %v", p, err == nil, want)
		}
	}
	// age 0 (prune --grace 0): every temporary file goes
	if n, _, _ := b.RemoveTempFiles(0); n != 1 {
		t.Errorf("RemoveTempFiles(0) removed %d, want the 1 left", n)
	}
}
