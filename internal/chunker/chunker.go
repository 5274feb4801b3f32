// Package chunker cuts a byte stream into content-defined chunks with FastCDC
// (Xia et al., 2016/2020), normalized chunking level 2, as docs/FORMAT.md
// "Chunking" specifies. The exact cut rule, which every floe must follow:
//
//   - The gear table has 256 entries; entry i is the first 8 bytes, read
//     little-endian, of keyed-BLAKE3(seed, "floe gear" || byte(i)).
//   - The hash restarts at 0 at every chunk start and rolls over each byte b as
//     h = (h << 1) + gear[b] (mod 2^64). Bit k of h depends only on the last
//     k+1 bytes, so h is a function of the last 64 bytes; since Min >= 64, the
//     hash tested at a candidate cut covers 64 bytes of the chunk.
//   - With bits = log2(Avg), a mask with n one-bits has them at bit positions
//     63 - floor(j*48/n), j = 0..n-1: spread evenly over the high 48 bits, the
//     highest bit always set. The strict mask has n = bits+2, the loose mask
//     n = bits-2.
//   - A chunk of length L (the first L bytes after the chunk start) is cut
//     after its last byte when h & mask == 0, where h has just rolled over that
//     byte and mask is the strict mask for Min <= L < Avg and the loose mask
//     for Avg <= L < Max. The first such L wins. Lengths below Min are never
//     tested; at L = Max the cut is forced. At the end of the input the rest is
//     the last chunk (which may be shorter than Min).
package chunker

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
)

// Params are a repository's chunker parameters (the "chunker" block of its
// config). Two repositories with equal Params cut identical chunks.
type Params struct {
	Min, Avg, Max uint32   // chunk sizes in bytes
	Seed          [32]byte // selects the gear table
}

// Bounds on the chunk sizes that Validate accepts.
const (
	minMin = 64       // the rolling hash covers 64 bytes
	maxMax = 64 << 20 // 64 MiB
)

// DefaultParams returns the default parameters (512 KiB / 1 MiB / 8 MiB) with
// the given seed.
func DefaultParams(seed [32]byte) Params {
	return Params{Min: 512 << 10, Avg: 1 << 20, Max: 8 << 20, Seed: seed}
}

// Validate reports whether p can be used: Avg must be a power of two and
// 64 <= Min < Avg < Max <= 64 MiB.
func (p Params) Validate() error {
	switch {
	case p.Avg == 0 || p.Avg&(p.Avg-1) != 0:
		return fmt.Errorf("chunker: average size %d is not a power of two", p.Avg)
	case p.Min < minMin:
		return fmt.Errorf("chunker: minimum size %d is below %d bytes", p.Min, minMin)
	case p.Min >= p.Avg:
		return fmt.Errorf("chunker: minimum size %d is not below the average size %d", p.Min, p.Avg)
	case p.Avg >= p.Max:
		return fmt.Errorf("chunker: average size %d is not below the maximum size %d", p.Avg, p.Max)
	case p.Max > maxMax:
		return fmt.Errorf("chunker: maximum size %d is above %d bytes (64 MiB)", p.Max, maxMax)
	}
	return nil
}

// masks returns the strict and loose masks for p (p must be valid).
func (p Params) masks() (strict, loose uint64) {
	b := bits.TrailingZeros32(p.Avg)
	return spreadMask(b + 2), spreadMask(b - 2)
}

// spreadMask returns a mask with n one-bits spread evenly over the high 48
// bits (0 < n <= 48).
func spreadMask(n int) uint64 {
	var m uint64
	for j := range n {
		m |= 1 << (63 - j*48/n)
	}
	return m
}

type gearTable [256]uint64

var gearCache sync.Map // [32]byte seed -> *gearTable

// gear returns the gear table for seed, computing it once per seed.
func gear(seed [32]byte) *gearTable {
	if g, ok := gearCache.Load(seed); ok {
		return g.(*gearTable)
	}
	g := new(gearTable)
	k := hash.NewKeyed(seed)
	msg := []byte("floe gear\x00")
	for i := range g {
		msg[len(msg)-1] = byte(i)
		id := k.Sum(msg)
		g[i] = binary.LittleEndian.Uint64(id[:8])
	}
	actual, _ := gearCache.LoadOrStore(seed, g)
	return actual.(*gearTable)
}

// bufSize is the size of the blocks read from the input. Chunks are assembled
// in the caller's buffer, so it need not hold a whole chunk; 1 MiB makes few
// system calls and stays in the CPU's caches between read and scan.
const bufSize = 1 << 20

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// Chunker cuts an input into chunks. It is not safe for concurrent use.
type Chunker struct {
	rd      io.Reader
	p       Params
	g       *gearTable
	strict  uint64
	loose   uint64
	buf     *[]byte // read buffer from bufPool, held while reading an input
	pos     int     // next unscanned byte of *buf
	end     int     // end of the data in *buf
	eof     bool    // rd has reported io.EOF
	err     error   // sticky error (invalid params, read error)
	invalid error   // Validate's verdict on p
}

// New returns a Chunker that cuts rd with parameters p. The gear table is
// computed once per seed and shared, and the read buffer comes from a pool,
// so New is cheap to call per file. If p is invalid, Next returns Validate's
// error.
func New(rd io.Reader, p Params) *Chunker {
	c := &Chunker{p: p}
	if c.invalid = p.Validate(); c.invalid == nil {
		c.g = gear(p.Seed)
		c.strict, c.loose = p.masks()
	}
	c.Reset(rd)
	return c
}

// Reset makes c cut a new input rd with the same parameters, reusing its
// buffer.
func (c *Chunker) Reset(rd io.Reader) {
	c.rd = rd
	c.pos, c.end = 0, 0
	c.eof = false
	c.err = c.invalid
}

// release returns the read buffer to the pool once the input is finished.
func (c *Chunker) release() {
	if c.buf != nil {
		bufPool.Put(c.buf)
		c.buf = nil
	}
	c.pos, c.end = 0, 0
}

// maxEmptyReads is how many consecutive (0, nil) reads fill tolerates before
// failing with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// fill reads the next block of input into the buffer, which must be fully
// scanned. It returns false at the end of the input or on an error (c.err).
func (c *Chunker) fill() bool {
	if c.eof || c.err != nil {
		return false
	}
	if c.buf == nil {
		c.buf = bufPool.Get().(*[]byte)
	}
	buf := *c.buf
	c.pos, c.end = 0, 0
	for empty := 0; c.end < len(buf); {
		n, err := c.rd.Read(buf[c.end:])
		if n < 0 || n > len(buf)-c.end {
			c.err = fmt.Errorf("chunker: read: invalid count %d from reader", n)
			return false
		}
		c.end += n
		if err == io.EOF {
			c.eof = true
			break
		}
		if err != nil {
			c.err = fmt.Errorf("chunker: read: %w", err)
			return false
		}
		if n > 0 {
			// Do not wait for a full buffer: a pipe or socket may
			// deliver the rest only later.
			break
		}
		if empty++; empty >= maxEmptyReads {
			c.err = fmt.Errorf("chunker: read: %w", io.ErrNoProgress)
			return false
		}
	}
	return c.end > 0
}

// Next returns the next chunk's bytes appended to buf[:0], so a caller can
// reuse one buffer for every chunk. After the last chunk it returns io.EOF;
// an empty input yields io.EOF at once. A read error is returned wrapped, and
// again by later calls.
func (c *Chunker) Next(buf []byte) ([]byte, error) {
	out := buf[:0]
	if c.err != nil {
		return out, c.err
	}
	var (
		minL   = int(c.p.Min)
		avgL   = int(c.p.Avg)
		maxL   = int(c.p.Max)
		warm   = minL - 64 // hashing starts here; earlier bytes are shifted out by Min
		length = 0         // bytes of the chunk consumed so far
		h      uint64
	)
	for {
		if c.pos == c.end && !c.fill() {
			if c.err != nil {
				c.release()
				return buf[:0], c.err
			}
			c.release()
			if length == 0 {
				return out, io.EOF
			}
			return out, nil
		}
		data := (*c.buf)[c.pos:c.end]
		var n int // bytes of data taken into the chunk
		cut := false
		switch {
		case length < warm:
			// Too far from Min for any byte to reach the tested hash.
			n = min(warm-length, len(data))
		case length < minL-1:
			// Warm up the hash over the 63 bytes before the first
			// candidate cut, without testing.
			n = min(minL-1-length, len(data))
			h = roll(data[:n], h, c.g)
		case length < avgL-1:
			// The byte taken makes length+1 in [Min, Avg): strict.
			n, cut, h = scan(data[:min(avgL-1-length, len(data))], h, c.strict, c.g)
		case length < maxL-1:
			// length+1 in [Avg, Max): loose.
			n, cut, h = scan(data[:min(maxL-1-length, len(data))], h, c.loose, c.g)
		default:
			// length+1 == Max: forced cut.
			n, cut = 1, true
		}
		out = append(out, data[:n]...)
		c.pos += n
		length += n
		if cut {
			return out, nil
		}
	}
}

// roll rolls h over p without testing.
func roll(p []byte, h uint64, g *gearTable) uint64 {
	for _, b := range p {
		h = h<<1 + g[b]
	}
	return h
}

// scan rolls h over p and stops after the first byte at which h&mask == 0.
// It returns how many bytes it took and whether it stopped at a cut.
//
// The plain loop h = h<<1 + g[b] is bound by its dependency chain (two
// instructions per byte). The unrolled loop computes the hashes of 4 bytes
// from the h before them (h<<k plus the hash t of the bytes alone), which
// leaves one shift and add per 4 bytes on the chain and lets the CPU overlap
// the rest: about 1.5x faster. At a cut the group is rolled again byte by
// byte.
func scan(p []byte, h, mask uint64, g *gearTable) (n int, cut bool, hh uint64) {
	i := 0
	for ; i+8 <= len(p); i += 8 {
		q := p[i : i+8 : i+8]
		g0, g1, g2, g3 := g[q[0]], g[q[1]], g[q[2]], g[q[3]]
		t1 := g0<<1 + g1
		t2 := t1<<1 + g2
		t3 := t2<<1 + g3
		h0 := h<<1 + g0
		h1 := h<<2 + t1
		h2 := h<<3 + t2
		h3 := h<<4 + t3
		if h0&mask == 0 || h1&mask == 0 || h2&mask == 0 || h3&mask == 0 {
			break
		}
		g4, g5, g6, g7 := g[q[4]], g[q[5]], g[q[6]], g[q[7]]
		u1 := g4<<1 + g5
		u2 := u1<<1 + g6
		u3 := u2<<1 + g7
		h4 := h3<<1 + g4
		h5 := h3<<2 + u1
		h6 := h3<<3 + u2
		h7 := h3<<4 + u3
		if h4&mask == 0 || h5&mask == 0 || h6&mask == 0 || h7&mask == 0 {
			break
		}
		h = h7
	}
	for ; i < len(p); i++ {
		h = h<<1 + g[p[i]]
		if h&mask == 0 {
			return i + 1, true, h
		}
	}
	return len(p), false, h
}
