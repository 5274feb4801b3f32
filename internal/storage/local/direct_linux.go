package local

import (
	"errors"
	"os"
	"syscall"

	"github.com/floe-backup/floe/internal/directio"
	"golang.org/x/sys/unix"
)

// writeDirect writes data to the empty file f with O_DIRECT: the aligned
// part directly, the last partial block (and anything the file system
// would not take directly) through the page cache. It reports false,
// having written nothing, when direct I/O is not possible here (small or
// unaligned buffer, a file system without O_DIRECT): the caller then
// writes buffered.
func writeDirect(f *os.File, data []byte) (bool, error) {
	if len(data) < directMinWrite || !directio.Aligned(data) {
		return false, nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return false, nil
	}
	handled := false
	var werr error
	cerr := rc.Control(func(sfd uintptr) {
		fd := int(sfd)
		flags, err := unix.FcntlInt(sfd, unix.F_GETFL, 0)
		if err != nil {
			return
		}
		if _, err := unix.FcntlInt(sfd, unix.F_SETFL, flags|unix.O_DIRECT); err != nil {
			return
		}
		handled = true
		n := len(data) &^ (directio.Align - 1)
		off, err := pwriteAll(fd, data[:n], 0)
		if errors.Is(err, syscall.EINVAL) {
			// the file system took O_DIRECT but not this transfer:
			// the rest goes through the page cache
			n, err = off, nil
		}
		// back to buffered for the tail
		if _, ferr := unix.FcntlInt(sfd, unix.F_SETFL, flags); ferr != nil && err == nil {
			err = ferr
		}
		if err == nil {
			_, err = pwriteAll(fd, data[n:], int64(n))
		}
		werr = err
	})
	if cerr != nil {
		return false, nil
	}
	return handled, werr
}

// pwriteAll writes p at off, and returns how many bytes it wrote.
func pwriteAll(fd int, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		m, err := unix.Pwrite(fd, p[done:], off+int64(done))
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return done, err
		}
		if m == 0 {
			return done, syscall.EIO
		}
		done += m
	}
	return done, nil
}

// openDirect opens path for direct reads, or returns -1.
func openDirect(path string) int {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_DIRECT, 0)
	if err != nil {
		return -1
	}
	return fd
}

// preadDirect reads into p (aligned, and a multiple of directio.Align
// long) at off with the direct descriptor fd; a short count means the
// end of the file.
func preadDirect(fd int, p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		m, err := unix.Pread(fd, p[done:], off+int64(done))
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return done, err
		}
		if m == 0 {
			break
		}
		done += m
	}
	return done, nil
}
