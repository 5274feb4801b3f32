package dump_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
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

// A device number a ustar (and so PAX) header cannot hold (more than 7
// octal digits: none on Linux, but a snapshot says what its writer
// wants) is written with a GNU header, which GNU tar reads; one GNU tar
// cannot read either, and any header archive/tar refuses to encode, is
// left out with a warning. The archive goes on either way: it failed
// whole, at the first such entry.
func TestTarUnusualDevices(t *testing.T) {
	f := newFixture()
	ctx := context.Background()
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	dev := func(name string, typ snapshot.NodeType, major, minor uint32) *snapshot.Node {
		return &snapshot.Node{Name: name, Type: typ, Mode: 0o600, ModTime: mtime, Rdev: unix.Mkdev(major, minor)}
	}
	big := dev("big", snapshot.TypeCharDev, 3000000, 4000000)
	big.Xattrs = []snapshot.Xattr{{Name: "user.x", Value: []byte("y")}}
	// a GNU header holds a long name (in a record of its own) and whole
	// seconds
	long := dev(longName, snapshot.TypeCharDev, 3000000, 1)
	long.ModTime = f.mtime
	nodes := []*snapshot.Node{
		big, long,
		dev("bigminor", snapshot.TypeBlockDev, 8, 1<<28),
		dev("edge", snapshot.TypeCharDev, 1<<21-1, 1<<21-1), // the most ustar holds
		dev("huge", snapshot.TypeCharDev, 1<<31, 1),         // more than GNU tar reads
		wt.Symlink("nul-link", "é\x00x"),                    // no tar header holds a NUL in a link target
		wt.File("after", 3, f.blobs.add("abc")),
	}
	var buf bytes.Buffer
	res, err := dump.Tar(ctx, f.blobs, f.trees, "/d", wt.Dir("d", f.trees.Add(nodes...)), &buf)
	if err != nil {
		t.Fatal(err)
	}
	got := readTar(t, buf.Bytes())
	for name, want := range map[string][3]int64{
		"d/big": {tar.TypeChar, 3000000, 4000000}, "d/bigminor": {tar.TypeBlock, 8, 1 << 28}, "d/edge": {tar.TypeChar, 1<<21 - 1, 1<<21 - 1},
	} {
		h := got[name].hdr
		if h == nil || int64(h.Typeflag) != want[0] || h.Devmajor != want[1] || h.Devminor != want[2] || !h.ModTime.Equal(mtime) {
			t.Errorf("%s: %+v, want type %c and %d,%d", name, h, want[0], want[1], want[2])
		}
	}
	if h := got["d/big"].hdr; h != nil && h.Format != tar.FormatGNU {
		t.Errorf("d/big: format %v, want GNU", h.Format)
	}
	if h := got["d/"+longName].hdr; h == nil || h.Devmajor != 3000000 || !h.ModTime.Equal(f.mtime.Truncate(time.Second)) {
		t.Errorf("long name: %+v", h)
	}
	if got["d/after"].data != "abc" {
		t.Errorf("the entry after them: %q", got["d/after"].data)
	}
	for _, absent := range []string{"d/huge", "d/nul-link"} {
		if _, ok := got[absent]; ok {
			t.Errorf("%s written", absent)
		}
	}
	skipped := strings.Join(res.Skipped, "\n")
	for _, want := range []string{`/d/big: xattr "user.x"`, "/d/huge: device number 2147483648,1", "/d/nul-link: "} {
		if !strings.Contains(skipped, want) {
			t.Errorf("skipped lacks %q:\n%s", want, skipped)
		}
	}
	if len(res.Skipped) != 3 || res.Others != 4 || res.Files != 1 || res.Dirs != 1 {
		t.Errorf("result %+v", res)
	}

	// what GNU tar, the tar of most systems, reads back
	tarBin, err := exec.LookPath("tar")
	if err != nil {
		t.Skip("no tar to read the archive")
	}
	if v, _ := exec.Command(tarBin, "--version").Output(); !strings.Contains(string(v), "GNU tar") {
		t.Skipf("%s is not GNU tar", tarBin)
	}
	cmd := exec.Command(tarBin, "-tvf", "-")
	cmd.Stdin = bytes.NewReader(buf.Bytes())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tvf: %v\n%s", err, out)
	}
	for _, want := range []string{"3000000,4000000", "8,268435456", "2097151,2097151", "3000000,1 2026-01-02 03:04 d/" + longName, "d/after"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("tar -tvf lacks %q:\n%s", want, out)
		}
	}
	t.Logf("tar -tvf:\n%s", out)
}
