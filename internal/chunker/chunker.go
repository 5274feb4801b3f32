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
	"slices"
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

// readSize bounds how far Next reads past the first point where the chunk
// could end. Next reads the input straight into the caller's buffer, so most
// bytes are copied only once (by the read); the bytes read past a cut, at
// most readSize, are kept for the next chunk and copied twice.
const readSize = 256 << 10

// Chunker cuts an input into chunks. It is not safe for concurrent use.
type Chunker struct {
	rd            io.Reader
	p             Params
	g             *gearTable
	strict, loose uint64
	rest          []byte // bytes read past the last cut: rest[pos:]
	pos           int
	eof           bool  // rd has reported io.EOF
	err           error // sticky error: invalid params or a read error
	invalid       error // Validate's verdict on p
}

// New returns a Chunker that cuts rd with parameters p. The gear table is
// computed once per seed and shared, so New is cheap to call per file. If p is
// invalid, Next returns Validate's error.
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
	c.rest, c.pos = c.rest[:0], 0
	c.eof = false
	c.err = c.invalid
}

// Next returns the next chunk's bytes appended to buf[:0], so a caller can
// reuse one buffer for every chunk (it grows to about Max bytes). After the
// last chunk it returns io.EOF; an empty input yields io.EOF at once. A read
// error is returned wrapped, and again by later calls.
func (c *Chunker) Next(buf []byte) ([]byte, error) {
	out := buf[:0]
	if c.err != nil {
		return out, c.err
	}
	var h uint64
	if c.pos < len(c.rest) {
		rest := c.rest[c.pos:]
		n, cut, hh := c.advance(rest, 0, 0)
		out, h = append(out, rest[:n]...), hh
		c.pos += n
		if cut {
			return out, nil
		}
		c.rest, c.pos = c.rest[:0], 0
	}
	for {
		length := len(out)
		if c.eof {
			if length == 0 {
				return out, io.EOF
			}
			return out, nil
		}
		// Read up to readSize bytes past the first possible cut, and
		// never past Max.
		want := min(int(c.p.Max), max(length, int(c.p.Min)-1)+readSize) - length
		if cap(out)-length < want {
			// Grow like append, so that small inputs in a fresh
			// buffer stay small.
			out = slices.Grow(out, min(want, max(cap(out), 64<<10)))
		}
		n, err := c.read(out[length:min(cap(out), length+want)])
		if err != nil {
			c.err = err
			return out[:0], err
		}
		out = out[:length+n]
		k, cut, hh := c.advance(out[length:], length, h)
		h = hh
		if cut {
			c.rest, c.pos = append(c.rest[:0], out[length+k:]...), 0
			return out[:length+k], nil
		}
	}
}

// advance scans data, the bytes that follow the first length bytes of the
// chunk, with h the hash after those. It returns how many bytes of data
// belong to the chunk, whether the chunk ends after them, and the hash.
func (c *Chunker) advance(data []byte, length int, h uint64) (n int, cut bool, hh uint64) {
	minL, avgL, maxL := int(c.p.Min), int(c.p.Avg), int(c.p.Max)
	for n < len(data) && !cut {
		l, rest := length+n, data[n:]
		var k int
		switch {
		case l < minL-64:
			// Too far from Min for any byte to reach the tested hash
			// (bit 63 of h depends on the last 64 bytes only).
			k = min(minL-64-l, len(rest))
		case l < minL-1:
			// The 63 bytes before the first candidate cut.
			k = min(minL-1-l, len(rest))
			h = roll(rest[:k], h, c.g)
		case l < avgL-1:
			// The byte taken makes the length l+1 in [Min, Avg).
			k, cut, h = scan(rest[:min(avgL-1-l, len(rest))], h, c.strict, c.g)
		case l < maxL-1:
			// l+1 in [Avg, Max).
			k, cut, h = scan(rest[:min(maxL-1-l, len(rest))], h, c.loose, c.g)
		default:
			// l+1 == Max.
			k, cut = 1, true
		}
		n += k
	}
	return n, cut, h
}

// maxEmptyReads is how many consecutive (0, nil) reads read tolerates before
// failing with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// read reads some bytes into p (len(p) > 0). At the end of the input it sets
// c.eof and may return 0 bytes.
func (c *Chunker) read(p []byte) (int, error) {
	for empty := 0; ; {
		n, err := c.rd.Read(p)
		if n < 0 || n > len(p) {
			return 0, fmt.Errorf("chunker: read: reader returned invalid count %d", n)
		}
		if err == io.EOF {
			c.eof = true
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("chunker: read: %w", err)
		}
		if n > 0 {
			return n, nil
		}
		if empty++; empty >= maxEmptyReads {
			return 0, fmt.Errorf("chunker: read: %w", io.ErrNoProgress)
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
// the rest: about 1.5x faster. A group of 8 bytes that holds a cut is rolled
// again byte by byte.
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
