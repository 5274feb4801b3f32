// Package compress compresses blobs with zstd (klauspost/compress), and
// skips data that would not shrink, so already-compressed files cost only a
// short trial.
package compress

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

const (
	trialSize = 64 << 10
	// minSaving: compress only when the trial saves at least 1/16.
	minSavingShift = 4
)

var (
	encOnce sync.Once
	enc     *zstd.Encoder
	decOnce sync.Once
	dec     *zstd.Decoder
)

func encoder() *zstd.Encoder {
	encOnce.Do(func() {
		var err error
		// EncodeAll is safe for concurrent use; concurrency bounds the
		// encoder states kept, each with a history of the window size.
		// Chunks average 1 MiB, so a 4 MiB window loses nothing.
		enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
			zstd.WithWindowSize(4<<20),
			zstd.WithZeroFrames(true), zstd.WithEncoderCRC(false))
		if err != nil {
			panic("zstd.NewWriter: " + err.Error())
		}
	})
	return enc
}

func decoder() *zstd.Decoder {
	decOnce.Do(func() {
		var err error
		dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithDecoderMaxMemory(128<<20))
		if err != nil {
			panic("zstd.NewReader: " + err.Error())
		}
	})
	return dec
}

// Compress appends a compressed form of src to dst and returns it with
// ok=true, or returns dst unchanged with ok=false when compression does not
// pay. Safe for concurrent use.
func Compress(dst, src []byte) ([]byte, bool) {
	e := encoder()
	if len(src) > 2*trialSize {
		trial := e.EncodeAll(src[:trialSize], make([]byte, 0, trialSize))
		if len(trial) > trialSize-trialSize>>minSavingShift {
			return dst, false
		}
	}
	start := len(dst)
	out := e.EncodeAll(src, dst)
	if len(out)-start >= len(src) {
		return dst[:start], false
	}
	return out, true
}

// ErrTooLarge means decompressed data would exceed the allowed size.
var ErrTooLarge = errors.New("decompressed data exceeds the expected size")

// Decompress appends the decompressed src to dst. It fails if the result
// would exceed maxSize bytes or the data is corrupt. Safe for concurrent use.
func Decompress(dst, src []byte, maxSize int) ([]byte, error) {
	d := decoder()
	hdr := zstd.Header{}
	if err := hdr.Decode(src); err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	if hdr.HasFCS && hdr.FrameContentSize > uint64(maxSize) {
		return nil, ErrTooLarge
	}
	if cap(dst)-len(dst) < maxSize {
		nd := make([]byte, len(dst), len(dst)+maxSize)
		copy(nd, dst)
		dst = nd
	}
	start := len(dst)
	out, err := d.DecodeAll(src, dst[:start:start+maxSize])
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	if len(out)-start > maxSize {
		return nil, ErrTooLarge
	}
	return out, nil
}
