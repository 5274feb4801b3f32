package local

import (
	"errors"
	"os"
	"sync"
	"syscall"

	"github.com/floe-backup/floe/internal/directio"
	"golang.org/x/sys/unix"
)

// DirectSuits reports whether dir is on a file system whose direct I/O
// a client may use by default: the local disk file systems, where O_DIRECT
// goes straight to the device. Elsewhere it may not: tmpfs refuses it, and
// on NFS or FUSE every direct write is a synchronous round trip.
func DirectSuits(dir string) bool {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return false
	}
	switch uint32(st.Type) {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.F2FS_SUPER_MAGIC:
		return true
	}
	return false
}

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

// directStream writes a streamed object (SaveStream) around the page
// cache: writes are gathered into aligned buffers of streamStage bytes,
// each written with O_DIRECT by one of streamWriters goroutines while
// the next fills. The caller is a pack writer holding the lock every
// saver of a backup needs, so a write never waits for the disk: a full
// buffer is queued, and the next one comes from those already written or
// from the pool; it waits only when streamQueue buffers (a pack's worth)
// are queued behind a disk that has stalled. The last partial block goes
// through the page cache at finish.
type directStream struct {
	fd   int
	off  int64  // bytes queued so far
	cur  []byte // the buffer being filled
	work chan stagedWrite
	done sync.WaitGroup

	mu    sync.Mutex
	err   error    // the first write error
	spare [][]byte // buffers written, for the next
}

var errAborted = errors.New("aborted")

type stagedWrite struct {
	buf []byte
	off int64
}

// streamStage is the size of one direct write. stagePool keeps the
// buffers from one pack to the next, so that a backup does not fault in
// fresh memory for each. Two writes in flight keep a virtual disk's queue
// busier than one.
const (
	streamStage   = 1 << 20
	streamQueue   = 16
	streamWriters = 2
)

var stagePool = sync.Pool{New: func() any { b := directio.Buffer(streamStage); return &b }}

func getStage() []byte { return (*stagePool.Get().(*[]byte))[:0] }

func putStage(b []byte) {
	b = b[:0]
	stagePool.Put(&b)
}

// newDirectStream turns on O_DIRECT for f, an empty file just created,
// or returns nil when the file system refuses it.
func newDirectStream(f *os.File) *directStream {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	fd := -1
	if rc.Control(func(sfd uintptr) { fd = int(sfd) }) != nil || directio.SetDirect(fd, true) != nil {
		return nil
	}
	s := &directStream{fd: fd, work: make(chan stagedWrite, streamQueue), cur: getStage()}
	s.done.Add(streamWriters)
	for range streamWriters {
		go s.writer()
	}
	return s
}

func (s *directStream) writer() {
	defer s.done.Done()
	for w := range s.work {
		if s.firstErr() == nil {
			err := directio.PwriteFull(s.fd, w.buf, w.off)
			if errors.Is(err, syscall.EINVAL) {
				// the file system took O_DIRECT but not this
				// transfer: this and the rest go through the
				// page cache
				if err = directio.SetDirect(s.fd, false); err == nil {
					err = directio.PwriteFull(s.fd, w.buf, w.off)
				}
			}
			if err != nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
			}
		}
		s.mu.Lock()
		s.spare = append(s.spare, w.buf[:0])
		s.mu.Unlock()
	}
}

func (s *directStream) firstErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// write gathers data; the error of an earlier buffer's write is returned
// by a later write, or by finish.
func (s *directStream) write(data []byte) error {
	if err := s.firstErr(); err != nil {
		return err
	}
	for len(data) > 0 {
		n := copy(s.cur[len(s.cur):cap(s.cur)], data)
		s.cur, data = s.cur[:len(s.cur)+n], data[n:]
		if len(s.cur) == cap(s.cur) {
			s.work <- stagedWrite{buf: s.cur, off: s.off}
			s.off += int64(len(s.cur))
			s.mu.Lock()
			if k := len(s.spare); k > 0 {
				s.cur, s.spare = s.spare[k-1], s.spare[:k-1]
			} else {
				s.cur = nil
			}
			s.mu.Unlock()
			if s.cur == nil {
				s.cur = getStage()
			}
		}
	}
	return nil
}

// finish waits for the buffers in flight and writes the rest: the whole
// blocks directly, the last partial one through the page cache. It
// returns the buffers to the pool; the stream is not used afterwards.
func (s *directStream) finish() error {
	close(s.work)
	s.done.Wait()
	err := s.err
	if err == nil && len(s.cur) > 0 {
		n := len(s.cur) &^ (directio.Align - 1)
		err = directio.PwriteFull(s.fd, s.cur[:n], s.off)
		if errors.Is(err, syscall.EINVAL) {
			n, err = 0, nil // through the page cache, with the tail
		}
		if err == nil {
			if err = directio.SetDirect(s.fd, false); err == nil {
				err = directio.PwriteFull(s.fd, s.cur[n:], s.off+int64(n))
			}
		}
	}
	s.release()
	return err
}

// abort stops the goroutines and drops what was not written.
func (s *directStream) abort() {
	s.mu.Lock()
	if s.err == nil {
		s.err = errAborted // the writers skip what is queued
	}
	s.mu.Unlock()
	close(s.work)
	s.done.Wait()
	s.release()
}

func (s *directStream) release() {
	putStage(s.cur)
	for _, b := range s.spare {
		putStage(b)
	}
	s.cur, s.spare = nil, nil
}
