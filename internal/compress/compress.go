// Package compress compresses blobs with zstd (github.com/klauspost/compress),
// as docs/FORMAT.md "Blobs" specifies: compression is skipped when a trial on
// the first 64 KiB saves less than 1/16, and a result is kept only when it is
// smaller than its input.
//
// Level and window. BenchmarkLevels, 1 MiB blobs (the average chunk), 16 MiB
// of Go source ("text") and of the Go compiler binary ("binary"), one core of
// the 2-core 2.5 GHz Xeon build machine, best of 6 runs in CPU time (the
// machine was shared and loaded, so wall-clock figures were 2-4x lower and
// the CPU-time ones vary by about ±30% between runs):
//
//	level, window                  text MB/s  ratio  binary MB/s  ratio
//	SpeedFastest, 1 MiB                  255  0.146          150  0.403
//	SpeedDefault, 1 MiB (floe)       120-165  0.135        55-75  0.357
//	SpeedDefault, 512 KiB (restic)    (same)  0.135       (same)  0.357
//	SpeedBetterCompression, 1 MiB      65-75  0.125        25-35  0.351
//
// Decompression runs at about 600 MB/s (text) and 400-550 MB/s (binary);
// an incompressible 1 MiB blob costs only its 64 KiB trial (about 10 GB/s).
// The zstd command-line tool at level 3 managed 70-85 MB/s on the same
// machine at the same time, so these figures are the machine's, not the
// library's.
//
// floe uses SpeedDefault because the repository must be no larger than
// restic's, and restic uses that level: SpeedFastest is about twice as fast
// but stores 8% more text and 13% more binary code. The window is 1 MiB:
// restic's 512 KiB gives the same ratio on 1 MiB blobs, and larger windows
// gain at most 0.3% on 8 MiB blobs while each pooled encoder holds about
// 3.8 MiB at 1 MiB, 9.8 MiB at 4 MiB and 17.8 MiB at the default 8 MiB.
// The window had no measurable effect on speed. Frames carry no checksum:
// the AEAD around every blob already authenticates it (restic does the same).
// Where floe can store more than restic (which compresses every blob): a blob
// whose first 64 KiB saves less than 1/16 is stored raw, even if the rest of
// it would compress; for uniform data that costs under 1/16 of those blobs.
package compress

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

const (
	// trialSize is how much of a blob the trial compresses.
	trialSize = 64 << 10
	// windowSize is the encoder's match window.
	windowSize = 1 << 20
	// maxDecompressed bounds Decompress whatever maxSize it is given: no
	// blob is this large (chunks are at most 64 MiB).
	maxDecompressed = 1 << 30
)

// newEncoder returns an encoder for EncodeAll at level.
func newEncoder(level zstd.EncoderLevel, window int) *zstd.Encoder {
	e, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false),
		zstd.WithWindowSize(window),
	)
	if err != nil {
		panic(fmt.Sprintf("compress: zstd encoder options: %v", err)) // constant options
	}
	return e
}

// encoder is a pooled encoder with a buffer for the trial's output.
type encoder struct {
	*zstd.Encoder
	trial []byte
}

// encoders holds at most GOMAXPROCS encoders, made on first use: more
// concurrent compressions than cores gain nothing, and each encoder keeps
// ~4 MiB of state. A sync.Pool would both make more under bursts (every
// directory's tree is compressed in its own goroutine) and drop them at
// each GC, only to make them again.
var encoders = func() chan *encoder {
	n := runtime.GOMAXPROCS(0)
	ch := make(chan *encoder, n)
	for i := 0; i < n; i++ {
		ch <- nil
	}
	return ch
}()

var decoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(maxDecompressed),
		// Decode no further than cap(dst): Decompress sets it to the
		// limit, so hostile input cannot make it allocate more.
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		panic(fmt.Sprintf("compress: zstd decoder options: %v", err)) // constant options
	}
	return d
}}

// Compress appends a compressed form of src to dst and returns it with
// ok=true, or returns dst unchanged with ok=false when compression does not
// pay: a trial on the first 64 KiB saves less than 1/16, or the result is not
// smaller than src. It is safe for concurrent use.
func Compress(dst, src []byte) (out []byte, ok bool) {
	if len(src) == 0 {
		return dst, false
	}
	e := <-encoders
	if e == nil {
		e = &encoder{Encoder: newEncoder(zstd.SpeedDefault, windowSize), trial: make([]byte, 0, trialSize)}
	}
	defer func() { encoders <- e }()
	return e.compress(dst, src)
}

func (e *encoder) compress(dst, src []byte) ([]byte, bool) {
	if len(src) > trialSize {
		e.trial = e.EncodeAll(src[:trialSize], e.trial[:0])
		if !pays(len(e.trial), trialSize) {
			return dst, false
		}
	}
	out := e.EncodeAll(src, dst)
	n := len(out) - len(dst)
	if n >= len(src) || (len(src) <= trialSize && !pays(n, len(src))) {
		// For a small blob the compression is the trial.
		return dst, false
	}
	return out, true
}

// pays reports whether compressing size bytes to n saves at least 1/16.
func pays(n, size int) bool {
	return size-n >= size/16
}

// Decompress appends the decompressed src to dst. It fails if the output
// would exceed maxSize bytes (and never decompresses more than 1 GiB) or if
// src is not a valid zstd frame. It reserves room in dst for the size that
// the frame header declares (Compress always declares it), or for maxSize if
// it declares none. It is safe for concurrent use.
func Decompress(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("compress: negative size limit %d", maxSize)
	}
	var h zstd.Header
	if err := h.Decode(src); err != nil {
		return dst, fmt.Errorf("compress: corrupt data: %w", err)
	}
	if h.Skippable {
		return dst, errors.New("compress: corrupt data: skippable frame")
	}
	limit := min(maxSize, maxDecompressed)
	if h.HasFCS {
		if h.FrameContentSize > uint64(limit) {
			return dst, fmt.Errorf("compress: decompressed size %d exceeds the limit of %d bytes", h.FrameContentSize, limit)
		}
		limit = int(h.FrameContentSize)
	}
	if cap(dst)-len(dst) < limit {
		grown := make([]byte, len(dst), len(dst)+limit)
		copy(grown, dst)
		dst = grown
	}
	d := decoders.Get().(*zstd.Decoder)
	out, err := d.DecodeAll(src, dst[:len(dst):len(dst)+limit])
	decoders.Put(d)
	switch {
	case errors.Is(err, zstd.ErrDecoderSizeExceeded) && !h.HasFCS:
		return dst, fmt.Errorf("compress: decompressed size exceeds the limit of %d bytes", limit)
	case err != nil:
		return dst, fmt.Errorf("compress: corrupt data: %w", err)
	}
	if cap(out) > 0 && cap(dst) > 0 && &out[:cap(out)][0] == &dst[:cap(dst)][0] {
		// Give the caller back the whole capacity of its buffer.
		return dst[:len(out)], nil
	}
	return out, nil
}
