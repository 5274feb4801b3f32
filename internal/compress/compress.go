// Package compress compresses blobs with zstd (github.com/klauspost/compress),
// as docs/FORMAT.md "Blobs" specifies: compression is skipped when a trial on
// the first 64 KiB saves less than 1/16, and a result is kept only when it is
// smaller than its input.
//
// Level. Measured with BenchmarkLevels (1 MiB blobs, one core of the 2.5 GHz
// Xeon build machine, klauspost/compress v1.20.3):
//
//	LEVELS
//
// floe uses SpeedDefault with a 1 MiB window, no frame checksum (the AEAD
// around every blob already authenticates it) and one goroutine per encoder.
// restic uses the same level with a 512 KiB window and no checksum, so floe's
// compressed blobs are never larger than restic's for the same chunks: a
// window at least as long finds at least the same matches. SpeedFastest would
// be faster but stores noticeably more for text, and the repository must be no
// larger than restic's; the trial keeps the cost for incompressible data (media,
// archives, encrypted files) at the cost of compressing 64 KiB.
package compress

import (
	"errors"
	"fmt"
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

var encoders = sync.Pool{New: func() any { return newEncoder(zstd.SpeedDefault, windowSize) }}

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
	e := encoders.Get().(*zstd.Encoder)
	defer encoders.Put(e)
	return compress(e, dst, src)
}

func compress(e *zstd.Encoder, dst, src []byte) ([]byte, bool) {
	if len(src) > trialSize {
		// The trial output goes to dst's spare capacity, which Compress
		// may use anyway; a buffer of trialSize keeps it from growing.
		trial := e.EncodeAll(src[:trialSize], dst[len(dst):len(dst):len(dst)])
		if !pays(len(trial), trialSize) {
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
