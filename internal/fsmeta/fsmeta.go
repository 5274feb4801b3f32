//go:build linux

// Package fsmeta reads and writes file system metadata (Linux): it turns an
// lstat, a link target and extended attributes into a snapshot.Node, creates
// special files for restore, and applies a node's owner, xattrs, mode and
// times to a path. Every function that takes a path acts on that path itself
// and never follows a final symlink.
package fsmeta

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/snapshot"
)

// NodeFromPath describes the object at path (without following a final
// symlink) as a node called name; an empty name means filepath.Base(path).
// It fills the type, mode, owner (ids and names), times with nanoseconds (in
// UTC), inode, device, link count, size (regular files and symlinks only;
// 0 for directories and special files, whose st_size means nothing portable),
// rdev (devices), link target (symlinks), xattrs sorted by name (none when the
// file system does not support them) and Sparse (regular files with
// st_blocks*512 < st_size). Content and Subtree are left for the caller.
func NodeFromPath(path string, name string) (*snapshot.Node, error) {
	if name == "" {
		name = filepath.Base(path)
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	return nodeFromStat(&st, path, name, func() (string, error) { return os.Readlink(path) }, nil, -1)
}

// nodeFromStat is NodeFromPath after the lstat: readlink reads a symlink's
// target, path is where the extended attributes are read unless known
// (Dir.Node) knows them; fd, if not -1, is the object opened, whose
// attributes are then read through it (no path lookup).
func nodeFromStat(st *unix.Stat_t, path, name string, readlink func() (string, error), known func(*snapshot.Node) ([]snapshot.Xattr, bool), fd int) (*snapshot.Node, error) {
	n := &snapshot.Node{
		Name:       name,
		Mode:       uint32(st.Mode) & snapshot.ModeMask,
		UID:        st.Uid,
		GID:        st.Gid,
		ModTime:    time.Unix(int64(st.Mtim.Sec), int64(st.Mtim.Nsec)).UTC(),
		AccessTime: time.Unix(int64(st.Atim.Sec), int64(st.Atim.Nsec)).UTC(),
		ChangeTime: time.Unix(int64(st.Ctim.Sec), int64(st.Ctim.Nsec)).UTC(),
		Inode:      uint64(st.Ino),
		Device:     uint64(st.Dev),
		Links:      uint64(st.Nlink),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		n.Type = snapshot.TypeFile
		n.Size = uint64(st.Size)
		n.Sparse = st.Size > 0 && int64(st.Blocks)*512 < int64(st.Size)
	case unix.S_IFDIR:
		n.Type = snapshot.TypeDir
	case unix.S_IFLNK:
		n.Type = snapshot.TypeSymlink
		n.Size = uint64(st.Size)
		target, err := readlink()
		if err != nil {
			return nil, err
		}
		n.LinkTarget = target
	case unix.S_IFIFO:
		n.Type = snapshot.TypeFIFO
	case unix.S_IFCHR:
		n.Type = snapshot.TypeCharDev
		n.Rdev = uint64(st.Rdev)
	case unix.S_IFBLK:
		n.Type = snapshot.TypeBlockDev
		n.Rdev = uint64(st.Rdev)
	case unix.S_IFSOCK:
		n.Type = snapshot.TypeSocket
	default:
		return nil, fmt.Errorf("%s: unknown file type %#o", path, st.Mode&unix.S_IFMT)
	}
	var xattrs []snapshot.Xattr
	ok := false
	if known != nil {
		xattrs, ok = known(n)
	}
	if !ok {
		var err error
		if xattrs, err = xattrsOf(path, fd, n.Device); err != nil {
			return nil, err
		}
	}
	n.Xattrs = xattrs
	n.User = userName(n.UID)
	n.Group = groupName(n.GID)
	return n, nil
}

// SameFile reports whether before and after describe the same, unchanged
// file: equal size, mtime, ctime, inode and device. Backup uses it to detect
// files that changed while being read and to skip unchanged files.
func SameFile(before, after *snapshot.Node) bool {
	if before == nil || after == nil {
		return false
	}
	return before.Size == after.Size &&
		before.ModTime.Equal(after.ModTime) &&
		before.ChangeTime.Equal(after.ChangeTime) &&
		before.Inode == after.Inode &&
		before.Device == after.Device
}

// Extended attributes.

func notSupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// readXattrsOf returns the extended attributes of path (through fd, if
// not -1: the object at path, opened), sorted by name, and whether the
// file system supports no extended attributes at all (listing them failed
// with ENOTSUP).
func readXattrsOf(path string, fd int) ([]snapshot.Xattr, bool, error) {
	list := func(buf []byte) (int, error) { return unix.Llistxattr(path, buf) }
	get := func(name string, buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) }
	op := "l"
	if fd >= 0 {
		list = func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) }
		get = func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) }
		op = "f"
	}
	// Most files have none: the first listing goes to a buffer on the
	// stack (through the function values it would escape to the heap,
	// an allocation per file).
	var small [256]byte
	var n int
	var err error
	if fd >= 0 {
		n, err = unix.Flistxattr(fd, small[:])
	} else {
		n, err = unix.Llistxattr(path, small[:])
	}
	var names []byte
	switch {
	case err == nil:
		names = small[:n]
	case errors.Is(err, unix.ERANGE):
		names, err = xattrCall(list)
	}
	if err != nil {
		if notSupported(err) {
			return nil, true, nil
		}
		return nil, false, &os.PathError{Op: op + "listxattr", Path: path, Err: err}
	}
	if len(names) == 0 {
		return nil, false, nil
	}
	var xattrs []snapshot.Xattr
	for _, name := range strings.Split(string(names), "\x00") {
		if name == "" {
			continue
		}
		value, err := xattrCall(func(buf []byte) (int, error) { return get(name, buf) })
		if err != nil {
			if errors.Is(err, unix.ENODATA) || notSupported(err) {
				continue // removed since the listing, or not readable here
			}
			return nil, false, &os.PathError{Op: op + "getxattr " + name, Path: path, Err: err}
		}
		xattrs = append(xattrs, snapshot.Xattr{Name: name, Value: value})
	}
	slices.SortFunc(xattrs, func(a, b snapshot.Xattr) int { return strings.Compare(a.Name, b.Name) })
	return xattrs, false, nil
}

// xattrCall runs a list or get call that fills a buffer, growing the buffer
// while the attribute grows between calls (ERANGE).
func xattrCall(call func([]byte) (int, error)) ([]byte, error) {
	var small [256]byte
	sz, err := call(small[:])
	if err == nil {
		return slices.Clone(small[:sz:sz]), nil
	}
	for tries := 0; errors.Is(err, unix.ERANGE) && tries < 8; tries++ {
		sz, err = call(nil) // ask for the size
		if err != nil {
			return nil, err
		}
		buf := make([]byte, sz)
		sz, err = call(buf)
		if err == nil {
			return buf[:sz], nil
		}
	}
	return nil, err
}

// Owner names, cached: lookups read /etc/passwd or ask NSS every time.

var (
	userNames  sync.Map // uint32 -> string
	groupNames sync.Map // uint32 -> string
	userIDs    sync.Map // string -> idResult
	groupIDs   sync.Map // string -> idResult
)

type idResult struct {
	id uint32
	ok bool
}

// cached returns what m holds for k, else lookup(k), which it keeps:
// failures too, so that a missing owner is looked up once per run.
func cached[K comparable, V any](m *sync.Map, k K, lookup func(K) V) V {
	if v, ok := m.Load(k); ok {
		return v.(V)
	}
	v := lookup(k)
	m.Store(k, v)
	return v
}

func userName(uid uint32) string {
	return cached(&userNames, uid, func(uid uint32) string {
		if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
			return u.Username
		}
		return ""
	})
}

func groupName(gid uint32) string {
	return cached(&groupNames, gid, func(gid uint32) string {
		if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
			return g.Name
		}
		return ""
	})
}

func parseID(s string) (uint32, bool) {
	id, err := strconv.ParseUint(s, 10, 32)
	return uint32(id), err == nil
}

func userID(name string) (uint32, bool) {
	r := cached(&userIDs, name, func(name string) (r idResult) {
		if u, err := user.Lookup(name); err == nil {
			r.id, r.ok = parseID(u.Uid)
		}
		return r
	})
	return r.id, r.ok
}

func groupID(name string) (uint32, bool) {
	r := cached(&groupIDs, name, func(name string) (r idResult) {
		if g, err := user.LookupGroup(name); err == nil {
			r.id, r.ok = parseID(g.Gid)
		}
		return r
	})
	return r.id, r.ok
}

// Restore.

// Create makes the object of a node that has no content to write: a symlink
// (to n.LinkTarget), a FIFO, a char or block device (n.Rdev; needs
// CAP_MKNOD), or a directory (mode 0700 until Apply). Sockets are skipped:
// Create returns nil and makes nothing, since a socket belongs to the program
// that binds it. Regular files are the caller's to write; Create refuses
// them. FIFOs and devices are made with mode 0600; Apply sets the real mode.
// Create fails if path exists.
func Create(path string, n *snapshot.Node) error {
	var err error
	op := "create " + n.Type.String()
	switch n.Type {
	case snapshot.TypeSymlink:
		err = unix.Symlink(n.LinkTarget, path)
	case snapshot.TypeDir:
		err = unix.Mkdir(path, 0o700)
	case snapshot.TypeFIFO:
		err = unix.Mkfifo(path, 0o600)
	case snapshot.TypeCharDev, snapshot.TypeBlockDev:
		if n.Rdev > math.MaxUint32 {
			return fmt.Errorf("%s %s: device number %#x out of range", op, path, n.Rdev)
		}
		kind := uint32(unix.S_IFCHR)
		if n.Type == snapshot.TypeBlockDev {
			kind = unix.S_IFBLK
		}
		err = unix.Mknod(path, kind|0o600, int(n.Rdev))
	case snapshot.TypeSocket:
		return nil
	default:
		return fmt.Errorf("%s %s: fsmeta.Create does not make %s nodes", op, path, n.Type)
	}
	if err != nil {
		return &os.PathError{Op: op, Path: path, Err: err}
	}
	return nil
}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// NumericOwner uses the node's UID and GID as they are. Otherwise the
	// node's User and Group names are mapped to the local ids where such a
	// user or group exists, and the numeric ids are used where not.
	NumericOwner bool
	// Created describes a file this process has just created (O_EXCL,
	// or mkdir): the owner and mode it already has. An fchown or fchmod
	// that would change nothing is skipped (Apply always sets the mode);
	// restoring many small files, they were two of six system calls per
	// file. Nil: unknown, everything is set.
	Created *Created
}

// Created is what a newly created file already has: UID and GID, and
// Mode (the permission bits it was created with, after the umask and any
// default ACL; ModeUnknown when they are not known).
type Created struct {
	UID, GID uint32
	Mode     uint32
}

// ModeUnknown in Created.Mode means the new file's mode is not known.
const ModeUnknown = ^uint32(0)

// ApplyError lists what Apply could not set on a path.
type ApplyError struct {
	Path string
	Errs []error
}

func (e *ApplyError) Error() string {
	msgs := make([]string, len(e.Errs))
	for i, err := range e.Errs {
		msgs[i] = err.Error()
	}
	return fmt.Sprintf("apply metadata to %s: %s", e.Path, strings.Join(msgs, "; "))
}

// Unwrap returns the individual errors, for errors.Is and errors.As.
func (e *ApplyError) Unwrap() []error { return e.Errs }

// Apply sets a node's metadata on path, in this order: owner (lchown; only
// when running as root or when the ids to set are our own effective uid and
// gid, else skipped without error), xattrs (lsetxattr; existing attributes
// not in the node are left alone), mode (not on symlinks; after chown, which
// clears setuid and setgid, and after the xattrs, since chown also clears
// security.capability) and times (atime and mtime; zero times are left
// alone; ctime cannot be set). It tries every step and returns an
// *ApplyError listing the steps that failed, or nil. Sockets are skipped,
// as Create does not make them. Directories' times should be applied after
// their contents are written.
func Apply(path string, n *snapshot.Node, opts ApplyOptions) error {
	if n.Type == snapshot.TypeSocket {
		return nil
	}
	var errs []error

	uid, gid := owner(n, opts)
	// (Created.Mode is not used here: the mode is always set.)
	if euid, egid := effectiveIDs(); mayChown(uid, gid, euid, egid) && (opts.Created == nil || opts.Created.UID != uid || opts.Created.GID != gid) {
		if err := unix.Lchown(path, int(uid), int(gid)); err != nil {
			errs = append(errs, fmt.Errorf("lchown %d:%d: %w", uid, gid, err))
		}
	}

	for _, x := range n.Xattrs {
		if err := unix.Lsetxattr(path, x.Name, x.Value, 0); err != nil {
			errs = append(errs, fmt.Errorf("lsetxattr %q: %w", x.Name, err))
		}
	}

	if n.Type != snapshot.TypeSymlink {
		if err := chmodNoFollow(path, n.Mode&snapshot.ModeMask); err != nil {
			errs = append(errs, fmt.Errorf("chmod %#o: %w", n.Mode&snapshot.ModeMask, err))
		}
	}

	if !n.AccessTime.IsZero() || !n.ModTime.IsZero() {
		ts := []unix.Timespec{timespec(n.AccessTime), timespec(n.ModTime)}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			errs = append(errs, fmt.Errorf("set times: %w", err))
		}
	}

	if len(errs) > 0 {
		return &ApplyError{Path: path, Errs: errs}
	}
	return nil
}

// owner returns the uid and gid to restore: by name when the names exist
// here (unless NumericOwner), else the stored numbers.
func owner(n *snapshot.Node, opts ApplyOptions) (uid, gid uint32) {
	uid, gid = n.UID, n.GID
	if !opts.NumericOwner {
		if n.User != "" {
			if id, ok := userID(n.User); ok {
				uid = id
			}
		}
		if n.Group != "" {
			if id, ok := groupID(n.Group); ok {
				gid = id
			}
		}
	}
	return uid, gid
}

// ApplyFile is Apply for an open regular file: it works on the file
// descriptor, so restoring many files costs no path lookups.
func ApplyFile(f *os.File, n *snapshot.Node, opts ApplyOptions) error {
	return ApplyFd(int(f.Fd()), f.Name(), n, opts)
}

// ApplyFd is ApplyFile for a raw file descriptor; name is only for errors.
func ApplyFd(fd int, name string, n *snapshot.Node, opts ApplyOptions) error {
	var errs []error
	uid, gid := owner(n, opts)
	euid, egid := effectiveIDs()
	c := opts.Created
	chowned := false
	if mayChown(uid, gid, euid, egid) && (c == nil || c.UID != uid || c.GID != gid) {
		chowned = true
		if err := unix.Fchown(fd, int(uid), int(gid)); err != nil {
			errs = append(errs, fmt.Errorf("fchown %d:%d: %w", uid, gid, err))
		}
	}
	for _, x := range n.Xattrs {
		if err := unix.Fsetxattr(fd, x.Name, x.Value, 0); err != nil {
			errs = append(errs, fmt.Errorf("fsetxattr %q: %w", x.Name, err))
		}
	}
	// The mode is set unless the file was created with it and nothing
	// since could have changed it: a chown clears setuid and setgid, an
	// ACL among the xattrs rewrites the group bits.
	if c == nil || c.Mode != n.Mode&snapshot.ModeMask || chowned || len(n.Xattrs) > 0 {
		if err := unix.Fchmod(fd, n.Mode&snapshot.ModeMask); err != nil {
			errs = append(errs, fmt.Errorf("chmod %#o: %w", n.Mode&snapshot.ModeMask, err))
		}
	}
	if !n.AccessTime.IsZero() || !n.ModTime.IsZero() {
		ts := [2]unix.Timespec{timespec(n.AccessTime), timespec(n.ModTime)}
		// utimensat(fd, NULL, ...) is futimens: nanoseconds, no path
		if _, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0); e != 0 {
			errs = append(errs, fmt.Errorf("set times: %w", e))
		}
	}
	if len(errs) > 0 {
		return &ApplyError{Path: name, Errs: errs}
	}
	return nil
}

// effectiveIDs are the process's effective user and group IDs, asked once:
// restore applies metadata to every file, and two system calls per file
// for an answer that never changes were a measurable share of them.
var effectiveIDs = sync.OnceValues(func() (int, int) { return os.Geteuid(), os.Getegid() })

// EffectiveIDs returns the process's effective user and group IDs (asked
// once): the owner of a file it creates, unless the directory decides the
// group.
func EffectiveIDs() (uid, gid int) { return effectiveIDs() }

// Umask returns the process's umask, read from /proc/self/status (umask(2)
// can only be read by setting it, which would race with files created
// meanwhile); ok is false where the kernel does not tell (before 4.7).
var Umask = sync.OnceValues(func() (mask uint32, ok bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, found := strings.CutPrefix(line, "Umask:"); found {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			return uint32(m), err == nil
		}
	}
	return 0, false
})

// mayChown reports whether Apply tries to change the owner: as root, or when
// the owner to set is our own (which then needs no privilege).
func mayChown(uid, gid uint32, euid, egid int) bool {
	return euid == 0 || (int64(uid) == int64(euid) && int64(gid) == int64(egid))
}

// timespec converts t for utimensat; the zero time, or one the platform
// cannot hold, means "leave unchanged".
func timespec(t time.Time) unix.Timespec {
	if !t.IsZero() {
		if ts, err := unix.TimeToTimespec(t); err == nil {
			return ts
		}
	}
	return unix.Timespec{Nsec: unix.UTIME_OMIT}
}

// chmodNoFollow sets mode on path itself; if path is a symlink it does
// nothing (Linux symlinks have no mode of their own).
func chmodNoFollow(path string, mode uint32) error {
	// fchmodat2 (Linux 6.6+) honours AT_SYMLINK_NOFOLLOW.
	err := unix.Fchmodat(unix.AT_FDCWD, path, mode, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil || !(errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM)) {
		return err
	}
	// Older kernels, or seccomp filters that refuse fchmodat2: open the
	// path itself with O_PATH|O_NOFOLLOW and chmod it through /proc, as
	// glibc does.
	fd, oerr := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if oerr != nil {
		return oerr
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil
	}
	if perr := unix.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode); perr == nil || !errors.Is(perr, unix.ENOENT) {
		return perr
	}
	return err // no /proc: report the first error
}
