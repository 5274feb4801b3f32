package repo

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// Bulk readers (restore) plan their reads by pack: the blobs they need are
// grouped by the pack of their best copy, sorted by offset, and neighbours
// are read with one ranged request. One request per blob cost the storage
// per blob, not per byte: a floe server or an S3 gateway spent seconds of
// CPU on a restore that, read by ranges, costs it a few hundred requests;
// and even on a local disk it was a pread, and often an open, per blob.

// PackRange is a run of blobs of one pack read with one ranged request.
type PackRange struct {
	Pack       hash.ID
	Start, End int64       // the byte range read: the first blob's offset to the end of the last
	Blobs      []RangeBlob // by offset
}

// RangeBlob is one blob of a PackRange.
type RangeBlob struct {
	Ref            hash.Ref
	Offset, Length uint32 // the copy in the range's pack
	Tag            int    // the caller's: the index of the ref given to PlanReads
}

// RangeLimits shape the ranges of PlanReads. A blob larger than MaxRange
// is a range of its own.
type RangeLimits struct {
	// MaxGap is the most bytes of other blobs read (and thrown away)
	// between two needed blobs rather than starting a new request.
	MaxGap int64
	// MaxRange bounds the bytes of one request, and so the memory a
	// reader holds for it.
	MaxRange int64
	// MaxBlobs bounds the blobs of one range (0: no bound), so that a
	// range of small blobs does not become one reader's work alone.
	MaxBlobs int
}

// PlanReads groups refs (blobs of type t) by the pack of their best usable
// copy into ranges within lim. Packs come in the order in which refs first
// need them, blobs within a pack by offset. A ref given twice is read
// twice: callers that share blobs pass each once. Refs with no usable
// copy, or whose copy is longer than any blob of type t can be, come back
// in unplaced (their indexes): BlobLoader.Load reports why.
func (r *Repository) PlanReads(t BlobType, refs []hash.Ref, lim RangeLimits) (ranges []PackRange, unplaced []int) {
	type packBlobs struct {
		pack  hash.ID
		blobs []RangeBlob
	}
	var packs []*packBlobs
	byPack := map[hash.ID]*packBlobs{}
	for i, ref := range refs {
		locs := r.idx.Copies(BlobHandle{t, ref.ID})
		if len(locs) == 0 || r.checkStoredLength(t, locs[0]) != nil {
			unplaced = append(unplaced, i)
			continue
		}
		loc := locs[0]
		p := byPack[loc.Pack]
		if p == nil {
			p = &packBlobs{pack: loc.Pack}
			byPack[loc.Pack] = p
			packs = append(packs, p)
		}
		p.blobs = append(p.blobs, RangeBlob{Ref: ref, Offset: loc.Offset, Length: loc.Length, Tag: i})
	}
	for _, p := range packs {
		sortRangeBlobs(p.blobs)
		for i := 0; i < len(p.blobs); {
			start := int64(p.blobs[i].Offset)
			end := start + int64(p.blobs[i].Length)
			j := i + 1
			for ; j < len(p.blobs); j++ {
				b := p.blobs[j]
				bEnd := int64(b.Offset) + int64(b.Length)
				if int64(b.Offset) > end+lim.MaxGap || max(end, bEnd)-start > lim.MaxRange || (lim.MaxBlobs > 0 && j-i >= lim.MaxBlobs) {
					break
				}
				end = max(end, bEnd)
			}
			ranges = append(ranges, PackRange{Pack: p.pack, Start: start, End: end, Blobs: p.blobs[i:j:j]})
			i = j
		}
	}
	return ranges, unplaced
}

// sortRangeBlobs sorts by offset; blobs mostly come in pack order already
// (a backup stores a file's chunks, and a directory's files, in order).
func sortRangeBlobs(b []RangeBlob) {
	sorted := true
	for i := 1; i < len(b); i++ {
		if b[i].Offset < b[i-1].Offset {
			sorted = false
			break
		}
	}
	if !sorted {
		slices.SortStableFunc(b, func(x, y RangeBlob) int { return cmp.Compare(x.Offset, y.Offset) })
	}
}

// LoadRange reads the blobs of pr with one request and calls fn for each,
// in offset order, with its plaintext (valid only during the call) or its
// error. fn's error stops the walk and is returned, as is the context's.
//
// Every plaintext handed out is verified, but in another order than Load:
// a copy is decrypted first, and only one that does not open is hashed
// against its ID. A copy that opens under the key derived from the ref's
// K, decompresses within bounds, and whose plaintext hashes (keyed) to K
// is the blob's plaintext, whatever bytes were stored: K binds the
// plaintext, and hashing the stored bytes as well proves nothing more to
// a reader that holds K (docs/SECURITY.md "How readers verify blobs").
// Hashing every copy was 0.4 of the 3.6 CPU seconds of a 2 GiB restore.
// A copy that does not open is loaded again by itself (Load): that read
// hashes each copy, reports one whose bytes do not hash to the ID as
// forged (ForgedCopies) and falls back to the next, and reports an error
// about the ref when a genuine copy does not open, as before; so does a
// blob of a range that could not be read.
func (l *BlobLoader) LoadRange(ctx context.Context, t BlobType, pr PackRange, fn func(b RangeBlob, plain []byte, err error) error) error {
	if l.r.WriteOnly() {
		return ErrWriteOnly
	}
	if so, ok := l.r.be.(storage.RangeStreamer); ok && l.ranges == nil {
		return l.streamRange(ctx, so, t, pr, fn)
	}
	data, rerr := l.readRange(ctx, pr)
	if rerr != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	// The range is in the loader's own buffer when it read it itself
	// (l.ranges); Backend.Load's bytes may be the backend's to keep.
	owned := l.ranges != nil
	for _, b := range pr.Blobs {
		var c []byte
		if rerr == nil {
			c = data[int64(b.Offset)-pr.Start : int64(b.Offset)-pr.Start+int64(b.Length)]
		}
		if err := l.deliver(ctx, t, b, c, owned, fn); err != nil {
			return err
		}
	}
	return nil
}

// deliver hands fn the plaintext of b: from c, its stored bytes as read
// (nil: they could not be read), when they open and verify (openRange);
// otherwise from Load, which reads b again by itself, hashes every copy it
// tries against b's ID, reports a forged one and falls back to the next,
// and reports an error about the ref if a genuine copy does not open.
// owned says that c is the loader's to overwrite: it is then decrypted in
// place.
func (l *BlobLoader) deliver(ctx context.Context, t BlobType, b RangeBlob, c []byte, owned bool, fn func(b RangeBlob, plain []byte, err error) error) error {
	if c != nil {
		if plain, inBuf, ok := l.openRange(t, b.Ref, c, owned, l.outBuf(), owned); ok {
			if inBuf {
				l.out = plain
			}
			return fn(b, plain, nil)
		}
	}
	plain, err := l.Load(ctx, t, b.Ref, l.outBuf())
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil {
		l.out = plain
	}
	return fn(b, plain, err)
}

// checkRangeBlobs refuses a plan whose blobs lie outside its range.
func checkRangeBlobs(pr PackRange) error {
	for _, b := range pr.Blobs {
		if int64(b.Offset) < pr.Start || int64(b.Offset)+int64(b.Length) > pr.End {
			return fmt.Errorf("pack %s: blob %s at %d+%d lies outside the range %d-%d", pr.Pack.Short(), b.Ref.Short(), b.Offset, b.Length, pr.Start, pr.End)
		}
	}
	return nil
}

// The ranges of a bulk reader (restore, a device restore). A range is one
// request and the most a reader holds in memory (4 MiB); the gap allowed
// between two needed blobs is far cheaper to read than another request.
// On a local disk a request costs little, and a range of at most 64 blobs
// lets a window of small files keep every worker busy; on a server or S3
// every request costs the storage, and a window of small files is one
// range (about 60 requests for GOROOT's 15,000 files, instead of one per
// blob).
var (
	localRanges  = RangeLimits{MaxGap: 128 << 10, MaxRange: 4 << 20, MaxBlobs: 64}
	remoteRanges = RangeLimits{MaxGap: 128 << 10, MaxRange: 4 << 20}
	// A backend that streams a range (S3, a floe server) holds a blob of
	// it at a time, so a range may be a whole pack: one request per pack,
	// which S3 can send from its file without copying (see
	// StreamsRanges). remoteRanges are left for the backends that neither
	// stream nor open ranges (a wrapper that meters loads).
	streamRanges = RangeLimits{MaxGap: 128 << 10, MaxRange: 1 << 40}
)

// ReadRanges returns the limits a bulk reader plans its ranges with
// (PlanReads) on r's backend, and whether LoadRange streams them
// (StreamsRanges): a streamed range holds one blob at a time, so a reader
// may then gather far more blobs per plan without holding more memory,
// and fewer, longer ranges are fewer requests.
func (r *Repository) ReadRanges() (lim RangeLimits, streamed bool) {
	if _, ok := r.be.(storage.RangeOpener); ok {
		return localRanges, false
	}
	if r.StreamsRanges() {
		return streamRanges, true
	}
	return remoteRanges, false
}

// StreamsRanges tells whether LoadRange streams a range rather than
// holding it whole: its callers may then plan ranges as long as a pack
// (RangeLimits.MaxRange) without holding more than a blob at a time.
func (r *Repository) StreamsRanges() bool {
	_, ranges := r.be.(storage.RangeOpener)
	_, ok := r.be.(storage.RangeStreamer)
	return ok && !ranges
}

// streamSkip is how far into a pack a streamed range still starts at the
// pack's first byte, on a storage.WholeObjectPreferrer: asking for a
// whole object lets a server send it without copying (a file's
// sendfile), and a few bytes skipped are cheap. Other backends are asked
// for the range itself: a floe server reads any range the same way, and
// over HTTP/2 what it sent beyond the last blob before the stream was
// closed (up to the stream's flow-control window, 16 MiB) was read,
// encrypted and thrown away: a restore of GOROOT through floe serve moved
// 3.2 times the bytes it needed that way.
const streamSkip = 1 << 20

// streamWholeMin is the shortest range a storage.WholeObjectPreferrer is
// asked for as the whole pack: the server sends a whole object until the
// reader closes it, and a short range (a level of trees, a few small
// files of a window) cost it a pack or its socket buffers for a few KiB:
// a restore of GOROOT from S3 asked for its 1.7 MB tree pack whole once
// per tree level, and the server sent 1.8 times the repository.
const streamWholeMin = 4 << 20

// streamDrain is how much of a stream's tail is read after the last blob
// so that the connection can be reused; a longer tail closes it.
const streamDrain = 1 << 20

// streamRange is LoadRange on a backend that streams: one request for the
// range (to the pack's end), a blob at a time held in memory. The blobs
// after a read error are loaded by themselves from their copies, as the
// blobs of a range that could not be read are.
func (l *BlobLoader) streamRange(ctx context.Context, so storage.RangeStreamer, t BlobType, pr PackRange, fn func(b RangeBlob, plain []byte, err error) error) error {
	if err := checkRangeBlobs(pr); err != nil {
		return err
	}
	// From the start, to the end (the whole object); a range deeper in
	// the pack is asked for as it is.
	start, length := pr.Start, pr.End-pr.Start
	if ws, ok := so.(storage.WholeObjectPreferrer); ok && ws.WholeObjectsCheaper() && start <= streamSkip && length >= streamWholeMin {
		start, length = 0, 0
	}
	body, rerr := so.OpenStream(ctx, storage.Handle{Type: storage.Pack, Name: pr.Pack.String()}, start, length)
	if rerr != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if body != nil && l.fetched != nil {
		body = fetchCounter{body, l.fetched}
	}
	if body != nil {
		defer func() {
			if rerr == nil {
				// A short tail is read so that the connection is reused.
				io.CopyN(io.Discard, body, streamDrain)
			}
			body.Close()
		}()
	}
	pos := start
	var c []byte
	for i := range pr.Blobs {
		b := &pr.Blobs[i]
		ok := false
		switch {
		case rerr != nil:
		case int64(b.Offset) < pos:
			// Overlaps the previous blob, or is the same blob asked for
			// twice: its bytes were decrypted in place, so it is loaded
			// by itself, below.
		default:
			if _, err := io.CopyN(io.Discard, body, int64(b.Offset)-pos); err != nil {
				rerr = fmt.Errorf("pack %s: %w", pr.Pack.Short(), err)
				break
			}
			c = l.rangeRoom(int(b.Length))
			if _, err := io.ReadFull(body, c); err != nil {
				rerr = fmt.Errorf("pack %s: %w", pr.Pack.Short(), err)
				c = nil
				break
			}
			pos = int64(b.Offset) + int64(b.Length)
			ok = true
		}
		if rerr != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		var read []byte // nil: by itself, from its copies
		if ok {
			read = c
		}
		if err := l.deliver(ctx, t, *b, read, true, fn); err != nil {
			return err
		}
	}
	return nil
}

// readRange returns the bytes of pr's range, in l.rangeBuf when the
// backend reads ranges into the caller's buffers.
func (l *BlobLoader) readRange(ctx context.Context, pr PackRange) ([]byte, error) {
	if pr.Start < 0 || pr.End < pr.Start {
		return nil, fmt.Errorf("pack %s: invalid range %d-%d", pr.Pack.Short(), pr.Start, pr.End)
	}
	n := pr.End - pr.Start
	if n == 0 {
		// Load's length 0 means "to the end": never ask for that
		return nil, fmt.Errorf("pack %s: empty range at %d", pr.Pack.Short(), pr.Start)
	}
	if err := checkRangeBlobs(pr); err != nil {
		return nil, err
	}
	if l.ranges == nil {
		h := storage.Handle{Type: storage.Pack, Name: pr.Pack.String()}
		data, err := l.r.be.Load(ctx, h, pr.Start, n)
		if err != nil {
			return nil, err
		}
		if int64(len(data)) != n {
			return nil, fmt.Errorf("load %s: got %d bytes of a %d-byte range: %w", h, len(data), n, io.ErrUnexpectedEOF)
		}
		return data, nil
	}
	if err := l.openPack(ctx, pr.Pack); err != nil {
		return nil, err
	}
	buf := l.rangeRoom(int(n))
	if _, err := l.obj.ReadAt(buf, pr.Start); err != nil {
		return nil, err
	}
	return buf, nil
}

// RangeBytes returns the stored bytes of pr's range, [pr.Start, pr.End) of
// its pack, read with one request into a slice of their own that the
// caller keeps: a reader that needs blobs of the same stretch of a pack
// again (restore's tree levels) opens them from it with LoadRangeFrom.
func (l *BlobLoader) RangeBytes(ctx context.Context, pr PackRange) ([]byte, error) {
	if l.r.WriteOnly() {
		return nil, ErrWriteOnly
	}
	so, streams := l.r.be.(storage.RangeStreamer)
	if !streams || l.ranges != nil {
		data, err := l.readRange(ctx, pr)
		if err != nil {
			return nil, err
		}
		if l.ranges != nil {
			// in the loader's buffer: the next range overwrites it
			data = append([]byte(nil), data...)
		}
		return data, nil
	}
	if err := checkRangeBlobs(pr); err != nil {
		return nil, err
	}
	n := pr.End - pr.Start
	if pr.Start < 0 || n <= 0 {
		return nil, fmt.Errorf("pack %s: invalid range %d-%d", pr.Pack.Short(), pr.Start, pr.End)
	}
	body, err := so.OpenStream(ctx, storage.Handle{Type: storage.Pack, Name: pr.Pack.String()}, pr.Start, n)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	data := make([]byte, n)
	if _, err := io.ReadFull(body, data); err != nil {
		return nil, fmt.Errorf("pack %s: %w", pr.Pack.Short(), err)
	}
	return data, nil
}

// LoadRangeFrom is LoadRange on bytes read before: data holds the stored
// bytes of pr's pack from offset start on (RangeBytes) and must cover
// pr's range. data is only read, so that it serves again. A blob that
// does not open from it is loaded by itself, as LoadRange does.
func (l *BlobLoader) LoadRangeFrom(ctx context.Context, t BlobType, pr PackRange, start int64, data []byte, fn func(b RangeBlob, plain []byte, err error) error) error {
	if l.r.WriteOnly() {
		return ErrWriteOnly
	}
	if err := checkRangeBlobs(pr); err != nil {
		return err
	}
	if pr.Start < start || pr.End > start+int64(len(data)) {
		return fmt.Errorf("pack %s: range %d-%d is not within the %d bytes at %d", pr.Pack.Short(), pr.Start, pr.End, len(data), start)
	}
	for _, b := range pr.Blobs {
		c := data[int64(b.Offset)-start : int64(b.Offset)-start+int64(b.Length)]
		if err := l.deliver(ctx, t, b, c, false, fn); err != nil {
			return err
		}
	}
	return nil
}
