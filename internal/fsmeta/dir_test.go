//go:build linux

package fsmeta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

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

// Dir.OpenFile describes a regular file as Dir.Node does (extended
// attributes included, read through the descriptor) and leaves it open at
// its start; anything else is refused with nothing left open.
func TestDirOpenFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "file")
	os.WriteFile(p, []byte("content"), 0o640)
	setXattr(t, p, "user.b", []byte("2"))
	setXattr(t, p, "user.a", []byte(strings.Repeat("v", 1000))) // more than the first buffer
	unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600)
	os.Symlink("file", filepath.Join(dir, "link"))
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	f, got, err := d.OpenFile("file", p, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want, err := d.Node("file", p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("OpenFile %+v\nNode     %+v", got, want)
	}
	if len(got.Xattrs) != 2 || got.Xattrs[0].Name != "user.a" || len(got.Xattrs[0].Value) != 1000 {
		t.Errorf("xattrs %q", got.Xattrs)
	}
	if b, err := io.ReadAll(f); err != nil || string(b) != "content" {
		t.Errorf("read %q, %v", b, err)
	}
	x := []snapshot.Xattr{{Name: "user.k", Value: []byte("v")}}
	f2, n, err := d.OpenFile("file", p, func(*snapshot.Node) ([]snapshot.Xattr, bool) { return x, true })
	if err != nil || !reflect.DeepEqual(n.Xattrs, x) {
		t.Errorf("known xattrs: %v, %v", n, err)
	}
	f2.Close()

	fds := openFDs(t)
	// a FIFO put where the listing saw a file must neither block nor be
	// read; a symlink is not followed
	for _, name := range []string{"fifo", "link", "sub", "missing"} {
		if f, n, err := d.OpenFile(name, filepath.Join(dir, name), nil); err == nil {
			f.Close()
			t.Errorf("%s: opened as %+v", name, n)
		} else if !strings.Contains(err.Error(), filepath.Join(dir, name)) {
			t.Errorf("%s: error without the path: %v", name, err)
		}
	}
	if _, _, err := d.OpenFile("fifo", "fifo", nil); !errors.Is(err, ErrNotRegular) {
		t.Errorf("fifo: %v, want ErrNotRegular", err)
	}
	if after := openFDs(t); after != fds {
		t.Errorf("%d descriptors open after the refusals, %d before", after, fds)
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip(err)
	}
	return len(ents)
}

// A File opened with O_NONBLOCK (as Dir.OpenFile opens) that says EAGAIN
// is made blocking and read again: a pipe stands in for the special files
// that say they are regular but honour O_NONBLOCK.
func TestFileReadClearsNonblock(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	f := &File{fd: p[0], path: "pipe", nonblock: true}
	defer f.Close()
	go func() {
		time.Sleep(50 * time.Millisecond)
		unix.Write(p[1], []byte("late"))
	}()
	buf := make([]byte, 8)
	n, err := f.Read(buf)
	if err != nil || string(buf[:n]) != "late" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if f.nonblock {
		t.Errorf("still non-blocking")
	}
}

// A listing of names longer than the first buffer (256 bytes) is read
// whole, by path (Dir.Node) and through the descriptor (Dir.OpenFile).
func TestXattrListingLargerThanBuffer(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, nil, 0o600)
	var want []string
	for i := 0; i < 20; i++ { // 20 names of 30 bytes: 600 bytes
		name := fmt.Sprintf("user.%025d", i)
		setXattr(t, p, name, []byte{byte(i)})
		want = append(want, name)
	}
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	byPath, err := d.Node("f", p, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, byFD, err := d.OpenFile("f", p, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, n := range []*snapshot.Node{byPath, byFD} {
		var got []string
		for _, x := range n.Xattrs {
			if strings.HasPrefix(x.Name, "user.") {
				got = append(got, x.Name)
				if i := len(got) - 1; len(x.Value) != 1 || int(x.Value[0]) != i {
					t.Errorf("%s = %v", x.Name, x.Value)
				}
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("xattrs %q, want %q", got, want)
		}
	}
}
