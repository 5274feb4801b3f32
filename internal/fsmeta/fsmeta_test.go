//go:build linux

package fsmeta

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/snapshot"
)

func mustNode(t *testing.T, path string) *snapshot.Node {
	t.Helper()
	n, err := NodeFromPath(path, "")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func setTimes(t *testing.T, path string, atime, mtime time.Time) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

// setXattr sets a user xattr, skipping the test if the file system lacks them.
func setXattr(t *testing.T, path, name string, value []byte) {
	t.Helper()
	if err := unix.Lsetxattr(path, name, value, 0); err != nil {
		if notSupported(err) {
			t.Skipf("file system does not support xattrs: %v", err)
		}
		t.Fatal(err)
	}
}

func TestNodeFromPathFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	data := make([]byte, 70000)
	if err := os.WriteFile(p, data, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(p, 0o2751); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2001, 2, 3, 4, 5, 6, 789012345, time.UTC)
	atime := time.Date(2002, 2, 3, 4, 5, 6, 1, time.UTC)
	setTimes(t, p, atime, mtime)

	n, err := NodeFromPath(p, "given name")
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	want := &snapshot.Node{
		Name: "given name", Type: snapshot.TypeFile, Mode: 0o2751,
		UID: st.Uid, GID: st.Gid, User: userName(st.Uid), Group: groupName(st.Gid),
		ModTime: mtime, AccessTime: atime,
		ChangeTime: time.Unix(int64(st.Ctim.Sec), int64(st.Ctim.Nsec)).UTC(),
		Inode:      st.Ino, Device: st.Dev, Links: 1, Size: 70000,
	}
	if !reflect.DeepEqual(n, want) {
		t.Fatalf("got  %+v\nwant %+v", n, want)
	}
	if u, err := user.LookupId(strconv.Itoa(int(st.Uid))); err == nil && n.User != u.Username {
		t.Errorf("User = %q, want %q", n.User, u.Username)
	}
	if n.ChangeTime.IsZero() {
		t.Error("no ctime")
	}

	// Encodes in a tree as it is.
	enc, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: []*snapshot.Node{n}})
	if err != nil {
		t.Fatal(err)
	}
	tree, err := snapshot.DecodeTree(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(tree.Nodes[0], n) {
		t.Fatalf("tree round trip: %+v", tree.Nodes[0])
	}
}

func TestNodeFromPathTypes(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	if err := unix.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(sub, 0o1750); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	target := "no/such/\xff\xfetarget"
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}

	n := mustNode(t, sub)
	if n.Name != "sub" || n.Type != snapshot.TypeDir || n.Mode != 0o1750 || n.Links < 2 || n.Size != 0 {
		t.Errorf("dir: %+v", n)
	}
	n = mustNode(t, link)
	if n.Type != snapshot.TypeSymlink || n.LinkTarget != target || n.Size != uint64(len(target)) || n.Mode != 0o777 {
		t.Errorf("symlink: %+v", n)
	}
	n = mustNode(t, fifo)
	if n.Type != snapshot.TypeFIFO || n.Mode&0o600 != 0o600 || n.Size != 0 {
		t.Errorf("fifo: %+v", n)
	}

	if _, err := NodeFromPath(filepath.Join(dir, "missing"), ""); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	// A symlink to a directory is described as a symlink, not followed.
	dirLink := filepath.Join(dir, "dirlink")
	if err := os.Symlink("sub", dirLink); err != nil {
		t.Fatal(err)
	}
	if n := mustNode(t, dirLink); n.Type != snapshot.TypeSymlink {
		t.Errorf("dirlink followed: %+v", n)
	}
}

func TestNodeFromPathSparse(t *testing.T) {
	dir := t.TempDir()
	sparse := filepath.Join(dir, "sparse")
	f, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("end"), 8<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	n := mustNode(t, sparse)
	if !n.Sparse || n.Size != 8<<20+3 {
		t.Errorf("sparse file: Sparse=%v Size=%d", n.Sparse, n.Size)
	}

	dense := filepath.Join(dir, "dense")
	if err := os.WriteFile(dense, make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := mustNode(t, dense); n.Sparse {
		t.Error("dense file is marked sparse")
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if n := mustNode(t, empty); n.Sparse {
		t.Error("empty file is marked sparse")
	}
}

func TestNodeFromPathXattrs(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3000) // larger than the first buffer
	for i := range big {
		big[i] = byte(i)
	}
	setXattr(t, p, "user.z", []byte("last"))
	setXattr(t, p, "user.big", big)
	setXattr(t, p, "user.empty", nil)
	n := mustNode(t, p)
	want := []snapshot.Xattr{{Name: "user.big", Value: big}, {Name: "user.empty", Value: []byte{}}, {Name: "user.z", Value: []byte("last")}}
	var user []snapshot.Xattr // ignore security.* set by an LSM
	for _, x := range n.Xattrs {
		if len(x.Name) > 5 && x.Name[:5] == "user." {
			user = append(user, x)
		}
	}
	if !reflect.DeepEqual(user, want) {
		t.Fatalf("xattrs = %q", n.Xattrs)
	}
}

func TestSameFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := mustNode(t, p)
	if !SameFile(a, mustNode(t, p)) {
		t.Error("unchanged file differs")
	}
	if SameFile(a, nil) || SameFile(nil, a) {
		t.Error("nil node is the same")
	}
	// Same size, mtime put back: ctime still changes.
	if err := os.WriteFile(p, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	setTimes(t, p, a.AccessTime, a.ModTime)
	b := mustNode(t, p)
	if b.ChangeTime.Equal(a.ChangeTime) {
		// ctime granularity can hide a change this fast; force one.
		time.Sleep(20 * time.Millisecond)
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
		b = mustNode(t, p)
	}
	if SameFile(a, b) {
		t.Error("changed file is the same")
	}
	for _, change := range []func(n *snapshot.Node){
		func(n *snapshot.Node) { n.Size++ },
		func(n *snapshot.Node) { n.ModTime = n.ModTime.Add(1) },
		func(n *snapshot.Node) { n.ChangeTime = n.ChangeTime.Add(1) },
		func(n *snapshot.Node) { n.Inode++ },
		func(n *snapshot.Node) { n.Device++ },
	} {
		c := *a
		change(&c)
		if SameFile(a, &c) {
			t.Errorf("changed node is the same: %+v", c)
		}
	}
	c := *a
	c.AccessTime = c.AccessTime.Add(time.Hour)
	c.Name = "other"
	if !SameFile(a, &c) {
		t.Error("atime or name change counts as a change")
	}
}

func isRoot() bool { return os.Geteuid() == 0 }

// restoreCase is a source object and whether it needs root.
type restoreCase struct {
	name string
	root bool
	make func(t *testing.T, path string)
}

func TestCreateApplyRoundTrip(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	mtime := time.Date(1999, 12, 31, 23, 59, 59, 123456789, time.UTC)
	atime := time.Date(2038, 1, 19, 3, 14, 8, 987654321, time.UTC)
	cases := []restoreCase{
		{"file", false, func(t *testing.T, p string) {
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			setXattr(t, p, "user.a", []byte("value"))
			setXattr(t, p, "user.b", []byte{0, 1, 2})
			if err := unix.Chmod(p, 0o4751); err != nil {
				t.Fatal(err)
			}
		}},
		{"dir", false, func(t *testing.T, p string) {
			if err := unix.Mkdir(p, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := unix.Chmod(p, 0o3775); err != nil {
				t.Fatal(err)
			}
			setXattr(t, p, "user.dir", []byte("d"))
		}},
		{"symlink", false, func(t *testing.T, p string) {
			if err := os.Symlink("../somewhere/\xffelse", p); err != nil {
				t.Fatal(err)
			}
		}},
		{"fifo", false, func(t *testing.T, p string) {
			if err := unix.Mkfifo(p, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := unix.Chmod(p, 0o642); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink with trusted xattr", true, func(t *testing.T, p string) {
			if err := os.Symlink("t", p); err != nil {
				t.Fatal(err)
			}
			setXattr(t, p, "trusted.floe", []byte("on a link"))
		}},
		{"chardev", true, func(t *testing.T, p string) { mknod(t, p, unix.S_IFCHR|0o620, unix.Mkdev(1, 3)) }},
		{"blockdev", true, func(t *testing.T, p string) { mknod(t, p, unix.S_IFBLK|0o640, unix.Mkdev(259, 70000)) }},
		{"owned file", true, func(t *testing.T, p string) {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := unix.Lchown(p, 54321, 65432); err != nil {
				t.Fatal(err)
			}
			if err := unix.Chmod(p, 0o6750); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.root && !isRoot() {
				t.Skip("needs root")
			}
			sp, dp := filepath.Join(src, c.name), filepath.Join(dst, c.name)
			c.make(t, sp)
			setTimes(t, sp, atime, mtime)
			want := mustNode(t, sp)

			if want.Type == snapshot.TypeFile {
				if err := os.WriteFile(dp, []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			} else if err := Create(dp, want); err != nil {
				t.Fatal(err)
			}
			if err := Apply(dp, want, ApplyOptions{NumericOwner: true}); err != nil {
				t.Fatal(err)
			}
			got := mustNode(t, dp)

			if got.Type != want.Type || got.Mode != want.Mode || got.UID != want.UID || got.GID != want.GID ||
				got.LinkTarget != want.LinkTarget || got.Rdev != want.Rdev {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
			if !got.ModTime.Equal(mtime) || !got.AccessTime.Equal(atime) {
				t.Errorf("times: mtime %v atime %v", got.ModTime, got.AccessTime)
			}
			if !reflect.DeepEqual(got.Xattrs, want.Xattrs) {
				t.Errorf("xattrs %q, want %q", got.Xattrs, want.Xattrs)
			}
		})
	}
}

func mknod(t *testing.T, path string, mode uint32, dev uint64) {
	t.Helper()
	if err := unix.Mknod(path, mode, int(dev)); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("cannot make device nodes here: %v", err)
		}
		t.Fatal(err)
	}
}

func TestCreateSocketAndFile(t *testing.T) {
	dir := t.TempDir()
	sock := &snapshot.Node{Name: "s", Type: snapshot.TypeSocket, Mode: 0o755}
	p := filepath.Join(dir, "s")
	if err := Create(p, sock); err != nil {
		t.Fatal(err)
	}
	if err := Apply(p, sock, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket was created: %v", err)
	}
	if err := Create(filepath.Join(dir, "f"), &snapshot.Node{Type: snapshot.TypeFile}); err == nil {
		t.Error("Create made a regular file")
	}
	link := &snapshot.Node{Type: snapshot.TypeSymlink, LinkTarget: "x"}
	if err := Create(filepath.Join(dir, "l"), link); err != nil {
		t.Fatal(err)
	}
	if err := Create(filepath.Join(dir, "l"), link); !errors.Is(err, os.ErrExist) {
		t.Errorf("Create over an existing path: %v", err)
	}
}

// Apply on a symlink must change the link, never its target.
func TestApplyDoesNotFollowSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	before := mustNode(t, target)
	link := filepath.Join(dir, "link")
	if err := os.Symlink("target", link); err != nil {
		t.Fatal(err)
	}
	n := &snapshot.Node{Type: snapshot.TypeSymlink, Mode: 0o777, UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()),
		ModTime: time.Unix(1000, 1), AccessTime: time.Unix(2000, 2)}
	if err := Apply(link, n, ApplyOptions{NumericOwner: true}); err != nil {
		t.Fatal(err)
	}
	// A node that claims to be a file but finds a symlink: chmod must not
	// reach the target either.
	n.Type = snapshot.TypeFile
	n.Mode = 0o777
	_ = Apply(link, n, ApplyOptions{NumericOwner: true})
	after := mustNode(t, target)
	if after.Mode != before.Mode || !after.ModTime.Equal(before.ModTime) {
		t.Errorf("target changed: mode %o mtime %v", after.Mode, after.ModTime)
	}
	if got := mustNode(t, link); !got.ModTime.Equal(time.Unix(1000, 1)) {
		t.Errorf("link mtime %v", got.ModTime)
	}
}

func TestApplyReportsAndContinues(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(123456789, 42)
	n := &snapshot.Node{Type: snapshot.TypeFile, Mode: 0o751, UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()),
		ModTime: mtime, Xattrs: []snapshot.Xattr{{Name: "nosuchnamespace.x", Value: []byte("v")}}}
	err := Apply(p, n, ApplyOptions{NumericOwner: true})
	var ae *ApplyError
	if !errors.As(err, &ae) || len(ae.Errs) != 1 || ae.Path != p {
		t.Fatalf("err = %v", err)
	}
	if !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("error does not unwrap to EOPNOTSUPP: %v", err)
	}
	got := mustNode(t, p)
	if got.Mode != 0o751 || !got.ModTime.Equal(mtime) {
		t.Errorf("later steps not applied: mode %o mtime %v", got.Mode, got.ModTime)
	}
	// Zero times leave the file's times alone.
	if err := Apply(p, &snapshot.Node{Type: snapshot.TypeFile, Mode: 0o600, UID: n.UID, GID: n.GID}, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := mustNode(t, p); !got.ModTime.Equal(mtime) {
		t.Errorf("zero mtime changed the time to %v", got.ModTime)
	}
	if err := Apply(filepath.Join(t.TempDir(), "missing"), n, ApplyOptions{}); err == nil {
		t.Error("no error for a missing path")
	}
}

func TestApplyOwnerNames(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root")
	}
	root, err := user.LookupId("0")
	if err != nil {
		t.Skip("no user 0:", err)
	}
	rootGroup, err := user.LookupGroupId("0")
	if err != nil {
		t.Skip("no group 0:", err)
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	n := &snapshot.Node{Type: snapshot.TypeFile, Mode: 0o600, UID: 4242, GID: 4343,
		User: root.Username, Group: rootGroup.Name}
	if err := Apply(p, n, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := mustNode(t, p); got.UID != 0 || got.GID != 0 {
		t.Errorf("names not mapped: %d:%d", got.UID, got.GID)
	}
	if err := Apply(p, n, ApplyOptions{NumericOwner: true}); err != nil {
		t.Fatal(err)
	}
	if got := mustNode(t, p); got.UID != 4242 || got.GID != 4343 {
		t.Errorf("numeric owner: %d:%d", got.UID, got.GID)
	}
	n.User, n.Group = "no-such-user-floe", "no-such-group-floe"
	if err := Apply(p, n, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := mustNode(t, p); got.UID != 4242 || got.GID != 4343 {
		t.Errorf("unknown names: %d:%d", got.UID, got.GID)
	}
}

func TestMayChown(t *testing.T) {
	for _, tt := range []struct {
		uid, gid   uint32
		euid, egid int
		want       bool
	}{
		{5, 6, 0, 0, true},
		{1000, 1000, 1000, 1000, true},
		{1000, 1001, 1000, 1000, false},
		{0, 0, 1000, 1000, false},
	} {
		if got := mayChown(tt.uid, tt.gid, tt.euid, tt.egid); got != tt.want {
			t.Errorf("mayChown(%+v) = %v", tt, got)
		}
	}
}
