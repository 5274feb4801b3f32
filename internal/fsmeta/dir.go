//go:build linux

package fsmeta

import (
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/snapshot"
)

// Dir is a directory opened to list its entries and describe each of them
// relative to its descriptor: a backup's walk calls fstatat(dir, name)
// instead of lstat(full path), which spares the kernel a lookup of every
// component of the path for every file, and needs no os.File (whose
// poller registration and fcntl calls cost several system calls for
// nothing on a directory).
type Dir struct {
	fd   int
	path string
}

// DirEntry is one name in a directory and its type as the directory
// listing tells it (unix.DT_*; DT_UNKNOWN on file systems that do not say).
type DirEntry struct {
	Name string
	Type uint8
}

// IsDir reports whether the listing says the entry is a directory.
func (e DirEntry) IsDir() bool { return e.Type == unix.DT_DIR }

// IsRegular reports whether the listing says the entry is a regular file.
func (e DirEntry) IsRegular() bool { return e.Type == unix.DT_REG }

// TypeKnown reports whether the listing tells the entry's type at all.
func (e DirEntry) TypeKnown() bool { return e.Type != unix.DT_UNKNOWN }

// OpenDir opens the directory at path (not following a final symlink)
// without updating its access time where allowed: otherwise every backup
// would change the directory's atime, and the next one would store a new
// tree for a directory in which nothing changed.
func OpenDir(path string) (*Dir, error) {
	flags := unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := openRetry(path, flags|unix.O_NOATIME)
	if errors.Is(err, syscall.EPERM) {
		fd, err = openRetry(path, flags)
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return &Dir{fd: fd, path: path}, nil
}

// Close closes the directory.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// direntBufs are the buffers getdents64 fills: 64 KiB lists about 2,000
// names a call, where os.File.ReadDir's 8 KiB needs a call per 250.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// Entries lists the directory (without "." and ".."), sorted by name.
func (d *Dir) Entries() ([]DirEntry, error) {
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	buf := *bp
	var ents []DirEntry
	for {
		n, err := unix.Getdents(d.fd, buf)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return ents, &os.PathError{Op: "getdents", Path: d.path, Err: err}
		}
		if n <= 0 {
			break
		}
		ents = parseDirents(buf[:n], ents)
	}
	slices.SortFunc(ents, func(a, b DirEntry) int { return strings.Compare(a.Name, b.Name) })
	return ents, nil
}

// parseDirents appends the entries of a getdents64 result (struct
// linux_dirent64: ino, off, reclen, type, NUL-terminated name) to ents.
func parseDirents(b []byte, ents []DirEntry) []DirEntry {
	const nameOff = int(unsafe.Offsetof(unix.Dirent{}.Name))
	for len(b) >= nameOff {
		reclen := int(*(*uint16)(unsafe.Pointer(&b[unsafe.Offsetof(unix.Dirent{}.Reclen)])))
		if reclen < nameOff || reclen > len(b) {
			break // a record the kernel would never write
		}
		typ := b[unsafe.Offsetof(unix.Dirent{}.Type)]
		name := b[nameOff:reclen]
		if i := slices.Index(name, 0); i >= 0 {
			name = name[:i]
		}
		if s := string(name); s != "." && s != ".." && s != "" {
			ents = append(ents, DirEntry{Name: s, Type: typ})
		}
		b = b[reclen:]
	}
	return ents
}

// Node describes the entry name of the directory as NodeFromPath does for
// path (the entry's full path, used for its extended attributes and in
// errors): one fstatat relative to the directory, a readlinkat for a
// symlink, and the extended attributes where the file system has them.
//
// known, if not nil, is asked with the node before its extended attributes
// are read: if it returns true, the attributes it returned are the node's
// and none are read (a backup passes those of the same file in its parent
// snapshot when the inode and ctime are unchanged: setting an attribute
// changes the ctime).
func (d *Dir) Node(name, path string, known func(*snapshot.Node) ([]snapshot.Xattr, bool)) (*snapshot.Node, error) {
	var st unix.Stat_t
	for {
		err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "lstat", Path: path, Err: err}
		}
		break
	}
	return nodeFromStat(&st, path, name, func() (string, error) { return readlinkat(d.fd, name, path, int(st.Size)) }, known, -1)
}

// ErrNotRegular is returned by Dir.OpenFile for an entry that is not a
// regular file (any more): the caller describes it with Dir.Node instead.
var ErrNotRegular = errors.New("not a regular file")

// OpenFile opens the entry name of the directory, which its listing says
// is a regular file, for reading, and describes it from the open file, as
// Node would: a backup that reads every file (nothing to compare with)
// then needs openat and fstat where it needed fstatat, a second lookup
// of the full path to open it, and fstat, and the extended attributes are
// listed through the descriptor instead of by path. The description is
// the open file's, so it cannot be replaced between the two.
//
// The file is opened without following a symlink and without blocking (a
// FIFO put in its place since the listing would block an open for
// reading until a writer comes; File.Read clears O_NONBLOCK if a read
// ever says EAGAIN), without updating its access time where allowed. An
// entry that is no regular file once open is closed again, with
// ErrNotRegular. Any error leaves nothing open.
func (d *Dir) OpenFile(name, path string, known func(*snapshot.Node) ([]snapshot.Xattr, bool)) (*File, *snapshot.Node, error) {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC
	fd, err := openatRetry(d.fd, name, flags|unix.O_NOATIME)
	if errors.Is(err, syscall.EPERM) {
		fd, err = openatRetry(d.fd, name, flags)
	}
	if err != nil {
		return nil, nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := &File{fd: fd, path: path, nonblock: true}
	var st unix.Stat_t
	if err := f.Stat(&st); err != nil {
		f.Close()
		return nil, nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, nil, &os.PathError{Op: "open", Path: path, Err: ErrNotRegular}
	}
	n, err := nodeFromStat(&st, path, name, nil, known, fd)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, n, nil
}

func openatRetry(dir int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dir, name, flags, 0)
		if !errors.Is(err, syscall.EINTR) {
			return fd, err
		}
	}
}

// readlinkat reads the target of the symlink name in dir, whose lstat
// said size bytes (a target that grew since is read again, larger).
func readlinkat(dir int, name, path string, size int) (string, error) {
	n := max(size+1, 128)
	for tries := 0; tries < 8; tries++ {
		buf := make([]byte, n)
		got, err := unix.Readlinkat(dir, name, buf)
		if err != nil {
			return "", &os.PathError{Op: "readlink", Path: path, Err: err}
		}
		if got < len(buf) {
			return string(buf[:got]), nil
		}
		n *= 2
	}
	return "", &os.PathError{Op: "readlink", Path: path, Err: syscall.ENAMETOOLONG}
}

// noXattrs holds the devices whose file system said it has no extended
// attributes (ENOTSUP): their files are not asked again.
var noXattrs sync.Map // uint64 (st_dev) -> struct{}

// xattrsOf reads the extended attributes of path (through fd if not -1)
// on device dev, unless that device's file system already said it has
// none.
func xattrsOf(path string, fd int, dev uint64) ([]snapshot.Xattr, error) {
	if _, none := noXattrs.Load(dev); none {
		return nil, nil
	}
	xattrs, unsupported, err := readXattrsOf(path, fd)
	if unsupported {
		noXattrs.Store(dev, struct{}{})
	}
	return xattrs, err
}
