package restore

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/directio"
)

// Large files are written around the page cache (O_DIRECT): on a VM whose
// host takes back free memory, taking a fresh page-cache page costs more
// than the disk write itself (0.4 to 2.5 s of system time per GiB buffered,
// docs/PERFORMANCE.md), and a restore onto a live server then does not
// evict what the server caches. Small files stay buffered: a direct write
// waits for the disk, and a file smaller than a few chunks gains nothing
// from skipping the cache (GOROOT's 15,000 files).
const directThreshold = 8 << 20

// stageSize is the most a worker gathers of one file before writing it: a
// range delivers consecutive chunks of a file, which then leave in one
// write instead of one per chunk. 4 MiB (a whole local range) measured no
// less CPU than 1 MiB on the bench's two 1 GiB files, and held 12-15 MB
// more.
const stageSize = 1 << 20

// Seams for tests: turning O_DIRECT on or off on a descriptor, and the
// writes made while it is on (a file system may take the flag and refuse
// the writes, with EINVAL).
var (
	setDirect    = directio.SetDirect
	pwriteDirect = directio.PwriteFull
)

// newDirectFile turns on O_DIRECT for fd, a file of size bytes just
// created (or truncated) for writing; it returns nil, fd unchanged, where
// the file system refuses.
func newDirectFile(fd int, size int64) *directio.File {
	return directio.NewFile(fd, size, directio.Options{SetDirect: setDirect, PwriteDirect: pwriteDirect})
}

const alignMask = directio.Align - 1

// stager gathers, for one worker, consecutive chunks of one file delivered
// one after another (a range holds a file's chunks in order), so that they
// leave in one write of up to stageSize.
type stager struct {
	buf    []byte // aligned, stageSize; made on first use
	f      *openFile
	start  int64 // the run's first byte in the file
	n      int   // its length
	chunks int   // chunks wholly in the run, finished when it is written
}

// add stages data, the chunk at off of f (f.dw is set); the chunk is
// finished (f.done) once written.
func (s *stager) add(rs *restorer, f *openFile, off int64, data []byte) {
	if s.f != nil && (s.f != f || s.start+int64(s.n) != off) {
		s.flush(rs)
	}
	for {
		if s.f == nil {
			if s.buf == nil {
				s.buf = directio.Buffer(stageSize)
			}
			s.f, s.start, s.n = f, off, 0
		}
		pos := int(s.start&alignMask) + s.n
		m := copy(s.buf[pos:], data)
		s.n += m
		data = data[m:]
		if len(data) == 0 {
			break
		}
		// full: write it, the rest of the chunk starts a run of its own
		s.flush(rs)
		off += int64(m)
	}
	s.chunks++
}

// flush writes the run and finishes its chunks.
func (s *stager) flush(rs *restorer) {
	f := s.f
	if f == nil {
		return
	}
	var err error
	if s.n > 0 && !f.failed.Load() {
		err = f.dw.WriteRun(s.buf, s.start, s.n)
		if err != nil {
			err = fmt.Errorf("restore %s at offset %d: %w", rs.relOf(f.job.entryRef), s.start, err)
		}
	}
	if err != nil && s.chunks == 0 {
		// a run cut by a full buffer: its chunk finishes in the next
		f.failed.Store(true)
		rs.fail(err)
	}
	for range s.chunks {
		f.done(rs, err)
		err = nil
	}
	s.f, s.n, s.chunks = nil, 0, 0
}

// preallocate reserves the blocks a file's data chunks (todo, ascending,
// at offsets) will be written to, before its direct writes. ext4 takes
// the inode lock exclusively for a direct write into a hole or past the
// end (it allocates), so the workers writing one file's ranges wait for
// each other's disk writes; into preallocated (unwritten) blocks an
// aligned direct write is an overwrite and they go on together. On this
// VM four writers of 0.75 MiB runs into a new 1 GiB file wrote 0.9-1.35
// GB/s, 1.6-1.85 GB/s after fallocate (docs/PERFORMANCE.md). Only the
// blocks data touches are reserved, so a sparse file's holes stay holes;
// the last block whole, since it is written padded (Finish cuts the
// file). Errors are ignored: a file system without fallocate is written
// as before, and a full disk is reported by the write that does not fit.
func preallocate(fd int, todo []int, offsets []int64, sizes []uint32) {
	start, end := int64(0), int64(0)
	reserve := func() {
		if end > start {
			unix.Fallocate(fd, 0, start, end-start)
		}
	}
	for _, i := range todo {
		from := offsets[i] &^ alignMask
		to := (offsets[i] + int64(sizes[i]) + alignMask) &^ alignMask
		if from <= end && end > start {
			end = max(end, to)
			continue
		}
		reserve()
		start, end = from, to
	}
	reserve()
}
