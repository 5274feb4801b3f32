package repo

import (
	"context"
	"fmt"
	"io"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/slab"
	"github.com/floe-backup/floe/internal/storage"
)

// BlobLoader loads blobs like LoadBlob for one goroutine that loads many
// (a restore worker): it reuses its buffers for the stored and the
// decrypted bytes, and, on a backend that can (storage.RangeOpener), keeps
// the last pack it read from open. LoadBlob allocates two blob-sized
// buffers and opens the pack for every blob; on a restore that was most of
// the system time (page faults on fresh memory, the collector returning it
// to the OS, and an open, stat and close per blob).
//
// A BlobLoader is not safe for concurrent use; Close it when done.
type BlobLoader struct {
	r      *Repository
	ranges storage.RangeOpener // nil: every load goes through Backend.Load
	pack   hash.ID
	obj    storage.ObjectReader
	sealed []byte
	plain  []byte
	// rangeBuf holds LoadRange's ranges, out the plaintexts it hands
	// out: apart from sealed, which a blob's fallback to its other
	// copies (Load) fills while the range is still being walked.
	rangeBuf []byte
	out      []byte
	// pooled: out comes from the slab (PoolBuffers); pooledOut is the
	// buffer it started as, given back at Close even when a larger blob
	// replaced it
	pooled    bool
	pooledOut []byte
	// fetched hears of the bytes of streamed ranges as they arrive
	// (OnFetched); nil: nobody listens.
	fetched func(n int64)
}

// CountFetched is the counter (ui.Counters) a restore keeps of the bytes
// its loaders' OnFetched hear of.
const CountFetched = "bytes_fetched"

// OnFetched makes l tell fn how many bytes of a streamed range
// (LoadRange on S3 or a floe server) arrived, read by read, as they
// arrive: a progress line otherwise moves only as whole blobs are
// delivered, and a blob of several MiB over a slow link takes seconds.
// fn is called from l's goroutine, for every read (tens of KiB): it must
// be cheap (an atomic add).
func (l *BlobLoader) OnFetched(fn func(n int64)) { l.fetched = fn }

// fetchCounter tells fn of the bytes read through it.
type fetchCounter struct {
	io.ReadCloser
	fn func(n int64)
}

func (c fetchCounter) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	if n > 0 {
		c.fn(int64(n))
	}
	return n, err
}

// NewBlobLoader returns a loader for r.
func (r *Repository) NewBlobLoader() *BlobLoader {
	l := &BlobLoader{r: r}
	// On the backend itself, not through storage.As: a wrapper that limits
	// or meters loads must see every one of them.
	if ro, ok := r.be.(storage.RangeOpener); ok {
		l.ranges = ro
	}
	return l
}

// PoolBuffers makes l decode LoadRange's plaintexts into a buffer of the
// largest chunk's size lent by the slab and given back at Close, for a
// caller that uses no plaintext after Close. In a restore, the heap
// buffers that grew for ever larger chunks were a quarter of a large
// restore's allocations, cleared when made and faulted in again after the
// collector gave them back: the large set's restore took 8% less CPU
// without them (docs/PERFORMANCE.md). Its ranges stay in the heap: in
// slab buffers of whole huge pages the peak RSS of a goroot restore
// reached restic's.
func (l *BlobLoader) PoolBuffers() { l.pooled = true }

// Close releases the pack held open, and the buffers of PoolBuffers.
func (l *BlobLoader) Close() error {
	if l.pooled {
		slab.Put(l.pooledOut, cap(l.pooledOut))
		l.out, l.pooledOut = nil, nil
	}
	if l.obj == nil {
		return nil
	}
	err := l.obj.Close()
	l.obj = nil
	return err
}

// rangeRoom returns n bytes of l.rangeBuf, replacing it when it is
// smaller.
func (l *BlobLoader) rangeRoom(n int) []byte {
	if cap(l.rangeBuf) < n {
		l.rangeBuf = make([]byte, n)
	}
	return l.rangeBuf[:n]
}

// outBuf is the buffer LoadRange decodes the next plaintext into.
func (l *BlobLoader) outBuf() []byte {
	if l.pooled && l.pooledOut == nil {
		// room for the largest chunk, and the few bytes past it that
		// let zstd decode the last block with its fast copies
		l.pooledOut = slab.Get(l.r.maxRaw(DataBlob) + 4096)
		l.out = l.pooledOut
	}
	return l.out
}

// Load returns the plaintext of blob ref, in buf if it has room, exactly as
// LoadBlob does (every copy is tried; a copy whose bytes do not hash to the
// ID is reported as forged). The result is valid until the next Load whose
// buf is not the result.
func (l *BlobLoader) Load(ctx context.Context, t BlobType, ref hash.Ref, buf []byte) ([]byte, error) {
	c, err := l.r.loadGoodCopy(ctx, t, ref, l.read)
	if err != nil {
		return nil, err
	}
	return l.open(t, ref, c, buf)
}

// open decrypts, decompresses and checks one stored copy whose bytes
// matched ref.ID, decrypting in l.plain.
func (l *BlobLoader) open(t BlobType, ref hash.Ref, c, buf []byte) ([]byte, error) {
	plain, err := crypto.OpenBlob(l.plain[:0], blobKey(ref.Key), c, blobAD(t))
	if err != nil {
		return nil, fmt.Errorf("%s blob %s: does not decrypt with the key its reference holds: %w", t, ref.Short(), err)
	}
	l.plain = plain
	return l.r.decodePayload(t, ref, plain, buf)
}

// LoadInto is Load verified in LoadRange's order, for a reader that loads
// blobs one at a time and keeps them (floe nbd's cache): the best copy is
// decrypted first and its plaintext checked against ref.Key, without
// hashing the stored bytes against ref.ID (LoadRange says why that is
// enough); only a copy that cannot be read or does not open sends the
// blob through Load, which hashes every copy it tries, reports a forged
// one and falls back to the next. The plaintext is appended to buf[:0]
// (buf is replaced when too small) and never lies in the loader's own
// buffers, so the caller may keep it past the next load. Serving a disk
// image hashed every blob twice through LoadBlob, and allocated two fresh
// blob-sized buffers for it.
func (l *BlobLoader) LoadInto(ctx context.Context, t BlobType, ref hash.Ref, buf []byte) ([]byte, error) {
	if l.r.WriteOnly() {
		return nil, ErrWriteOnly
	}
	if locs := l.r.idx.Copies(BlobHandle{t, ref.ID}); len(locs) > 0 && l.r.checkStoredLength(t, locs[0]) == nil {
		c, err := l.read(ctx, locs[0])
		if err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil {
			// l.read's bytes are the loader's own (l.sealed) when it reads
			// ranges itself; Backend.Load's may be the backend's to keep.
			if out, _, ok := l.openRange(t, ref, c, l.ranges != nil, buf, false); ok {
				return out, nil
			}
		}
	}
	return l.Load(ctx, t, ref, buf)
}

// openRange opens c, the stored bytes of ref as a range held them, without
// hashing them against ref.ID first (LoadRange says why that is enough):
// ok is false, and nothing is reported, when they do not decrypt with the
// key derived from ref.Key or their plaintext is not ref's; the caller
// then loads ref by itself (Load), which tells a forged copy from a wrong
// ref. When owned, c is decrypted in place (and is garbage afterwards).
// The plaintext is decompressed into buf (inBuf tells whether out is buf
// or a buffer that replaces it); with inPlace, a blob stored uncompressed
// is handed out where it was decrypted instead, so that its bytes are not
// copied once more, valid until the next call.
func (l *BlobLoader) openRange(t BlobType, ref hash.Ref, c []byte, owned bool, buf []byte, inPlace bool) (out []byte, inBuf, ok bool) {
	dst := l.plain[:0]
	if owned {
		dst = c[:0]
	}
	payload, err := crypto.OpenBlob(dst, blobKey(ref.Key), c, blobAD(t))
	if err != nil {
		return nil, false, false
	}
	if !owned {
		l.plain = payload
	}
	out, inBuf, err = l.r.decode(t, ref, payload, buf, inPlace)
	if err != nil {
		return nil, false, false
	}
	return out, inBuf, true
}

// read returns the stored bytes of one copy, in l.sealed when the backend
// reads ranges.
func (l *BlobLoader) read(ctx context.Context, loc Location) ([]byte, error) {
	h := storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}
	if l.ranges == nil {
		return l.r.be.Load(ctx, h, int64(loc.Offset), int64(loc.Length))
	}
	if err := l.openPack(ctx, loc.Pack); err != nil {
		return nil, err
	}
	if cap(l.sealed) < int(loc.Length) {
		l.sealed = make([]byte, loc.Length)
	}
	c := l.sealed[:loc.Length]
	if _, err := l.obj.ReadAt(c, int64(loc.Offset)); err != nil {
		return nil, err
	}
	return c, nil
}

// openPack makes pack the one held open (l.ranges must be set).
func (l *BlobLoader) openPack(ctx context.Context, pack hash.ID) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.obj != nil && l.pack == pack {
		return nil
	}
	l.Close()
	obj, err := l.ranges.OpenRange(ctx, storage.Handle{Type: storage.Pack, Name: pack.String()})
	if err != nil {
		return err
	}
	l.obj, l.pack = obj, pack
	return nil
}
