// Package compress compresses blobs with zstd (github.com/klauspost/compress),
// as docs/FORMAT.md "Blobs" specifies: a blob larger than 64 KiB is
// compressed unless none of 16 samples of 4 KiB spread evenly over it saves
// 1/16 when compressed on its own, a sample whose bytes are spread over the
// 256 values as evenly as random bytes are counting as one that does not
// (looksRandom, not compressed), and a result is kept only when it is
// smaller than its input (a blob of at most 64 KiB: when it saves 1/16).
//
// The trial. Until November 2026 the trial compressed the first 64 KiB of a
// blob and skipped the whole blob when that saved less than 1/16. That is
// right for a file that is random or compressed throughout, but a chunk of a
// disk image (or of a tar, or of any file that packs files together) often
// starts inside a compressed file (a .gz of /usr/share/doc, a JPEG) and
// continues with text or code. On the 1.5 GiB ext4 image of bench/images.sh
// the old trial stored 12% more than compressing every blob; the samples
// store 0.5% more, and still skip random data at about 24 GB/s (16 tiny
// EncodeAll calls per 1 MiB chunk) against 5 GB/s for zstd on its own.
// Measured with SpeedDefault, 1 MiB chunks, one core of the loaded build
// machine (stored/input, MB/s of input):
//
//	trial               image head       image middle     Go source     random
//	none (restic)       0.4193  272      0.3104  164      0.2098  199   1.0  5,000
//	first 64 KiB (old)  0.4729  262      0.3215  156      0.2098  194   1.0  97,000
//	16 x 4 KiB (floe)   0.4216  255      0.3104  178      0.2098  197   1.0  24,000
//
// Random samples. Those 24 GB/s were a benchmark's, whose encoder keeps its
// 1.1 MiB of match tables in cache from one sample to the next. In a backup,
// where BLAKE3, AES-GCM and the chunker run between chunks (and, we suppose,
// evict the tables), the trial of random data cost 0.14-0.19 CPU-s per GiB
// (six profiled backups of bench's 1 GiB random.bin, 9-12 µs a sample
// against 2.8 on the benchmark): 5-6% of such a backup (user+sys). Since
// November 2026 a sample whose byte histogram is as flat as random data's
// counts as not saving 1/16 without being compressed (looksRandom, which
// says why its bounds are safe): 0.02-0.03 CPU-s per GiB in the same
// profiles. The rule changed with it, for samples that look random yet save
// 1/16 by repeating strings. Measured decisions, every blob of each file cut
// by the default chunker, at fastest, default and better, against the trial
// without the histogram: identical for bench's 1 GiB random.bin, 256 MiB of
// its source.txt, the Go compiler binary, the 1.5 GiB ext4 image of
// bench/images.sh, the gzip of 200 MiB of source.txt and of the compiler,
// the zstd -3 of the 200 MiB, 300 MiB of Go module zips, and 10,000
// synthetic blobs of random data and text (random then text, text then
// random, 4 KiB of text in random data, at every KiB). The share of samples
// that the histogram settles: random 100%, .zst 86%, .gz 75%, zips 68%, the
// image 5%, text and binaries 0%. Where a decision differs (none of these),
// the blob's stored bytes and so its ID differ from what the trial without
// the histogram gave. An upper bound of 7.5 bits of collision entropy (sum
// 92681) instead of 71680 would have settled a few more samples of .gz and
// zips, and changed 12 of 256 blobs of the zips (0.14% more stored) and 3 of
// 38 of the .gz, whose samples saved 1/16 through the repeated paths of zip
// headers or a few hundred bytes of text among compressed data; no sample
// that saved 1/16 in any of these had a sum below 74188.
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
// Decompression runs at about 600 MB/s (text) and 400-550 MB/s (binary).
// The zstd command-line tool at level 3 managed 70-85 MB/s on the same
// machine at the same time, so these figures are the machine's, not the
// library's.
//
// The level is the repository's (Level, docs/FORMAT.md "config"), and at
// Auto also the kind of data's (Level.For). Auto compresses files and
// trees at SpeedDefault because such a repository must be no larger than
// restic's, and restic uses that level: SpeedFastest is 1.3-1.5 times as
// fast (November 2026, 1 MiB chunks: Go source 286 against 211 MB/s, the
// image 409 against 286 MB/s) but stores 6.7% more text. The data of disk
// images it compresses at SpeedFastest: an image backup is all
// compression, and there the trade is 25% less CPU time for the whole
// backup against 5.4% more stored (Level.For has the figures); Default
// keeps SpeedDefault for images too. The window is
// 1 MiB: restic's 512 KiB gives the same ratio on 1 MiB blobs, and larger
// windows gain at most 0.3% on 8 MiB blobs while each pooled encoder holds
// about 3.8 MiB at 1 MiB, 9.8 MiB at 4 MiB and 17.8 MiB at the default 8 MiB
// (with the lower-memory history; about 1 MiB more with the full one).
// The window had no measurable effect on speed. WithLowerEncoderMem does
// not change the output at any level (TestDeterministic), but its history
// holds only the window and one block, so every block past the first
// ~1.1 MiB of a chunk moves the whole window down: BenchmarkHistory, chunks
// of 0.6-3 MiB, quiet minutes of the loaded machine, SpeedFastest on Go
// source 309-357 MB/s with it against 401-413 without (about 4% of the
// CPU time of an image backup), SpeedDefault within the noise. So the
// encoders keep the full history. Frames carry no checksum: the AEAD around every
// blob already authenticates it (restic does the same).
package compress

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

const (
	// trialSize: a blob of up to this size is compressed whole as its own
	// trial; a larger one is sampled.
	trialSize = 64 << 10
	// samples of sampleSize bytes, spread evenly, are the trial of a blob
	// larger than trialSize.
	samples    = 16
	sampleSize = 4 << 10
	// windowSize is the encoder's match window.
	windowSize = 1 << 20
	// maxDecompressed bounds Decompress whatever maxSize it is given: no
	// blob is this large (chunks are at most 64 MiB).
	maxDecompressed = 1 << 30
	// decodeSlack is the room past a frame's declared size that the
	// decoder needs to copy with overlapping wide writes up to its end
	// (klauspost/compress/zstd: compressedBlockOverAlloc).
	decodeSlack = 16
)

// newEncoder returns an encoder for EncodeAll at level.
func newEncoder(level zstd.EncoderLevel, window int) *zstd.Encoder {
	e, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(false),
		zstd.WithWindowSize(window),
		zstd.WithLowerEncoderMem(false),
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

// encoders holds, per encoder level, at most GOMAXPROCS encoders, made on
// first use: more concurrent compressions than cores gain nothing, and
// each encoder keeps ~5 MiB of state. A sync.Pool would both make more
// under bursts (every directory's tree is compressed in its own
// goroutine) and drop them at each GC, only to make them again. A process
// uses the one level of its repository, so only that level's encoders
// (and at Auto those of Fastest too, for images) are ever made.
var encoders = func() [zstd.SpeedBestCompression + 1]chan *encoder {
	n := runtime.GOMAXPROCS(0)
	var pools [zstd.SpeedBestCompression + 1]chan *encoder
	for l := range pools {
		pools[l] = make(chan *encoder, n)
		for i := 0; i < n; i++ {
			pools[l] <- nil
		}
	}
	return pools
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

// Compress compresses at Auto: Auto.Compress(dst, src).
func Compress(dst, src []byte) (out []byte, ok bool) {
	return Auto.Compress(dst, src)
}

// Compress appends a compressed form of src to dst and returns it with
// ok=true, or returns dst unchanged with ok=false when compression does not
// pay: no sample of the trial saves 1/16, or the result is not smaller than
// src (for src of at most 64 KiB: saves less than 1/16), or l is Off. The
// decision and the output depend on src and l alone. It is safe for
// concurrent use.
func (l Level) Compress(dst, src []byte) (out []byte, ok bool) {
	if len(src) == 0 || l == Off {
		return dst, false
	}
	zl, valid := l.zstd()
	if !valid {
		// Levels come from ParseLevel; anything else is a bug above.
		panic(fmt.Sprintf("compress: invalid level %d", int(l)))
	}
	pool := encoders[zl]
	e := <-pool
	if e == nil {
		e = &encoder{Encoder: newEncoder(zl, windowSize), trial: make([]byte, 0, 2*sampleSize)}
	}
	defer func() { pool <- e }()
	return e.compress(dst, src)
}

func (e *encoder) compress(dst, src []byte) ([]byte, bool) {
	if len(src) > trialSize && !e.samplesPay(src) {
		return dst, false
	}
	out := e.EncodeAll(src, dst)
	n := len(out) - len(dst)
	if n >= len(src) || (len(src) <= trialSize && !pays(n, len(src))) {
		// For a small blob the compression is the trial.
		return dst, false
	}
	return out, true
}

// samplesPay reports whether any of the trial's samples of src (longer
// than trialSize) saves 1/16. Samples are compressed one by one so that a
// compressible part of an otherwise incompressible blob is found however
// small the rest makes it: a chunk of a disk image may be mostly a
// compressed file and partly text.
func (e *encoder) samplesPay(src []byte) bool {
	for i := 0; i < samples; i++ {
		off := (len(src) - sampleSize) * i / (samples - 1)
		sample := src[off : off+sampleSize]
		if looksRandom(sample) {
			continue // counts as not paying: random.go says why
		}
		e.trial = e.EncodeAll(sample, e.trial[:0])
		if pays(len(e.trial), sampleSize) {
			return true
		}
	}
	return false
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
	// With a declared size the decoder stops at it whatever the buffer's
	// capacity, and a few bytes of room past it let it decode the last
	// block with its fast copies too: exactly sized, it took the careful
	// ones, 3-5% of the decoding time of 1 MiB chunks of the bench image.
	room := limit
	if h.HasFCS {
		room = limit + decodeSlack
	}
	if cap(dst)-len(dst) < limit {
		grown := make([]byte, len(dst), len(dst)+room)
		copy(grown, dst)
		dst = grown
	}
	room = min(room, cap(dst)-len(dst))
	d := decoders.Get().(*zstd.Decoder)
	out, err := d.DecodeAll(src, dst[:len(dst):len(dst)+room])
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
