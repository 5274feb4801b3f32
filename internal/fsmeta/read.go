//go:build linux

package fsmeta

import (
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// OpenForRead opens a file for reading without following a final symlink
// and, where allowed (owner or root), without updating its access time, so
// that reading for a backup or an audit leaves no trace on the file.
//
// The descriptor is opened with a raw system call and wrapped with
// os.NewFile: os.OpenFile would try to register it with the runtime's
// poller, an epoll_ctl that always fails for a regular file, plus fcntl
// calls, for every file a backup reads.
func OpenForRead(path string) (*os.File, error) {
	fd, err := openRaw(path)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

func openRetry(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0)
		if !errors.Is(err, syscall.EINTR) {
			return fd, err
		}
	}
}

// Segments walks the data and hole regions of the first size bytes of f
// with SEEK_DATA/SEEK_HOLE, so the holes of a sparse file are never read.
// Where the file system cannot tell, the whole file is one data region.
func Segments(f *os.File, size uint64, fn func(off, n int64, hole bool) error) error {
	return segments(int(f.Fd()), size, fn)
}

func segments(fd int, size uint64, fn func(off, n int64, hole bool) error) error {
	end := int64(size)
	var off int64
	for off < end {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, syscall.ENXIO) {
			data = end // only a hole remains
		} else if err != nil {
			return fn(off, end-off, false)
		}
		data = min(data, end)
		if data > off {
			if err := fn(off, data-off, true); err != nil {
				return err
			}
		}
		if data >= end {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(hole, end)
		if err := fn(data, hole-data, false); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// ReadDir lists a directory sorted by name, as os.ReadDir does, but opened
// without updating its access time where allowed: otherwise every backup
// would change the directory's atime, so the next backup would see new
// metadata and store a new tree for a directory in which nothing changed.
func ReadDir(path string) ([]os.DirEntry, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOATIME, 0)
	if errors.Is(err, syscall.EPERM) {
		f, err = os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECTORY, 0)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	slices.SortFunc(ents, func(a, b os.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return ents, err
}

// File is a regular file opened for reading on a raw descriptor, for a
// backup that reads many small files: os.File costs fcntl calls and a
// failed poller registration (epoll_ctl) on every open, and its reads
// lock. A File is used by one goroutine at a time.
type File struct {
	fd   int
	path string
	// nonblock: opened with O_NONBLOCK (Dir.OpenFile), which a regular
	// file ignores, but a few special files that say they are regular
	// (in /proc) do not: the first EAGAIN clears it
	nonblock bool
}

// OpenFile opens path as OpenForRead does (no final symlink followed, no
// access time updated where allowed) on a raw descriptor.
func OpenFile(path string) (*File, error) {
	fd, err := openRaw(path)
	if err != nil {
		return nil, err
	}
	return &File{fd: fd, path: path}, nil
}

// Read reads from the file's offset; at the end it returns io.EOF.
func (f *File) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(f.fd, p)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if errors.Is(err, syscall.EAGAIN) && f.blocking() {
			continue
		}
		if err != nil {
			return 0, &os.PathError{Op: "read", Path: f.path, Err: err}
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// ReadAt reads at offset off (pread), as io.ReaderAt says.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	total := 0
	for len(p) > 0 {
		n, err := unix.Pread(f.fd, p, off)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if errors.Is(err, syscall.EAGAIN) && f.blocking() {
			continue
		}
		if err != nil {
			return total, &os.PathError{Op: "read", Path: f.path, Err: err}
		}
		if n == 0 {
			return total, io.EOF
		}
		total += n
		off += int64(n)
		p = p[n:]
	}
	return total, nil
}

// blocking clears O_NONBLOCK if the file was opened with it, and reports
// whether it did (then a read that said EAGAIN is tried again, waiting).
func (f *File) blocking() bool {
	if !f.nonblock {
		return false
	}
	fl, err := unix.FcntlInt(uintptr(f.fd), unix.F_GETFL, 0)
	if err != nil {
		return false
	}
	if _, err := unix.FcntlInt(uintptr(f.fd), unix.F_SETFL, fl&^unix.O_NONBLOCK); err != nil {
		return false
	}
	f.nonblock = false
	return true
}

// Rewind sets the file's offset back to its start.
func (f *File) Rewind() error {
	if _, err := unix.Seek(f.fd, 0, io.SeekStart); err != nil {
		return &os.PathError{Op: "seek", Path: f.path, Err: err}
	}
	return nil
}

// Stat is fstat of the open file.
func (f *File) Stat(st *unix.Stat_t) error {
	for {
		err := unix.Fstat(f.fd, st)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "fstat", Path: f.path, Err: err}
		}
		return nil
	}
}

// Segments is the package's Segments for this file.
func (f *File) Segments(size uint64, fn func(off, n int64, hole bool) error) error {
	return segments(f.fd, size, fn)
}

// Close closes the file.
func (f *File) Close() error { return unix.Close(f.fd) }

// openRaw opens path for reading on a raw descriptor: no final symlink
// followed, no access time updated where the caller may ask (O_NOATIME
// needs the file's owner: EPERM otherwise, then opened without it).
func openRaw(path string) (int, error) {
	flags := unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := openRetry(path, flags|unix.O_NOATIME)
	if errors.Is(err, syscall.EPERM) {
		fd, err = openRetry(path, flags)
	}
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}
