package mount

import (
	"context"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
)

// fsys is what every node of one mount shares.
type fsys struct {
	r         *repo.Repository
	trees     snapshot.TreeLoader
	blobs     *blobCache
	readAhead int
	uid, gid  uint32 // owner of the directories floe makes up
	logf      func(format string, args ...any)

	errMu    sync.Mutex
	errShown map[string]bool

	zeroMu  sync.Mutex
	zeroIDs map[uint32]hash.ID
}

// fail logs err once per message and returns EIO: a read error must not
// look like an empty file.
func (f *fsys) fail(err error) syscall.Errno {
	msg := err.Error()
	f.errMu.Lock()
	shown := f.errShown[msg]
	f.errShown[msg] = true
	f.errMu.Unlock()
	if !shown && f.logf != nil {
		f.logf("mount: %s", msg)
	}
	return syscall.EIO
}

// zeroID returns the key (K) of n zero bytes (how sparse files store holes).
func (f *fsys) zeroID(n uint32) hash.ID {
	f.zeroMu.Lock()
	defer f.zeroMu.Unlock()
	id, ok := f.zeroIDs[n]
	if !ok {
		id = f.r.BlobKey(make([]byte, n))
		f.zeroIDs[n] = id
	}
	return id
}

// inoOf returns a stable inode number for a path in the mount: a 64-bit
// FNV-1a hash, away from the numbers FUSE reserves.
func inoOf(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return inoFromHash(h.Sum64())
}

func inoFromHash(ino uint64) uint64 {
	if ino <= fuse.FUSE_ROOT_ID || ino == ^uint64(0) {
		ino += 2
	}
	return ino
}

// FNV-1a, 64 bits, continued from a state byte by byte: inoOf(view, path)
// of a directory's entries from the state after the directory's path.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// viewState is the FNV-1a state after view and its NUL: a snapshot
// root's dirNode.state.
func viewState(view string) uint64 { return fnvString(fnvString(fnvOffset, view), "\x00") }

func typeBits(t snapshot.NodeType) uint32 {
	switch t {
	case snapshot.TypeFile:
		return syscall.S_IFREG
	case snapshot.TypeDir:
		return syscall.S_IFDIR
	case snapshot.TypeSymlink:
		return syscall.S_IFLNK
	case snapshot.TypeFIFO:
		return syscall.S_IFIFO
	case snapshot.TypeCharDev:
		return syscall.S_IFCHR
	case snapshot.TypeBlockDev:
		return syscall.S_IFBLK
	case snapshot.TypeSocket:
		return syscall.S_IFSOCK
	}
	return syscall.S_IFREG
}

// fuseDev converts a device number as stat returns it (glibc's encoding)
// to the 32-bit encoding FUSE passes to the kernel (new_encode_dev).
func fuseDev(rdev uint64) uint32 {
	major := uint32((rdev>>8)&0xfff) | uint32((rdev>>32)&^0xfff)
	minor := uint32(rdev&0xff) | uint32((rdev>>12)&^0xff)
	return minor&0xff | major<<8 | (minor&^0xff)<<12
}

func setTime(sec *uint64, nsec *uint32, t, fallback time.Time) {
	if t.IsZero() {
		t = fallback
	}
	*sec = uint64(t.Unix()) // before 1970: the kernel reads it as signed
	*nsec = uint32(t.Nanosecond())
}

// entry is a node of a snapshot's tree: its metadata as backed up.
type entry struct {
	f    *fsys
	n    *snapshot.Node
	ino  uint64
	snap time.Time // the snapshot's time, for times that are unknown
}

func (e *entry) fill(out *fuse.Attr) {
	n := e.n
	out.Ino = e.ino
	out.Mode = typeBits(n.Type) | n.Mode&snapshot.ModeMask
	out.Uid, out.Gid = n.UID, n.GID
	out.Nlink = uint32(min(n.Links, 1<<32-1))
	if out.Nlink == 0 {
		out.Nlink = 1
		if n.Type == snapshot.TypeDir {
			out.Nlink = 2
		}
	}
	switch n.Type {
	case snapshot.TypeFile, snapshot.TypeDir:
		out.Size = n.Size
	case snapshot.TypeSymlink:
		out.Size = uint64(len(n.LinkTarget))
	case snapshot.TypeCharDev, snapshot.TypeBlockDev:
		out.Rdev = fuseDev(n.Rdev)
	}
	out.Blocks = (out.Size + 4095) / 4096 * 8
	out.Blksize = 4096
	setTime(&out.Mtime, &out.Mtimensec, n.ModTime, e.snap)
	setTime(&out.Atime, &out.Atimensec, n.AccessTime, e.snap)
	setTime(&out.Ctime, &out.Ctimensec, n.ChangeTime, e.snap)
}

func (e *entry) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	e.fill(&out.Attr)
	return 0
}

func (e *entry) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	for _, x := range e.n.Xattrs {
		if x.Name == attr {
			if len(dest) < len(x.Value) {
				return uint32(len(x.Value)), syscall.ERANGE
			}
			return uint32(copy(dest, x.Value)), 0
		}
	}
	return 0, syscall.ENODATA
}

func (e *entry) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var b strings.Builder
	for _, x := range e.n.Xattrs {
		b.WriteString(x.Name)
		b.WriteByte(0)
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), syscall.ERANGE
	}
	return uint32(copy(dest, b.String())), 0
}

// dirNode is a directory of a snapshot (or a snapshot's root). Its tree
// is loaded when it is first looked into, through the shared tree cache.
type dirNode struct {
	fs.Inode
	entry
	view string // path of the snapshot's root in the mount: the inode number space
	// parent is nil at the snapshot's root. A directory knows its path
	// through its parents, not as a string of its own: paths kept per
	// directory cost memory quadratic in the depth (a chain of 3,000
	// directories of 255-byte names, a 1 MB snapshot, took gigabytes).
	parent *dirNode
	// state is the FNV-1a state of inoOf(view, path) before the path's
	// final NUL, without the root's "/": an entry's number continues it
	// with "/" and the entry's name.
	state uint64
}

var (
	_ fs.NodeLookuper    = (*dirNode)(nil)
	_ fs.NodeReaddirer   = (*dirNode)(nil)
	_ fs.NodeGetattrer   = (*dirNode)(nil)
	_ fs.NodeGetxattrer  = (*dirNode)(nil)
	_ fs.NodeListxattrer = (*dirNode)(nil)
)

func (d *dirNode) tree(ctx context.Context) (*snapshot.Tree, syscall.Errno) {
	if d.n.Subtree.IsNull() {
		return &snapshot.Tree{}, 0
	}
	t, err := d.f.trees.LoadTree(ctx, d.n.Subtree)
	if err != nil {
		if ctx.Err() != nil {
			// The kernel interrupted the request: a signal reached the
			// caller in its system call (Go's own preemption signal
			// does, often). EINTR has it asked again; EIO would tell
			// it the snapshot is damaged, and log so.
			return nil, syscall.EINTR
		}
		return nil, d.f.fail(err)
	}
	return t, 0
}

// path returns the directory's path in the snapshot, "/" for the root
// (for messages).
func (d *dirNode) path() string {
	if d.parent == nil {
		return "/"
	}
	return walk.Join(d.parent.path(), d.n.Name)
}

// childState is the state of the entry name (dirNode.state).
func (d *dirNode) childState(name string) uint64 { return fnvString(fnvString(d.state, "/"), name) }

// childIno: names of one snapshot view get their own numbers, those of
// inoOf(view, path); the names of a hard-linked file share its number,
// as on the original file system.
func (d *dirNode) childIno(n *snapshot.Node) uint64 {
	if n.Type != snapshot.TypeDir && n.Links > 1 && n.Inode != 0 {
		return inoOf(d.view, "\x00hardlink", strconv.FormatUint(n.Device, 10), strconv.FormatUint(n.Inode, 10))
	}
	return inoFromHash(fnvString(d.childState(n.Name), "\x00"))
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	t, errno := d.tree(ctx)
	if errno != 0 {
		return nil, errno
	}
	n := t.Find(name)
	if n == nil {
		return nil, syscall.ENOENT
	}
	e := entry{f: d.f, n: n, ino: d.childIno(n), snap: d.snap}
	var ops fs.InodeEmbedder
	switch n.Type {
	case snapshot.TypeDir:
		ops = &dirNode{entry: e, view: d.view, parent: d, state: d.childState(name)}
	case snapshot.TypeFile:
		ops = &fileNode{entry: e, dir: d}
	case snapshot.TypeSymlink:
		ops = &symlinkNode{entry: e}
	default:
		ops = &otherNode{entry: e}
	}
	child := d.NewInode(ctx, ops, fs.StableAttr{Mode: typeBits(n.Type), Ino: e.ino})
	if g, ok := child.Operations().(fs.NodeGetattrer); ok {
		var a fuse.AttrOut
		g.Getattr(ctx, nil, &a)
		out.Attr = a.Attr
	}
	return child, 0
}

func (d *dirNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	t, errno := d.tree(ctx)
	if errno != 0 {
		return nil, errno
	}
	list := make([]fuse.DirEntry, len(t.Nodes))
	for i, n := range t.Nodes {
		list[i] = fuse.DirEntry{Name: n.Name, Mode: typeBits(n.Type), Ino: d.childIno(n)}
	}
	return fs.NewListDirStream(list), 0
}

// symlinkNode is a symlink of a snapshot.
type symlinkNode struct {
	fs.Inode
	entry
}

var _ fs.NodeReadlinker = (*symlinkNode)(nil)

func (s *symlinkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(s.n.LinkTarget), 0
}

// otherNode is a FIFO, device node or socket: only its metadata. The
// kernel opens FIFOs and devices itself, never through the mount.
type otherNode struct {
	fs.Inode
	entry
}

// virtDir is a directory floe makes up (ids/, hosts/web1/, ...).
type virtDir struct {
	fs.Inode
	f     *fsys
	mtime time.Time
	nlink uint32
}

func (v *virtDir) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = v.nlink
	out.Uid, out.Gid = v.f.uid, v.f.gid
	setTime(&out.Mtime, &out.Mtimensec, v.mtime, time.Unix(0, 0))
	out.Atime, out.Atimensec = out.Mtime, out.Mtimensec
	out.Ctime, out.Ctimensec = out.Mtime, out.Mtimensec
	return 0
}

// virtLink is a symlink floe makes up ("latest").
type virtLink struct {
	fs.Inode
	f      *fsys
	target string
	mtime  time.Time
}

func (l *virtLink) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	return []byte(l.target), 0
}

func (l *virtLink) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFLNK | 0o777
	out.Nlink = 1
	out.Size = uint64(len(l.target))
	out.Uid, out.Gid = l.f.uid, l.f.gid
	setTime(&out.Mtime, &out.Mtimensec, l.mtime, time.Unix(0, 0))
	out.Atime, out.Atimensec = out.Mtime, out.Mtimensec
	out.Ctime, out.Ctimensec = out.Mtime, out.Mtimensec
	return 0
}

// materialize adds the fixed layout below parent as persistent inodes.
func (f *fsys) materialize(ctx context.Context, parent *fs.Inode, v *vnode) {
	for _, c := range v.children {
		var ch *fs.Inode
		switch {
		case c.link != "":
			ch = parent.NewPersistentInode(ctx, &virtLink{f: f, target: c.link, mtime: c.mtime},
				fs.StableAttr{Mode: syscall.S_IFLNK, Ino: inoOf("floe-mount", c.path)})
		case c.snap != nil:
			sn := c.snap
			root := &snapshot.Node{Name: c.name, Type: snapshot.TypeDir, Mode: 0o755, UID: sn.UID, GID: sn.GID,
				ModTime: sn.Time, AccessTime: sn.Time, ChangeTime: sn.Time, Subtree: sn.Tree}
			ino := inoOf("floe-mount", c.path)
			ch = parent.NewPersistentInode(ctx, &dirNode{entry: entry{f: f, n: root, ino: ino, snap: sn.Time}, view: c.path, state: viewState(c.path)},
				fs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino})
		default:
			nlink := uint32(2)
			for _, cc := range c.children {
				if cc.link == "" {
					nlink++
				}
			}
			ch = parent.NewPersistentInode(ctx, &virtDir{f: f, mtime: c.mtime, nlink: nlink},
				fs.StableAttr{Mode: syscall.S_IFDIR, Ino: inoOf("floe-mount", c.path)})
			f.materialize(ctx, ch, c)
		}
		parent.AddChild(c.name, ch, false)
	}
}
