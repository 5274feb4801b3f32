//go:build linux

package fsmeta

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/snapshot"
)

// Dir lists every entry in name order with its type and describes each as
// NodeFromPath does; known's xattrs replace the listing when it says so.
func TestDirNodeLikeNodeFromPath(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "b-file"), []byte("content"), 0o640)
	os.Mkdir(filepath.Join(dir, "a-dir"), 0o755)
	os.Symlink(strings.Repeat("t", 300), filepath.Join(dir, "c-link")) // longer than the first readlink buffer
	unix.Mkfifo(filepath.Join(dir, "d-fifo"), 0o600)
	for i := 0; i < 3000; i++ { // more than one getdents64 call
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("z%0*d", i%40+1, i)), nil, 0o644)
	}
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ents, err := d.Entries()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadDir(dir)
	if len(ents) != len(want) {
		t.Fatalf("%d entries, want %d", len(ents), len(want))
	}
	for i, e := range ents {
		if e.Name != want[i].Name() || e.IsDir() != want[i].IsDir() || !e.TypeKnown() {
			t.Fatalf("entry %d: %+v, want %s (dir %v)", i, e, want[i].Name(), want[i].IsDir())
		}
	}
	for _, name := range []string{"a-dir", "b-file", "c-link", "d-fifo"} {
		p := filepath.Join(dir, name)
		got, err := d.Node(name, p, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantN, err := NodeFromPath(p, name)
		if err != nil {
			t.Fatal(err)
		}
		// reading a symlink's target (both do) may update its atime
		wantN.AccessTime = got.AccessTime
		if !reflect.DeepEqual(got, wantN) {
			t.Errorf("%s: Dir.Node %+v, NodeFromPath %+v", name, got, wantN)
		}
	}
	x := []snapshot.Xattr{{Name: "user.k", Value: []byte("v")}}
	n, err := d.Node("b-file", filepath.Join(dir, "b-file"), func(n *snapshot.Node) ([]snapshot.Xattr, bool) { return x, n.Name == "b-file" })
	if err != nil || !reflect.DeepEqual(n.Xattrs, x) {
		t.Errorf("known xattrs: %v, %v", n.Xattrs, err)
	}
	if _, err := d.Node("missing", filepath.Join(dir, "missing"), nil); !os.IsNotExist(err) || !strings.Contains(err.Error(), filepath.Join(dir, "missing")) {
		t.Errorf("missing entry: %v", err)
	}
	if _, err := OpenDir(filepath.Join(dir, "c-link")); err == nil {
		t.Errorf("OpenDir followed a symlink")
	}
}

// A File reads like an os.File, and its Stat and ReadAt see the same file.
func TestFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("hello, world"), 0o644)
	f, err := OpenFile(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil || string(b) != "hello, world" {
		t.Fatalf("read %q, %v", b, err)
	}
	var st unix.Stat_t
	if err := f.Stat(&st); err != nil || st.Size != 12 {
		t.Fatalf("stat: size %d, %v", st.Size, err)
	}
	buf := make([]byte, 5)
	if n, err := f.ReadAt(buf, 7); n != 5 || err != nil || string(buf) != "world" {
		t.Errorf("ReadAt: %d %q %v", n, buf, err)
	}
	if err := f.Rewind(); err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(f); string(b) != "hello, world" {
		t.Errorf("after Rewind: %q", b)
	}
	os.Symlink(p, p+".link")
	if _, err := OpenFile(p + ".link"); err == nil {
		t.Errorf("OpenFile followed a symlink")
	}
}

// parseDirents never reads outside its buffer, whatever the bytes.
func FuzzParseDirents(f *testing.F) {
	rec := make([]byte, 24)
	binary.LittleEndian.PutUint16(rec[16:], 24)
	rec[18] = unix.DT_REG
	copy(rec[19:], "name\x00")
	f.Add(rec)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, e := range parseDirents(b, nil) {
			if e.Name == "" || strings.ContainsRune(e.Name, 0) {
				t.Fatalf("bad name %q", e.Name)
			}
		}
	})
}
