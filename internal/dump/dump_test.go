package dump_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/dump"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
	wt "github.com/floe-backup/floe/internal/walk/walktest"
)

type blobs struct {
	mu sync.Mutex
	m  map[hash.Ref][]byte
}

func (b *blobs) add(data string) hash.Ref {
	id := hash.Ref{ID: hash.Sum([]byte(data)), Key: hash.Sum([]byte("key" + data))}
	b.mu.Lock()
	b.m[id] = []byte(data)
	b.mu.Unlock()
	return id
}

func (b *blobs) LoadBlob(ctx context.Context, t repo.BlobType, ref hash.Ref, buf []byte) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d, ok := b.m[ref]
	if !ok || t != repo.DataBlob {
		return nil, fmt.Errorf("blob %s: %w", ref.Short(), repo.ErrBlobNotFound)
	}
	return append(buf[:0], d...), nil
}

type fixture struct {
	trees *wt.Trees
	blobs *blobs
	root  hash.Ref
	mtime time.Time
	atime time.Time
}

var longName = strings.Repeat("long-name-", 30) // 300 bytes

func newFixture() *fixture {
	f := &fixture{trees: wt.New(), blobs: &blobs{m: map[hash.Ref][]byte{}},
		mtime: time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC),
		atime: time.Date(2026, 1, 3, 3, 4, 5, 987654321, time.UTC)}
	var parts []hash.Ref
	var content string
	for i := 0; i < 10; i++ { // several blobs: exercises the prefetch
		s := fmt.Sprintf("part %d of the password file\n", i)
		parts = append(parts, f.blobs.add(s))
		content += s
	}
	passwd := wt.File("passwd", uint64(len(content)), parts...)
	passwd.UID, passwd.GID, passwd.User, passwd.Group = 0, 42, "root", "shadow"
	passwd.ModTime, passwd.AccessTime = f.mtime, f.atime
	passwd.Xattrs = []snapshot.Xattr{{Name: "security.selinux", Value: []byte("system_u:object_r:passwd_file_t:s0\x00")},
		{Name: "user.a=b", Value: []byte("x")}}
	hl1 := wt.File("hard1", 3, f.blobs.add("abc"))
	hl1.Device, hl1.Inode, hl1.Links = 1, 99, 2
	hl2 := *hl1
	hl2.Name = "hard2"
	fifo := &snapshot.Node{Name: "fifo", Type: snapshot.TypeFIFO, Mode: 0o600, ModTime: f.mtime}
	cdev := &snapshot.Node{Name: "null", Type: snapshot.TypeCharDev, Mode: 0o666, ModTime: f.mtime, Rdev: unix.Mkdev(1, 3)}
	bdev := &snapshot.Node{Name: "sda", Type: snapshot.TypeBlockDev, Mode: 0o660, ModTime: f.mtime, Rdev: unix.Mkdev(8, 0)}
	sock := &snapshot.Node{Name: "sock", Type: snapshot.TypeSocket, Mode: 0o777, ModTime: f.mtime}
	setuid := wt.File("su", 0)
	setuid.Mode = 0o4755
	empty := f.trees.Add()
	etc := f.trees.Add(passwd, hl1, &hl2, fifo, cdev, bdev, sock, setuid, wt.Symlink("mtab", "/proc/mounts"),
		wt.File(longName, 0), wt.File("bad\xffname", 0), wt.Dir("empty", empty))
	f.root = f.trees.Add(wt.Dir("etc", etc), wt.File("vmlinuz", 0))
	return f
}

type entry struct {
	hdr  *tar.Header
	data string
}

func readTar(t *testing.T, b []byte) map[string]entry {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	out := map[string]entry{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := out[h.Name]; dup {
			t.Fatalf("duplicate entry %q", h.Name)
		}
		out[h.Name] = entry{h, string(data)}
	}
}

func TestTarRoundTrip(t *testing.T) {
	f := newFixture()
	ctx := context.Background()
	p, node, err := walk.Resolve(ctx, f.trees, f.root, "/etc")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	res, err := dump.Tar(ctx, f.blobs, f.trees, p, node, &buf)
	if err != nil {
		t.Fatal(err)
	}
	got := readTar(t, buf.Bytes())
	for name := range got {
		if strings.HasPrefix(name, "/") || strings.Contains("/"+name+"/", "/../") || !strings.HasPrefix(name, "etc/") {
			t.Errorf("bad name %q", name)
		}
	}
	want := []string{"etc/", "etc/passwd", "etc/hard1", "etc/hard2", "etc/fifo", "etc/null", "etc/sda", "etc/su",
		"etc/mtab", "etc/" + longName, "etc/bad\xffname", "etc/empty/"}
	if len(got) != len(want) {
		t.Errorf("%d entries, want %d: %q", len(got), len(want), keys(got))
	}
	for _, w := range want {
		if _, ok := got[w]; !ok {
			t.Errorf("missing %q", w)
		}
	}

	pw := got["etc/passwd"]
	if pw.hdr.Typeflag != tar.TypeReg || !strings.HasPrefix(pw.data, "part 0 of") || !strings.HasSuffix(pw.data, "part 9 of the password file\n") {
		t.Errorf("passwd: %+v %q", pw.hdr, pw.data)
	}
	if pw.hdr.Uid != 0 || pw.hdr.Gid != 42 || pw.hdr.Uname != "root" || pw.hdr.Gname != "shadow" || pw.hdr.Mode != 0o644 {
		t.Errorf("passwd owner/mode: %+v", pw.hdr)
	}
	if !pw.hdr.ModTime.Equal(f.mtime) || !pw.hdr.AccessTime.Equal(f.atime) {
		t.Errorf("passwd times %v %v, want %v %v", pw.hdr.ModTime, pw.hdr.AccessTime, f.mtime, f.atime)
	}
	if v, ok := pw.hdr.PAXRecords["SCHILY.xattr.security.selinux"]; !ok || v != "system_u:object_r:passwd_file_t:s0\x00" {
		t.Errorf("xattr record: %q %v (records %q)", v, ok, pw.hdr.PAXRecords)
	}
	if h := got["etc/hard1"].hdr; h.Typeflag != tar.TypeReg || got["etc/hard1"].data != "abc" {
		t.Errorf("hard1: %+v", h)
	}
	if h := got["etc/hard2"].hdr; h.Typeflag != tar.TypeLink || h.Linkname != "etc/hard1" || h.Size != 0 {
		t.Errorf("hard2: %+v", h)
	}
	if h := got["etc/fifo"].hdr; h.Typeflag != tar.TypeFifo {
		t.Errorf("fifo: %+v", h)
	}
	if h := got["etc/null"].hdr; h.Typeflag != tar.TypeChar || h.Devmajor != 1 || h.Devminor != 3 {
		t.Errorf("null: %+v", h)
	}
	if h := got["etc/sda"].hdr; h.Typeflag != tar.TypeBlock || h.Devmajor != 8 || h.Devminor != 0 {
		t.Errorf("sda: %+v", h)
	}
	if h := got["etc/su"].hdr; h.Mode != 0o4755 {
		t.Errorf("setuid mode %o", h.Mode)
	}
	if h := got["etc/mtab"].hdr; h.Typeflag != tar.TypeSymlink || h.Linkname != "/proc/mounts" {
		t.Errorf("mtab: %+v", h)
	}
	if h := got["etc/bad\xffname"].hdr; h.PAXRecords["path"] != "etc/bad\xffname" {
		t.Errorf("non-UTF-8 name: %q", h.PAXRecords)
	}
	if h := got["etc/"+longName].hdr; h.PAXRecords["path"] != "etc/"+longName {
		t.Errorf("long name: %q", h.PAXRecords)
	}
	if h := got["etc/"].hdr; h.Typeflag != tar.TypeDir || h.Mode != 0o755 {
		t.Errorf("etc/: %+v", h)
	}
	if res.Files != 5 || res.Links != 1 || res.Dirs != 2 || res.Others != 4 || res.Bytes != uint64(len(pw.data)+3) {
		t.Errorf("result %+v", res)
	}
	if len(res.Skipped) != 2 || !strings.Contains(res.Skipped[0], "xattr") || !strings.Contains(res.Skipped[1], "/etc/sock") {
		t.Errorf("skipped %q", res.Skipped)
	}
}

func keys(m map[string]entry) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestTarRootAndSingle(t *testing.T) {
	f := newFixture()
	ctx := context.Background()
	var buf bytes.Buffer
	if _, err := dump.Tar(ctx, f.blobs, f.trees, "/", walk.Root(f.root), &buf); err != nil {
		t.Fatal(err)
	}
	got := readTar(t, buf.Bytes())
	if _, ok := got["etc/"]; !ok {
		t.Fatalf("root dump lacks etc/: %q", keys(got))
	}
	if _, ok := got["vmlinuz"]; !ok {
		t.Fatalf("root dump lacks vmlinuz: %q", keys(got))
	}
	for k := range got {
		if k == "/" || k == "./" || k == "" {
			t.Fatalf("root entry %q", k)
		}
	}

	p, n, _ := walk.Resolve(ctx, f.trees, f.root, "/etc/mtab")
	buf.Reset()
	if _, err := dump.Tar(ctx, f.blobs, f.trees, p, n, &buf); err != nil {
		t.Fatal(err)
	}
	got = readTar(t, buf.Bytes())
	if len(got) != 1 || got["mtab"].hdr == nil {
		t.Fatalf("single entry: %q", keys(got))
	}
}

func TestFile(t *testing.T) {
	f := newFixture()
	ctx := context.Background()
	_, n, _ := walk.Resolve(ctx, f.trees, f.root, "/etc/passwd")
	var buf bytes.Buffer
	written, err := dump.File(ctx, f.blobs, n, &buf)
	if err != nil || written != n.Size || uint64(buf.Len()) != n.Size || !strings.HasPrefix(buf.String(), "part 0") {
		t.Fatalf("File: %d %v %q", written, err, buf.String())
	}
	// a missing blob is an error, and so is a size that does not match
	bad := *n
	bad.Content = append(bad.Content[:3:3], wt.ID("missing"))
	if _, err := dump.File(ctx, f.blobs, &bad, io.Discard); !errors.Is(err, repo.ErrBlobNotFound) {
		t.Fatalf("missing blob: %v", err)
	}
	bad = *n
	bad.Size++
	if _, err := dump.File(ctx, f.blobs, &bad, io.Discard); err == nil || !strings.Contains(err.Error(), "snapshot says") {
		t.Fatalf("wrong size: %v", err)
	}
	// in a tar, a wrong size is an error too
	etc := f.trees.Add(&bad)
	var tb bytes.Buffer
	if _, err := dump.Tar(ctx, f.blobs, f.trees, "/etc", wt.Dir("etc", etc), &tb); err == nil {
		t.Fatal("tar with short content succeeded")
	}
	dir := wt.Dir("d", etc)
	if _, err := dump.File(ctx, f.blobs, dir, io.Discard); err == nil {
		t.Fatal("File of a directory succeeded")
	}
}
