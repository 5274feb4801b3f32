package directio

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/sys/unix"
)

// File writes one file, or one image onto a block device, with O_DIRECT,
// its bytes arriving in runs in any order from several goroutines (a
// restore's workers): each run (WriteRun) writes the whole blocks it
// covers at once, and the partial blocks at its ends, which it shares
// with its neighbours, are gathered here until all their bytes are known,
// then written. The last block of a size that is not a multiple of Align
// is written padded with zeros and Finish cuts the file to its size; on a
// device (Options.BufferedFD), which cannot be cut and whose bytes past
// the image are not ours to overwrite, that block's bytes go through a
// descriptor without O_DIRECT instead. Where the file system refuses a
// direct write (EINVAL) the file goes on buffered, gathered blocks
// included, and nothing is lost.
type File struct {
	fd   int
	size int64
	ops  Options

	mu     sync.Mutex
	direct bool                 // false once fallen back to buffered
	blocks map[int64]*partBlock // by block offset
}

// Options of a File. The zero value writes a regular file through fcntl
// and pwrite.
type Options struct {
	// Device: fd is a block device, never written past size; BufferedFD
	// is a descriptor of the same device without O_DIRECT, for the bytes
	// of a last partial block.
	Device     bool
	BufferedFD int
	// SetDirect turns O_DIRECT on or off on a descriptor, and PwriteDirect
	// makes the writes while it is on (nil: fcntl, PwriteFull): seams
	// for tests of file systems that refuse.
	SetDirect    func(fd int, on bool) error
	PwriteDirect func(fd int, p []byte, off int64) error
}

// partBlock is a block of which some bytes are known.
type partBlock struct {
	buf  *[]byte // from blockPool, zeroed when taken
	have int     // bytes known
	data bool    // some of them come from data, not from a skipped zero range
}

// blockPool holds the buffers of gathered blocks: a block shared by two
// runs that have not both arrived holds one until the second does.
var blockPool = sync.Pool{New: func() any { b := Buffer(Align); return &b }}

// SetDirect turns O_DIRECT on or off on fd.
func SetDirect(fd int, on bool) error {
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

// PwriteFull writes all of p at off.
func PwriteFull(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(fd, p, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// NewFile turns on O_DIRECT for fd, a file of size bytes just created (or
// truncated) for writing, or a block device to write size bytes onto; it
// returns nil, fd unchanged, where the file system refuses.
func NewFile(fd int, size int64, opts Options) *File {
	if opts.SetDirect == nil {
		opts.SetDirect = SetDirect
	}
	if opts.PwriteDirect == nil {
		opts.PwriteDirect = PwriteFull
	}
	if opts.SetDirect(fd, true) != nil {
		return nil
	}
	return &File{fd: fd, size: size, ops: opts, direct: true, blocks: map[int64]*partBlock{}}
}

const alignMask = Align - 1

// Direct reports whether the file is still written directly (false once
// it has fallen back to buffered writes).
func (d *File) Direct() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.direct
}

// need is how many bytes of the block at off belong to the file.
func (d *File) need(off int64) int {
	return int(min(Align, d.size-off))
}

// blockWrite is a block ready to be written.
type blockWrite struct {
	off int64
	b   *partBlock
}

// addLocked records n known bytes at off, all in one block: p's, or zeros
// when p is nil. It returns the block when that completed it.
func (d *File) addLocked(off int64, p []byte, n int) (blockWrite, bool) {
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

// WriteRun writes the n bytes at file offset off, which buf holds from
// buf[off%Align] on (buf is aligned, starts at the block of off, and
// reaches at least to the end of the block of off+n-1). A partial block
// at either end that this run completes is copied into buf and written
// with the rest: one write per run, not one more per chunk boundary.
func (d *File) WriteRun(buf []byte, off int64, n int) error {
	base := off &^ alignMask
	end := off + int64(n)
	lo := (off + alignMask) &^ alignMask // first whole block
	hi := end &^ alignMask               // end of the last whole block
	d.mu.Lock()
	if !d.direct {
		d.mu.Unlock()
		return PwriteFull(d.fd, buf[off-base:end-base], off)
	}
	from, to := lo, hi // what is written
	add := func(a, b int64) {
		w, ok := d.addLocked(a, buf[a-base:b-base], int(b-a))
		if !ok {
			return
		}
		copy(buf[w.off-base:w.off-base+Align], *w.b.buf)
		blockPool.Put(w.b.buf)
		from, to = min(from, w.off), max(to, w.off+Align)
	}
	if lo > hi {
		from, to = end, end // within one block
	}
	PartialBlocks(off, end, add)
	d.mu.Unlock()
	if from >= to {
		return nil
	}
	return d.write(buf[from-base:to-base], from)
}

// PartialBlocks calls add for the parts of [off, end) that only partly
// cover a block: the whole span when it lies within one block, else the
// head before the first block boundary and the tail after the last.
func PartialBlocks(off, end int64, add func(from, to int64)) {
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

// Zero records that the n bytes at off are zeros that are not written (an
// all-zero chunk of a sparse file, already a hole; a zero region of an
// image that the device was asked to zero): they complete the blocks that
// range shares with its neighbours.
func (d *File) Zero(off, n int64) error {
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
	PartialBlocks(off, end, add)
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
func (d *File) writeBlock(w blockWrite) error {
	err := d.write(*w.b.buf, w.off)
	blockPool.Put(w.b.buf)
	return err
}

// write writes p (aligned, whole blocks) at off directly, or buffered once
// the file has fallen back.
func (d *File) write(p []byte, off int64) error {
	d.mu.Lock()
	direct := d.direct
	d.mu.Unlock()
	if direct {
		var tail []byte
		if end := off + int64(len(p)); d.ops.Device && end > d.size {
			// the last block of a device: its bytes, and no more,
			// through the buffered descriptor
			whole := (d.size &^ alignMask) - off
			tail, p = p[whole:d.size-off], p[:whole]
		}
		var err error
		if len(p) > 0 {
			err = d.ops.PwriteDirect(d.fd, p, off)
		}
		if err == nil && len(tail) > 0 {
			err = PwriteFull(d.ops.BufferedFD, tail, off+int64(len(p)))
		}
		if !errors.Is(err, unix.EINVAL) {
			return err
		}
		// The file system took O_DIRECT but not this write (some
		// FUSE and NFS setups, a device with larger blocks).
		if err := d.fallBack(); err != nil {
			return err
		}
		p = append(p, tail...)
	}
	// buffered: nothing past the end of the file
	if end := off + int64(len(p)); end > d.size {
		p = p[:max(0, d.size-off)]
	}
	return PwriteFull(d.fd, p, off)
}

// fallBack turns the file to buffered writes. The blocks gathered so far
// are written as they are, their missing bytes as zeros: those bytes
// belong to runs not written yet, which now write them buffered after
// this (they check under the same lock), and no whole-block write of
// another run overlaps a block gathered here.
func (d *File) fallBack() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.direct {
		return nil
	}
	if err := d.ops.SetDirect(d.fd, false); err != nil {
		return fmt.Errorf("turn off direct I/O after the file system refused it: %w", err)
	}
	d.direct = false
	var err error
	for off, b := range d.blocks {
		if b.data && err == nil {
			err = PwriteFull(d.fd, (*b.buf)[:d.need(off)], off)
		}
		blockPool.Put(b.buf)
		delete(d.blocks, off)
	}
	return err
}

// Finish checks that every block was written and sets a file's size (the
// last block may have been written padded).
func (d *File) Finish() error {
	d.mu.Lock()
	left := len(d.blocks)
	d.mu.Unlock()
	d.Release()
	if left > 0 {
		return fmt.Errorf("%d blocks never completed (a chunk was not written)", left)
	}
	if d.size&alignMask != 0 && !d.ops.Device {
		if err := unix.Ftruncate(d.fd, d.size); err != nil {
			return fmt.Errorf("set size: %w", err)
		}
	}
	return nil
}

// Release returns the buffers of the blocks still gathered (a failed
// file).
func (d *File) Release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for off, b := range d.blocks {
		blockPool.Put(b.buf)
		delete(d.blocks, off)
	}
}
