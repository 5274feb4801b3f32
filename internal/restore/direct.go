package restore

import (
	"errors"
	"fmt"
	"sync"

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

// A block shared by two chunks that have not both arrived holds a pooled
// block buffer until the second does. (A worker's stage buffer is its own,
// made when it first meets a large file: in a sync.Pool the 4 MiB buffers
// were dropped at every garbage collection and made again, 2.4% of a
// restore's CPU in clearing them.)
var blockPool = sync.Pool{New: func() any { b := directio.Buffer(directio.Align); return &b }}

// Seams for tests: turning O_DIRECT on or off on a descriptor, and the
// writes made while it is on (a file system may take the flag and refuse
// the writes, with EINVAL).
var (
	setDirect = func(fd int, on bool) error {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			return err
		}
		if on {
			flags |= unix.O_DIRECT
		} else {
			flags &^= unix.O_DIRECT
		}
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags)
		return err
	}
	pwriteDirect = pwriteFull
)

// directFile writes one file with O_DIRECT, whose chunks arrive in any
// order from several workers: each run of bytes (writeRun) writes the
// whole blocks it covers at once, and the partial blocks at its ends, which
// it shares with its neighbours, are gathered here until all their bytes
// are known, then written. The last block of a file whose size is not a
// multiple of the block is written padded with zeros, and finish cuts the
// file to its size. Where the file system refuses a direct write (EINVAL)
// the file goes on buffered, gathered blocks included, and nothing is lost.
type directFile struct {
	fd   int
	size int64

	mu     sync.Mutex
	direct bool                 // false once fallen back to buffered
	blocks map[int64]*partBlock // by block offset
}

// partBlock is a block of which some bytes are known.
type partBlock struct {
	buf  *[]byte // from blockPool, zeroed when taken
	have int     // bytes known
	data bool    // some of them come from data, not from a skipped zero chunk
}

// newDirectFile turns on O_DIRECT for fd, a file of size bytes just
// created (or truncated) for writing; it returns nil, fd unchanged, where
// the file system refuses.
func newDirectFile(fd int, size int64) *directFile {
	if setDirect(fd, true) != nil {
		return nil
	}
	return &directFile{fd: fd, size: size, direct: true, blocks: map[int64]*partBlock{}}
}

const alignMask = directio.Align - 1

// need is how many bytes of the block at off belong to the file.
func (d *directFile) need(off int64) int {
	return int(min(directio.Align, d.size-off))
}

// blockWrite is a block ready to be written.
type blockWrite struct {
	off int64
	b   *partBlock
}

// addLocked records n known bytes at off, all in one block: p's, or zeros
// when p is nil. It returns the block when that completed it.
func (d *directFile) addLocked(off int64, p []byte, n int) (blockWrite, bool) {
	bo := off &^ alignMask
	b := d.blocks[bo]
	if b == nil {
		buf := blockPool.Get().(*[]byte)
		clear(*buf)
		b = &partBlock{buf: buf}
		d.blocks[bo] = b
	}
	if p != nil {
		copy((*b.buf)[off-bo:], p[:n])
		b.data = true
	}
	b.have += n
	if b.have < d.need(bo) {
		return blockWrite{}, false
	}
	delete(d.blocks, bo)
	return blockWrite{bo, b}, true
}

// writeRun writes the n bytes at file offset off, which buf holds from
// buf[off%Align] on (buf is aligned, starts at the block of off, and
// reaches at least to the end of the block of off+n-1). A partial block
// at either end that this run completes is copied into buf and written
// with the rest: one write per run, not one more per chunk boundary.
func (d *directFile) writeRun(buf []byte, off int64, n int) error {
	base := off &^ alignMask
	end := off + int64(n)
	lo := (off + alignMask) &^ alignMask // first whole block
	hi := end &^ alignMask               // end of the last whole block
	d.mu.Lock()
	if !d.direct {
		d.mu.Unlock()
		return pwriteFull(d.fd, buf[off-base:end-base], off)
	}
	from, to := lo, hi // what is written
	add := func(a, b int64) {
		w, ok := d.addLocked(a, buf[a-base:b-base], int(b-a))
		if !ok {
			return
		}
		copy(buf[w.off-base:w.off-base+directio.Align], *w.b.buf)
		blockPool.Put(w.b.buf)
		from, to = min(from, w.off), max(to, w.off+directio.Align)
	}
	if lo > hi {
		from, to = end, end // within one block
	}
	partialBlocks(off, end, add)
	d.mu.Unlock()
	if from >= to {
		return nil
	}
	return d.write(buf[from-base:to-base], from)
}

// partialBlocks calls add for the parts of [off, end) that only partly
// cover a block: the whole span when it lies within one block, else the
// head before the first block boundary and the tail after the last.
func partialBlocks(off, end int64, add func(from, to int64)) {
	lo := (off + alignMask) &^ alignMask
	hi := end &^ alignMask
	if lo > hi {
		add(off, end)
		return
	}
	if off < lo {
		add(off, lo)
	}
	if end > hi {
		add(hi, end)
	}
}

// zero records that the n bytes at off are zeros that are not written (an
// all-zero chunk of a sparse file, already a hole): they complete the
// blocks that chunk shares with its neighbours.
func (d *directFile) zero(off, n int64) error {
	end := off + n
	d.mu.Lock()
	if !d.direct {
		d.mu.Unlock()
		return nil // buffered: the hole is there already
	}
	var ready []blockWrite
	add := func(from, to int64) {
		if w, ok := d.addLocked(from, nil, int(to-from)); ok {
			ready = append(ready, w)
		}
	}
	partialBlocks(off, end, add)
	d.mu.Unlock()
	var err error
	for _, w := range ready {
		if !w.b.data {
			blockPool.Put(w.b.buf) // zeros only: the hole stays
			continue
		}
		if werr := d.writeBlock(w); err == nil {
			err = werr
		}
	}
	return err
}

// writeBlock writes a completed block (whole, padded with zeros past the
// end of the file) and returns its buffer to the pool.
func (d *directFile) writeBlock(w blockWrite) error {
	err := d.write(*w.b.buf, w.off)
	blockPool.Put(w.b.buf)
	return err
}

// write writes p (aligned, whole blocks) at off directly, or buffered once
// the file has fallen back.
func (d *directFile) write(p []byte, off int64) error {
	d.mu.Lock()
	direct := d.direct
	d.mu.Unlock()
	if direct {
		err := pwriteDirect(d.fd, p, off)
		if !errors.Is(err, unix.EINVAL) {
			return err
		}
		// The file system took O_DIRECT but not this write (some
		// FUSE and NFS setups, a device with larger blocks).
		if err := d.fallBack(); err != nil {
			return err
		}
	}
	// buffered: nothing past the end of the file
	if end := off + int64(len(p)); end > d.size {
		p = p[:max(0, d.size-off)]
	}
	return pwriteFull(d.fd, p, off)
}

// fallBack turns the file to buffered writes. The blocks gathered so far
// are written as they are, their missing bytes as zeros: those bytes
// belong to runs not written yet, which now write them buffered after
// this (they check under the same lock), and no whole-block write of
// another run overlaps a block gathered here.
func (d *directFile) fallBack() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.direct {
		return nil
	}
	if err := setDirect(d.fd, false); err != nil {
		return fmt.Errorf("turn off direct I/O after the file system refused it: %w", err)
	}
	d.direct = false
	var err error
	for off, b := range d.blocks {
		if b.data && err == nil {
			err = pwriteFull(d.fd, (*b.buf)[:d.need(off)], off)
		}
		blockPool.Put(b.buf)
		delete(d.blocks, off)
	}
	return err
}

// finish checks that every block was written and sets the file's size
// (the last block may have been written padded).
func (d *directFile) finish() error {
	d.mu.Lock()
	left := len(d.blocks)
	d.mu.Unlock()
	d.release()
	if left > 0 {
		return fmt.Errorf("%d blocks never completed (a chunk was not written)", left)
	}
	if d.size&alignMask != 0 {
		if err := unix.Ftruncate(d.fd, d.size); err != nil {
			return fmt.Errorf("set size: %w", err)
		}
	}
	return nil
}

// release returns the buffers of the blocks still gathered (a failed
// file).
func (d *directFile) release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for off, b := range d.blocks {
		blockPool.Put(b.buf)
		delete(d.blocks, off)
	}
}

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
		err = f.dw.writeRun(s.buf, s.start, s.n)
		if err != nil {
			err = fmt.Errorf("restore %s at offset %d: %w", f.job.rel, s.start, err)
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
