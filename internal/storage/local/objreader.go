package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/storage"
)

// objectReader reads ranges of one object through a raw file descriptor:
// an *os.File would register the descriptor with the runtime's poller (two
// fcntl calls and a failing epoll_ctl per open), which regular files gain
// nothing from.
type objectReader struct {
	fd   int
	size int64
	name string
	// with the backend's SetDirectIO: path to open a second descriptor
	// with O_DIRECT on the first large aligned read (dfd; -1 when the
	// file system refuses it)
	path    string
	direct  bool
	dfd     int
	dfdOnce sync.Once
}

// OpenRange implements storage.RangeOpener.
func (b *Backend) OpenRange(ctx context.Context, h storage.Handle) (storage.ObjectReader, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("open %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open %s: %w", h, err)
	}
	// O_NONBLOCK: a FIFO that a hostile repository holds must not block
	// the open; the stat below refuses anything but a regular file.
	fd, err := unix.Open(b.path(h), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", h, notExist(err))
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open %s: %w", h, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("open %s: not a regular file (mode %#o)", h, st.Mode&unix.S_IFMT)
	}
	return &objectReader{fd: fd, size: st.Size, name: h.String(), path: b.path(h), direct: b.direct, dfd: -1}, nil
}

func (o *objectReader) Size() int64 { return o.size }

func (o *objectReader) ReadAt(p []byte, off int64) (int, error) {
	if _, err := storage.CheckRange(off, int64(len(p)), o.size); err != nil {
		return 0, fmt.Errorf("read %s: %w", o.name, err)
	}
	if o.directOK(p, off) {
		if n, err := preadDirect(o.dfd, p[:directio.RoundUp(len(p))], off); err == nil && n >= len(p) {
			return len(p), nil
		}
		// a direct read the file system refused, or a file that
		// shrank: the buffered read below tells which
	}
	n := 0
	for n < len(p) {
		m, err := unix.Pread(o.fd, p[n:], off+int64(n))
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("read %s: %w", o.name, diskErr(err))
		}
		if m == 0 {
			return n, fmt.Errorf("read %s: file shrank while reading: %w", o.name, io.ErrUnexpectedEOF)
		}
		n += m
	}
	return n, nil
}

// directOK reports whether the read of p at off goes around the page
// cache: a large read, aligned, and either a whole number of blocks or
// up to the object's end with room in p to round it up (the read then
// stops at the end). It opens the direct descriptor on first use.
func (o *objectReader) directOK(p []byte, off int64) bool {
	if !o.direct || len(p) < directMinRead || off%directio.Align != 0 || !directio.Aligned(p) {
		return false
	}
	if len(p)%directio.Align != 0 && (off+int64(len(p)) != o.size || cap(p) < directio.RoundUp(len(p))) {
		return false
	}
	o.dfdOnce.Do(func() { o.dfd = openDirect(o.path) })
	return o.dfd >= 0
}

func (o *objectReader) Close() error {
	if o.dfd >= 0 {
		unix.Close(o.dfd)
		o.dfd = -1
	}
	if o.fd < 0 {
		return nil
	}
	err := unix.Close(o.fd)
	o.fd = -1
	return err
}
