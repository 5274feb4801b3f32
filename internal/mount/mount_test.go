//go:build linux

package mount

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/testutil/backuptest"
)

func newRepo(t testing.TB) *repo.Repository {
	t.Helper()
	r, _ := testutil.NewRepo(t)
	return r
}

func backupDir(t *testing.T, r *repo.Repository, host string, dirs ...string) *snapshot.Record {
	return backuptest.Backup(t, r, backup.Options{Paths: dirs, Hostname: host})
}

// mountOrSkip mounts r on a new temporary directory and unmounts it when
// the test ends. It skips the test where FUSE cannot be used.
func mountOrSkip(t *testing.T, r *repo.Repository, opts Options) (*Server, string) {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("cannot test mounting: %v", err)
	}
	if err := probeMount(); err != nil {
		t.Skipf("mounting FUSE is not permitted here: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	opts.Logf = t.Logf
	s, err := Mount(context.Background(), r, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			_ = s.UnmountLazy()
		}
	})
	return s, dir
}

var probe struct {
	once sync.Once
	err  error
}

// probeMount mounts an empty file system once, to tell "FUSE mounts are
// not permitted here" (skip) from a bug in this package (fail).
func probeMount() error {
	probe.once.Do(func() {
		dir, err := os.MkdirTemp("", "floe-fuse-probe-")
		if err != nil {
			probe.err = err
			return
		}
		defer os.Remove(dir)
		server, err := fs.Mount(dir, &fs.Inode{}, &fs.Options{})
		if err != nil {
			probe.err = err
			return
		}
		probe.err = server.Unmount()
	})
	return probe.err
}

// isMountPoint reports whether dir is a mount point, from /proc/self/mountinfo.
func isMountPoint(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func readlink(t *testing.T, p string) string {
	t.Helper()
	s, err := os.Readlink(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// The mounted snapshot of a tree with every kind of entry equals the
// tree: content, type, mode, owner, mtime, link count and hard links,
// symlink targets, device numbers, xattrs, sparseness.
func TestMountMatchesSource(t *testing.T) {
	r := newRepo(t)
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	info := testutil.BuildTrickyTree(t, src, testutil.TreeOptions{DeepLevels: 30})
	for _, s := range info.Skipped {
		t.Logf("not tested here: %s", s)
	}
	const bigSize = 20 << 20
	big := filepath.Join(src, "big")
	testutil.WriteRandom(t, big, bigSize, 42)
	sn := backupDir(t, r, "testhost", src)

	s, mnt := mountOrSkip(t, r, Options{CacheBytes: 16 << 20})
	if !isMountPoint(t, mnt) {
		t.Fatalf("%s is not a mount point after Mount", mnt)
	}
	view := filepath.Join(mnt, "ids", sn.ID.Short())
	testutil.CompareTrees(t, src, filepath.Join(view, src))

	// the other views show the same snapshot
	local := sn.Time.Local()
	byHost := filepath.Join(mnt, "hosts", "testhost", local.Format("2006-01-02T15:04:05"))
	byDate := filepath.Join(mnt, "dates", local.Format("2006-01-02"), "testhost-"+local.Format("15:04:05"))
	for _, p := range []string{byHost, byDate, filepath.Join(mnt, "latest"), filepath.Join(mnt, "hosts", "testhost", "latest")} {
		if _, err := os.Stat(filepath.Join(p, src, "files", "one")); err != nil {
			t.Errorf("view %s: %v", p, err)
		}
	}
	if got, want := readlink(t, filepath.Join(mnt, "latest")), "ids/"+sn.ID.Short(); got != want {
		t.Errorf("latest -> %q, want %q", got, want)
	}

	// random-offset reads of the multi-chunk file
	want, err := os.ReadFile(big)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(view, big))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 3<<20)
	for i := 0; i < 200; i++ {
		off := rng.Int64N(bigSize + 1000)
		n := rng.IntN(len(buf)) + 1
		got, err := f.ReadAt(buf[:n], off)
		if err != nil && err != io.EOF {
			t.Fatalf("ReadAt(%d, %d): %v", n, off, err)
		}
		end := min(off+int64(n), bigSize)
		if off >= bigSize {
			end = off
		}
		if int64(got) != end-off || !bytes.Equal(buf[:got], want[off:end]) {
			t.Fatalf("ReadAt(%d bytes at %d) returned %d bytes that differ from the source", n, off, got)
		}
	}
	// the bound is raised to hold the blobs read ahead: 4 × 8 MiB
	if _, _, size := s.CacheStats(); size > s.f.blobs.max || s.f.blobs.max > 32<<20 {
		t.Errorf("blob cache holds %d bytes, bound %d", size, s.f.blobs.max)
	}

	// xattrs through the raw calls, including a size query
	if testutil.XattrsSupported(src) {
		p := filepath.Join(view, src, "xattrs", "file")
		n, err := unix.Getxattr(p, "user.large", nil)
		if err != nil || n != 4000 {
			t.Errorf("getxattr size of user.large: %d, %v; want 4000", n, err)
		}
		small := make([]byte, 10)
		if _, err := unix.Getxattr(p, "user.large", small); !errors.Is(err, unix.ERANGE) {
			t.Errorf("getxattr into a small buffer: %v, want ERANGE", err)
		}
		if _, err := unix.Getxattr(p, "user.missing", small); !errors.Is(err, unix.ENODATA) {
			t.Errorf("getxattr of a missing attribute: %v, want ENODATA", err)
		}
	}

	// sparse files: SEEK_DATA and SEEK_HOLE find the data regions
	sp, err := os.Open(filepath.Join(view, src, "sparse", "small"))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if off, err := unix.Seek(int(sp.Fd()), 0, unix.SEEK_DATA); err != nil || off != 1<<20 {
		t.Errorf("SEEK_DATA from 0: %d, %v; want %d", off, err, 1<<20)
	}
	if off, err := unix.Seek(int(sp.Fd()), 1<<20, unix.SEEK_HOLE); err != nil || off != 3<<20 {
		t.Errorf("SEEK_HOLE from 1 MiB: %d, %v; want %d", off, err, 3<<20)
	}

	// metadata the comparison leaves out: atime and ctime as backed up,
	// and inode numbers that stay the same
	var st1, st2 unix.Stat_t
	p := filepath.Join(view, src, "files", "text")
	if err := unix.Lstat(p, &st1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(p, &st2); err != nil {
		t.Fatal(err)
	}
	if st1.Ino != st2.Ino || st1.Ino <= 1 {
		t.Errorf("inode numbers %d and %d for one file", st1.Ino, st2.Ino)
	}
	ents, err := os.ReadDir(filepath.Dir(p))
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range ents {
		if de.Name() == "text" {
			fi, _ := de.Info()
			if fi.Sys().(*syscall.Stat_t).Ino != st1.Ino {
				t.Errorf("readdir and stat disagree on the inode number")
			}
		}
	}
	var srcSt unix.Stat_t
	if err := unix.Lstat(filepath.Join(src, "files", "text"), &srcSt); err != nil {
		t.Fatal(err)
	}
	if st1.Ctim != srcSt.Ctim {
		t.Errorf("ctime %v, want %v as backed up", st1.Ctim, srcSt.Ctim)
	}
}

// The mount is read-only: every change fails with EROFS.
func TestMountReadOnly(t *testing.T) {
	r := newRepo(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	sn := backupDir(t, r, "h", src)
	_, mnt := mountOrSkip(t, r, Options{})
	dir := filepath.Join(mnt, "ids", sn.ID.Short(), src)
	for what, err := range map[string]error{
		"write":   os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644),
		"create":  os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644),
		"mkdir":   os.Mkdir(filepath.Join(dir, "d"), 0o755),
		"remove":  os.Remove(filepath.Join(dir, "f")),
		"chmod":   os.Chmod(filepath.Join(dir, "f"), 0o600),
		"rename":  os.Rename(filepath.Join(dir, "f"), filepath.Join(dir, "g")),
		"symlink": os.Symlink("x", filepath.Join(mnt, "x")),
		"setxattr": func() error {
			return unix.Setxattr(filepath.Join(dir, "f"), "user.x", []byte("1"), 0)
		}(),
	} {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", what, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil || string(b) != "data" {
		t.Errorf("read: %q, %v", b, err)
	}
}

// Several hosts and snapshots: the views name each one, "latest" links
// point to the newest, and a busy mount point is reported.
func TestMountLayoutAndBusyUnmount(t *testing.T) {
	r := newRepo(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	a1 := backupDir(t, r, "alpha", src)
	time.Sleep(1100 * time.Millisecond) // a different second
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	a2 := backupDir(t, r, "alpha", src)
	b1 := backupDir(t, r, "beta", src)

	s, mnt := mountOrSkip(t, r, Options{})
	if s.Snapshots() != 3 {
		t.Errorf("%d snapshots shown, want 3", s.Snapshots())
	}
	ids, err := os.ReadDir(filepath.Join(mnt, "ids"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 3 {
		t.Errorf("ids/ holds %d entries, want 3", len(ids))
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(mnt, p, src, "f"))
		if err != nil {
			t.Error(err)
		}
		return string(b)
	}
	if got := read("ids/" + a1.ID.Short()); got != "one" {
		t.Errorf("first snapshot holds %q", got)
	}
	if got := read("hosts/alpha/latest"); got != "two" {
		t.Errorf("hosts/alpha/latest holds %q", got)
	}
	if got := readlink(t, filepath.Join(mnt, "hosts", "alpha", "latest")); got != a2.Time.Local().Format(hostTimeFormat) {
		t.Errorf("hosts/alpha/latest -> %q", got)
	}
	newest := b1
	if a2.Time.After(b1.Time) {
		newest = a2
	}
	if got := readlink(t, filepath.Join(mnt, "latest")); got != "ids/"+newest.ID.Short() {
		t.Errorf("latest -> %q, want ids/%s", got, newest.ID.Short())
	}
	hosts, err := os.ReadDir(filepath.Join(mnt, "hosts"))
	if err != nil || len(hosts) != 2 {
		t.Errorf("hosts/: %v, %v", hosts, err)
	}

	// busy: an open file keeps the mount point
	f, err := os.Open(filepath.Join(mnt, "ids", a1.ID.Short(), src, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Unmount(); !errors.Is(err, ErrBusy) {
		t.Errorf("unmount with an open file: %v, want ErrBusy", err)
	}
	f.Close()
	if err := s.Unmount(); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	if isMountPoint(t, mnt) {
		t.Errorf("%s is still mounted", mnt)
	}
	select {
	case <-s.Done():
	default:
		t.Errorf("Done is not closed after Unmount")
	}
}

// Reading a large file sequentially loads each of its blobs once.
func TestMountSequentialReadLoadsEachBlobOnce(t *testing.T) {
	r := newRepo(t)
	src := t.TempDir()
	testutil.WriteRandom(t, filepath.Join(src, "big"), 24<<20, 7)
	sn := backupDir(t, r, "h", src)
	s, mnt := mountOrSkip(t, r, Options{CacheBytes: 8 << 20})
	p := filepath.Join(mnt, "ids", sn.ID.Short(), src, "big")
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := io.Copy(io.Discard, f)
	if err != nil || n != 24<<20 {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	loads, hits, _ := s.CacheStats()
	blobs := countBlobs(t, r, sn, src+"/big")
	t.Logf("%d blobs; %d loads, %d cache hits", blobs, loads, hits)
	if loads > uint64(blobs) {
		t.Errorf("%d blob loads for a file of %d blobs", loads, blobs)
	}
}

func countBlobs(t *testing.T, r *repo.Repository, sn *snapshot.Record, p string) int {
	t.Helper()
	node := sn.Tree
	parts := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, name := range parts {
		tree, err := snapshot.LoadTree(context.Background(), r, node)
		if err != nil {
			t.Fatal(err)
		}
		n := tree.Find(name)
		if n == nil {
			t.Fatalf("%s not in the snapshot", p)
		}
		if i == len(parts)-1 {
			return len(n.Content)
		}
		node = n.Subtree
	}
	return 0
}

// A snapshot whose writer put a setuid root executable and a world-writable
// device node of its choice in it: through the mount, neither the setuid
// bit nor the device works (nosuid, nodev), so browsing a hostile
// snapshot gives nobody, root included, a way to the device or to root.
// (fusermount3 adds nosuid and nodev unless root asks for suid or dev;
// Mount asks for them itself too. Mounted with "suid" and "dev", this
// test fails, and the device node opens.)
func TestMountHostileSnapshot(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	data := []byte("#!/bin/sh\nid\n")
	w := r.StartWriting()
	id, _, _, err := w.SaveBlob(ctx, repo.DataBlob, r.BlobKey(data), data)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	plain, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: []*snapshot.Node{
		{Name: "suid", Type: snapshot.TypeFile, Mode: 0o4755, ModTime: now, Size: uint64(len(data)),
			Content: []hash.Ref{id}, ChunkSizes: []uint32{uint32(len(data))}},
		{Name: "zero", Type: snapshot.TypeCharDev, Mode: 0o666, ModTime: now, Rdev: uint64(unix.Mkdev(1, 5))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	tree, _, _, err := w.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(plain), plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	sid, err := snapshot.Save(ctx, r, &snapshot.Snapshot{Time: now, Hostname: "h", Paths: []string{"/"}, Tree: tree})
	if err != nil {
		t.Fatal(err)
	}
	_, mnt := mountOrSkip(t, r, Options{})
	dir := filepath.Join(mnt, "ids", sid.Short())
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	for flag, name := range map[int64]string{unix.ST_NOSUID: "nosuid", unix.ST_NODEV: "nodev", unix.ST_RDONLY: "ro"} {
		if st.Flags&flag == 0 {
			t.Errorf("the mount is not %s (flags %#x)", name, st.Flags)
		}
	}
	fi, err := os.Lstat(filepath.Join(dir, "suid"))
	if err != nil || fi.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("suid: %v %v, want shown as backed up", fi, err)
	}
	fi, err = os.Lstat(filepath.Join(dir, "zero"))
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("zero: %v %v, want shown as backed up", fi, err)
	}
	if f, err := os.OpenFile(filepath.Join(dir, "zero"), os.O_RDONLY, 0); err == nil {
		f.Close()
		t.Errorf("the device node opened through the mount")
	}
}

// Browsing down a chain of directories of 255-byte names: each directory
// of the mount kept its path, memory quadratic in the depth (a chain of
// 3,000, a 1 MB snapshot, took gigabytes). The mount now holds about its
// entries' names.
func TestMountDeepChain(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	const depth = 1500
	name := strings.Repeat("d", 255)
	w := r.StartWriting()
	now := time.Now()
	var nodes []*snapshot.Node
	for i := 0; i < depth; i++ {
		plain, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
		if err != nil {
			t.Fatal(err)
		}
		tid, _, _, err := w.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(plain), plain)
		if err != nil {
			t.Fatal(err)
		}
		nodes = []*snapshot.Node{{Name: name, Type: snapshot.TypeDir, Mode: 0o755, ModTime: now, Subtree: tid}}
	}
	plain, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	tree, _, _, err := w.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(plain), plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	sid, err := snapshot.Save(ctx, r, &snapshot.Snapshot{Time: now, Hostname: "h", Paths: []string{"/"}, Tree: tree})
	if err != nil {
		t.Fatal(err)
	}
	_, mnt := mountOrSkip(t, r, Options{})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fd, err := unix.Open(filepath.Join(mnt, "ids", sid.Short()), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < depth; i++ {
		next, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatalf("depth %d: %v", i, err)
		}
		fd = next
	}
	unix.Close(fd)
	runtime.GC()
	runtime.ReadMemStats(&after)
	// the paths of the old way: 255 * 1500^2 / 2 = 287 MB
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 64<<20 {
		t.Errorf("browsing %d levels down kept %d MB", depth, grown>>20)
	}
}
