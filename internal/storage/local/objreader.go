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
	} else if o.bounceOK(p) && o.readBounced(p, off) {
		return len(p), nil
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

// bounceOK reports whether a large read that is not aligned goes around
// the page cache through a bounce buffer (readBounced).
func (o *objectReader) bounceOK(p []byte) bool {
	if !o.direct || len(p) < directMinRead {
		return false
	}
	o.dfdOnce.Do(func() { o.dfd = openDirect(o.path) })
	return o.dfd >= 0
}

// bouncePool holds the aligned buffers of readBounced: a restore reads
// ranges of up to 4 MiB (repo's localRanges), and a fresh buffer for each
// would be faulted in anew.
var bouncePool sync.Pool

// readBounced reads p at off around the page cache: the aligned blocks
// that cover it, into an aligned buffer, then copied into p (a copy costs
// far less than a page cache page; see direct.go). It reports false when
// the direct read failed or came up short; the caller then reads through
// the page cache, which tells a refused transfer from a shrunken file.
func (o *objectReader) readBounced(p []byte, off int64) bool {
	start := off &^ (directio.Align - 1)
	end := off + int64(len(p)) // within the object: ReadAt checked
	n := directio.RoundUp(int(end - start))
	bp, _ := bouncePool.Get().(*[]byte)
	if bp == nil || cap(*bp) < n {
		b := directio.Buffer(max(n, 4<<20+2*directio.Align))
		bp = &b
	}
	defer bouncePool.Put(bp)
	got, err := preadDirect(o.dfd, (*bp)[:n], start)
	if err != nil || int64(got) < end-start {
		return false
	}
	copy(p, (*bp)[off-start:end-start])
	return true
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
