//go:build linux

package devrestore

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

// The image is read by pack ranges, as the file restore reads: its chunks
// are taken in offset order in windows, each window's distinct blobs are
// grouped by pack into ranges (repo.PlanReads, with the limits of the
// backend: repo.ReadRanges), and each range is one request. Loading one
// blob per request cost a round trip per chunk (about 1 MiB): from a floe
// server or S3 across a far link that capped a disk restore at a few tens
// of MB/s, whatever the link carried.

// Bounds of a window: the bytes of its distinct blobs (a range held whole
// is at most 4 MiB whatever the window, so this bounds no buffer: it
// bounds how far ahead of the slowest range the others write), and its
// chunks (what the window lists, and the partial blocks of the direct
// writes waiting for their neighbours). A streamed range holds a blob at
// a time, so windows there span more of the image: a pack that a window
// boundary cuts is read with two requests instead of one, and 1 GiB
// windows of 16 MiB packs cut one pack in 64 at most.
// (Variables: tests shrink them.)
var (
	windowBytes       int64 = 64 << 20
	streamWindowBytes int64 = 1 << 30
	windowChunks            = 8192
)

// chunk is one chunk of the image.
type chunk struct {
	ref  hash.Ref
	off  int64
	size uint32
	zero bool // all zeros: not read (Run zeroes the regions)
}

// imageChunks lists node's chunks with their offsets, and marks the
// all-zero ones. It refuses a tree whose chunks do not make up the file,
// and a blob the index does not hold.
func imageChunks(r *repo.Repository, node *snapshot.Node, name string) ([]chunk, error) {
	chunks := make([]chunk, len(node.Content))
	maxChunk := r.ChunkerParams().Max
	var off int64
	for i, ref := range node.Content {
		size := node.ChunkSizes[i]
		if size > maxChunk {
			return nil, fmt.Errorf("%s: a chunk of %d bytes, larger than any chunk: damaged tree", name, size)
		}
		if !r.Index().Has(repo.BlobHandle{Type: repo.DataBlob, ID: ref.ID}) {
			return nil, fmt.Errorf("%s: data blob %s: %w", name, ref.Short(), repo.ErrBlobNotFound)
		}
		chunks[i] = chunk{ref: ref, off: off, size: size}
		off += int64(size)
	}
	if uint64(off) != node.Size {
		return nil, fmt.Errorf("%s: chunks of %d bytes for a file of %d: damaged tree", name, off, node.Size)
	}
	// the keys of zero chunks of every length the image has
	zeroKeys := r.ZeroKeys(node.ChunkSizes)
	for i := range chunks {
		chunks[i].zero = chunks[i].ref.Key == zeroKeys[chunks[i].size]
	}
	return chunks, nil
}

// output is where the image's data goes: f, the device (or, in tests, a
// file), or dw, its direct writer, when not nil.
type output struct {
	f        *os.File
	dw       *directio.File
	maxChunk uint32
}

// window is a run of consecutive chunks of the image: its distinct blobs,
// and for each the chunks (indexes) that hold it. Once planned it is only
// read.
type window struct {
	refs    []hash.Ref
	targets [][]int
}

// readJob is one range of a window, or one blob of it that PlanReads
// could not place (single; Load then reports why, as a load by itself
// always did).
type readJob struct {
	w      *window
	rng    repo.PackRange
	single int
}

// writeData reads the data chunks of the image (chunks, in offset order)
// by pack ranges with workers goroutines and writes each blob at every
// offset where the image holds it; the zero chunks' share of the blocks
// they have in common with data is told to out.dw. It returns the first
// error, naming the offset of the chunk it concerns.
func writeData(ctx context.Context, r *repo.Repository, name string, chunks []chunk, out output, workers int, prog ui.Progress) error {
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		errOnce  sync.Once
		firstErr error
	)
	// The first error stops the rest: the ranges being read are cut
	// short (the cancelled context), the jobs queued are skipped.
	fail := func(err error) {
		errOnce.Do(func() {
			firstErr = err
			cancel()
		})
	}

	jobs := make(chan readJob, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One loader per worker: its buffers and the pack it holds
			// open are reused from one range to the next.
			loader := r.NewBlobLoader()
			defer loader.Close()
			if c, ok := prog.(ui.Counters); ok {
				loader.OnFetched(func(n int64) { c.Count(repo.CountFetched, n) })
			}
			cw := chunkWriter{name: name, chunks: chunks, out: out, prog: prog}
			for j := range jobs {
				if ctx.Err() != nil {
					continue // failed or cancelled: drain
				}
				if err := cw.read(ctx, loader, j); err != nil {
					fail(err)
				}
			}
		}()
	}

	lim, streamed := r.ReadRanges()
	maxBytes := windowBytes
	if streamed {
		maxBytes = streamWindowBytes
	}
	for i := 0; i < len(chunks) && ctx.Err() == nil; {
		w := &window{}
		index := map[hash.Ref]int{}
		var bytes int64
		for n := 0; i < len(chunks) && bytes < maxBytes && n < windowChunks; i++ {
			c := chunks[i]
			if c.zero {
				// zeroed by Run; its edges complete the blocks it
				// shares with data chunks
				if out.dw != nil {
					if err := out.dw.Zero(c.off, int64(c.size)); err != nil {
						fail(fmt.Errorf("restore %s at offset %d: %w", name, c.off, err))
						break
					}
				}
				continue
			}
			k, ok := index[c.ref]
			if !ok {
				k = len(w.refs)
				index[c.ref] = k
				w.refs = append(w.refs, c.ref)
				w.targets = append(w.targets, nil)
				bytes += int64(c.size)
			}
			w.targets[k] = append(w.targets[k], i)
			n++
		}
		if len(w.refs) == 0 {
			continue
		}
		ranges, unplaced := r.PlanReads(repo.DataBlob, w.refs, lim)
		for _, u := range unplaced {
			jobs <- readJob{w: w, single: u}
		}
		for _, rg := range ranges {
			jobs <- readJob{w: w, rng: rg}
		}
	}
	close(jobs)
	wg.Wait()
	if err := parent.Err(); err != nil {
		return err
	}
	return firstErr
}

// chunkWriter reads the jobs of one worker and writes their blobs.
type chunkWriter struct {
	name   string
	chunks []chunk
	out    output
	prog   ui.Progress
	buf    []byte // for blobs loaded by themselves
	stage  []byte // aligned, for direct writes; made on first use
}

// read loads j's blobs, with one request for a range, and writes each
// where the image holds it.
func (cw *chunkWriter) read(ctx context.Context, loader *repo.BlobLoader, j readJob) error {
	if j.rng.Blobs == nil {
		data, err := loader.Load(ctx, repo.DataBlob, j.w.refs[j.single], cw.buf)
		if err == nil {
			cw.buf = data
		}
		return cw.put(j.w.targets[j.single], data, err)
	}
	return loader.LoadRange(ctx, repo.DataBlob, j.rng, func(b repo.RangeBlob, data []byte, err error) error {
		return cw.put(j.w.targets[b.Tag], data, err)
	})
}

// put writes data, a blob's plaintext (or err, why it could not be
// loaded), at the offsets of targets, the chunks that hold it.
func (cw *chunkWriter) put(targets []int, data []byte, err error) error {
	for _, i := range targets {
		c := cw.chunks[i]
		if err == nil && len(data) != int(c.size) {
			err = fmt.Errorf("a chunk holds %d bytes, the tree says %d: damaged tree", len(data), c.size)
		}
		if err == nil {
			err = cw.write(data, c.off)
		}
		if err != nil {
			return fmt.Errorf("restore %s at offset %d: %w", cw.name, c.off, err)
		}
		cw.prog.Done(0, int64(c.size))
	}
	return nil
}

// write writes data at off: through out.dw from an aligned buffer, or
// with pwrite where the device is written buffered.
func (cw *chunkWriter) write(data []byte, off int64) error {
	if cw.out.dw == nil {
		_, err := cw.out.f.WriteAt(data, off)
		return err
	}
	if cw.stage == nil {
		cw.stage = directio.Buffer(int(cw.out.maxChunk) + 2*directio.Align)
	}
	copy(cw.stage[off&(directio.Align-1):], data)
	return cw.out.dw.WriteRun(cw.stage, off, len(data))
}
