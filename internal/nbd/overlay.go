package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// OverlayBlock is the unit the overlay tracks writes in: a partial write
// to a block not yet written copies the rest of the block from the image
// first.
const OverlayBlock = 4096

// Overlay makes an image writable without touching it: writes go to a
// sparse file of the image's size (FILE), and a bitmap of the blocks
// written (FILE.map) tells which parts of FILE hold data. Reads take
// written blocks from FILE and the rest from the image.
//
// Writes are durable at Flush (the protocol's NBD_CMD_FLUSH and FUA):
// FILE is synced, then the bitmap is written to a new file, synced and
// renamed over FILE.map. A crash loses at most what was written since the
// last flush, which the client was never told was durable. An overlay
// names its image (origin, e.g. a snapshot and path) and size, and is not
// opened over another. One process at a time uses an overlay (flock).
type Overlay struct {
	base    Image
	f       *os.File
	mapPath string
	origin  string
	size    int64

	mu    sync.RWMutex
	bits  []uint64 // one per OverlayBlock, set when written
	dirty bool     // bits changed since the last save
}

var errNotOverlay = errors.New("not a floe overlay")

// OpenOverlay opens the overlay at path over base, or creates it when path
// does not exist or is empty. origin names the image, so that an overlay
// is never used over another one.
func OpenOverlay(path string, base Image, origin string) (*Overlay, error) {
	if len(origin) > maxStringLen {
		return nil, fmt.Errorf("overlay origin longer than %d bytes", maxStringLen)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open overlay: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("overlay %s is in use by another process: %w", path, err)
	}
	o := &Overlay{base: base, f: f, mapPath: path + ".map", origin: origin, size: base.Size()}
	if err := o.load(path); err != nil {
		f.Close()
		return nil, err
	}
	return o, nil
}

func (o *Overlay) nblocks() int64 { return (o.size + OverlayBlock - 1) / OverlayBlock }

func (o *Overlay) load(path string) error {
	st, err := o.f.Stat()
	if err != nil {
		return fmt.Errorf("overlay %s: %w", path, err)
	}
	b, err := os.ReadFile(o.mapPath)
	if errors.Is(err, fs.ErrNotExist) {
		if st.Size() != 0 {
			// Never take over a file that is something else (an image
			// given by mistake): only an empty or new file becomes one.
			return fmt.Errorf("overlay %s: the file exists and has no %s: %w", path, filepath.Base(o.mapPath), errNotOverlay)
		}
		o.bits = make([]uint64, (o.nblocks()+63)/64)
		if err := o.f.Truncate(o.size); err != nil {
			return fmt.Errorf("overlay %s: size it: %w", path, err)
		}
		o.dirty = true
		return o.Flush()
	}
	if err != nil {
		return fmt.Errorf("overlay map: %w", err)
	}
	m, err := decodeOverlayMap(b)
	if err != nil {
		return fmt.Errorf("overlay map %s: %w", o.mapPath, err)
	}
	if m.origin != o.origin || m.size != o.size {
		return fmt.Errorf("overlay %s belongs to %q (%d bytes), not to %q (%d bytes)", path, m.origin, m.size, o.origin, o.size)
	}
	if st.Size() != o.size {
		return fmt.Errorf("overlay %s is %d bytes, its map says %d", path, st.Size(), o.size)
	}
	o.bits = m.bits
	return nil
}

// The map file: "floe-nbd-overlay" (16 bytes), block size (u32), image
// size (u64), origin length (u16), origin, the bitmap (one bit per block,
// least significant first, ceil(blocks/8) bytes), CRC-32C of all before.
const overlayMagic = "floe-nbd-overlay"

type overlayMap struct {
	origin string
	size   int64
	bits   []uint64
}

func encodeOverlayMap(m overlayMap) []byte {
	nblocks := (m.size + OverlayBlock - 1) / OverlayBlock
	b := []byte(overlayMagic)
	b = binary.BigEndian.AppendUint32(b, OverlayBlock)
	b = binary.BigEndian.AppendUint64(b, uint64(m.size))
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.origin)))
	b = append(b, m.origin...)
	for i := int64(0); i < (nblocks+7)/8; i++ {
		b = append(b, byte(m.bits[i/8]>>(8*(i%8))))
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

func decodeOverlayMap(b []byte) (overlayMap, error) {
	var m overlayMap
	const fixed = len(overlayMagic) + 4 + 8 + 2
	if len(b) < fixed+4 || string(b[:len(overlayMagic)]) != overlayMagic {
		return m, errNotOverlay
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)) != sum {
		return m, errors.New("checksum mismatch: the map is damaged")
	}
	p := body[len(overlayMagic):]
	if bs := binary.BigEndian.Uint32(p); bs != OverlayBlock {
		return m, fmt.Errorf("block size %d, this floe uses %d", bs, OverlayBlock)
	}
	size := binary.BigEndian.Uint64(p[4:])
	if size > 1<<62 {
		return m, fmt.Errorf("image size %d out of range", size)
	}
	m.size = int64(size)
	olen := int(binary.BigEndian.Uint16(p[12:]))
	p = p[14:]
	if olen > len(p) {
		return m, errors.New("truncated origin")
	}
	m.origin = string(p[:olen])
	p = p[olen:]
	nblocks := (m.size + OverlayBlock - 1) / OverlayBlock
	// Checked against what is there before anything is allocated.
	if int64(len(p)) != (nblocks+7)/8 {
		return m, fmt.Errorf("bitmap of %d bytes for %d blocks", len(p), nblocks)
	}
	m.bits = make([]uint64, (nblocks+63)/64)
	for i, c := range p {
		m.bits[i/8] |= uint64(c) << (8 * (i % 8))
	}
	if r := nblocks % 64; r != 0 && m.bits[len(m.bits)-1]>>r != 0 {
		return m, errors.New("bits set past the last block")
	}
	return m, nil
}

func (o *Overlay) Size() int64 { return o.size }

func (o *Overlay) bit(blk int64) bool { return o.bits[blk/64]&(1<<(blk%64)) != 0 }

func (o *Overlay) set(first, last int64) {
	for blk := first; blk <= last; blk++ {
		o.bits[blk/64] |= 1 << (blk % 64)
	}
	o.dirty = true
}

// runs calls fn for each maximal run of written or unwritten blocks in
// [off, end), clipped to the range.
func (o *Overlay) runs(off, end int64, fn func(start, end int64, written bool) error) error {
	for off < end {
		blk := off / OverlayBlock
		w := o.bit(blk)
		next := blk + 1
		for next*OverlayBlock < end {
			// whole words of one state at once
			if next%64 == 0 && (o.bits[next/64] == 0 && !w || o.bits[next/64] == ^uint64(0) && w) {
				next += 64
				continue
			}
			if o.bit(next) != w {
				break
			}
			next++
		}
		runEnd := min(next*OverlayBlock, end)
		if err := fn(off, runEnd, w); err != nil {
			return err
		}
		off = runEnd
	}
	return nil
}

func (o *Overlay) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > o.size {
		return 0, fmt.Errorf("read of %d bytes at %d past the end (%d)", len(p), off, o.size)
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	err := o.runs(off, off+int64(len(p)), func(s, e int64, written bool) error {
		var err error
		if written {
			_, err = o.f.ReadAt(p[s-off:e-off], s)
		} else {
			_, err = o.base.ReadAt(p[s-off:e-off], s)
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (o *Overlay) Extents(off, length int64) ([]Extent, error) {
	end := min(off+length, o.size)
	o.mu.RLock()
	defer o.mu.RUnlock()
	var out []Extent
	add := func(es []Extent) {
		for _, e := range es {
			if len(out) > 0 && out[len(out)-1].Hole == e.Hole {
				out[len(out)-1].Length += e.Length
			} else {
				out = append(out, e)
			}
		}
	}
	err := o.runs(off, end, func(s, e int64, written bool) error {
		var es []Extent
		var err error
		if written {
			// Zeroed blocks are holes punched in the overlay file.
			es, err = fileExtents(o.f, s, e-s, o.size)
		} else {
			es, err = extents(o.base, s, e-s)
		}
		add(es)
		return err
	})
	return out, err
}

func (o *Overlay) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > o.size {
		return 0, fmt.Errorf("write of %d bytes at %d past the end (%d): %w", len(p), off, o.size, unix.ENOSPC)
	}
	if len(p) == 0 {
		return 0, nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.writeLocked(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (o *Overlay) writeLocked(p []byte, off int64) error {
	end := off + int64(len(p))
	first, last := off/OverlayBlock, (end-1)/OverlayBlock
	// The parts of the first and last block the write does not cover come
	// from the image, unless the overlay has them already.
	if start := first * OverlayBlock; start < off && !o.bit(first) {
		if err := o.copyBase(start, off); err != nil {
			return err
		}
	}
	if stop := min((last+1)*OverlayBlock, o.size); end < stop && !o.bit(last) {
		if err := o.copyBase(end, stop); err != nil {
			return err
		}
	}
	if _, err := o.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write overlay: %w", err)
	}
	o.set(first, last)
	return nil
}

func (o *Overlay) copyBase(start, end int64) error {
	buf := make([]byte, end-start)
	if _, err := o.base.ReadAt(buf, start); err != nil {
		return fmt.Errorf("read image at %d: %w", start, err)
	}
	if _, err := o.f.WriteAt(buf, start); err != nil {
		return fmt.Errorf("write overlay: %w", err)
	}
	return nil
}

func (o *Overlay) Zero(off, length int64) error { return o.zero(off, length, false) }

// Trim zeroes the whole blocks of the range (what a trimmed range reads as
// is the server's choice; zeros cost nothing in a sparse file) and leaves
// partial blocks as they are.
func (o *Overlay) Trim(off, length int64) error { return o.zero(off, length, true) }

func (o *Overlay) zero(off, length int64, wholeOnly bool) error {
	end := off + length
	if off < 0 || length < 0 || end > o.size {
		return fmt.Errorf("zero %d bytes at %d past the end (%d): %w", length, off, o.size, unix.ENOSPC)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	// whole blocks: [a, b); the last block counts as whole when the range
	// reaches the end of a (short) last block
	a := (off + OverlayBlock - 1) / OverlayBlock * OverlayBlock
	b := end / OverlayBlock * OverlayBlock
	if end == o.size {
		b = end
	}
	if a >= b {
		a, b = off, off // no whole block
	}
	if !wholeOnly {
		if err := o.writeZeros(off, min(a, end)); err != nil {
			return err
		}
		if err := o.writeZeros(max(b, off), end); err != nil {
			return err
		}
	}
	if a < b {
		err := unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, a, b-a)
		if err != nil {
			// a file system that cannot punch holes gets zeros written
			if err := o.writeZeros(a, b); err != nil {
				return err
			}
		}
		o.set(a/OverlayBlock, (b-1)/OverlayBlock)
	}
	return nil
}

func (o *Overlay) writeZeros(start, end int64) error {
	zeros := make([]byte, min(end-start, 1<<20))
	for start < end {
		n := min(end-start, int64(len(zeros)))
		if err := o.writeLocked(zeros[:n], start); err != nil {
			return err
		}
		start += n
	}
	return nil
}

// Flush makes every write so far durable: the data, then the bitmap.
func (o *Overlay) Flush() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("sync overlay: %w", err)
	}
	if !o.dirty {
		return nil
	}
	b := encodeOverlayMap(overlayMap{origin: o.origin, size: o.size, bits: o.bits})
	tmp := o.mapPath + ".tmp"
	if err := writeSync(tmp, b); err != nil {
		return fmt.Errorf("save overlay map: %w", err)
	}
	if err := os.Rename(tmp, o.mapPath); err != nil {
		return fmt.Errorf("save overlay map: %w", err)
	}
	if d, err := os.Open(filepath.Dir(o.mapPath)); err == nil {
		d.Sync()
		d.Close()
	}
	o.dirty = false
	return nil
}

func writeSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Close flushes and releases the overlay. The image is not closed.
func (o *Overlay) Close() error {
	err := o.Flush()
	if cerr := o.f.Close(); err == nil {
		err = cerr
	}
	return err
}
