package repo

// Whole-pack reading for the readers that look at every byte of a pack:
// check --read-data (and --read-data-subset) and prune, which verifies the
// packs that only unsigned index files list and copies the live blobs of
// the packs it repacks. (Restore reads coalesced ranges of packs through
// BlobLoader.LoadRange, packread.go; the two readers could share their
// range reading.)

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/zeebo/blake3"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
)

// scanWindow is how much of a pack a PackScanner reads at once beyond the
// longest blob it must hold whole: large enough that a pack costs a few
// reads, small enough that a scanner's memory does not grow with the
// pack size (a config may ask for packs of up to 1 GiB).
const scanWindow = 4 << 20

// PackScanner reads packs from start to end, each byte once, hashing each
// listed blob (against its ID) and, if asked, the whole pack (against its
// name) as it goes, and decrypts blobs it verified. It reuses its buffers
// from pack to pack, so that reading a repository allocates nothing per
// pack or blob: check --read-data spent a third of its time hashing each
// blob three times and clearing freshly allocated buffers.
//
// On a backend that reads ranges into the caller's buffer
// (storage.RangeOpener, the local backend) a pack is read in windows of a
// few MiB; on others (object stores, the floe server) in one request,
// which is what those backends do best.
//
// A PackScanner is not safe for concurrent use: make one per goroutine.
type PackScanner struct {
	r       *Repository
	ranges  storage.RangeOpener // nil: whole packs through Backend.Load
	buf     []byte
	payload []byte // decrypted payload of the last Open
	plain   []byte // decompressed plaintext of the last Open
	hasher  *blake3.Hasher
	// window and gap are scanWindow and maxGap (rangeGap); tests make them small
	window, gap int64
}

// NewPackScanner returns a scanner for r.
func (r *Repository) NewPackScanner() *PackScanner {
	s := &PackScanner{r: r, hasher: blake3.New(), window: scanWindow, gap: maxGap}
	// On the backend itself, not through storage.As: a wrapper that limits
	// or meters loads must see every one of them.
	if ro, ok := r.be.(storage.RangeOpener); ok {
		s.ranges = ro
		// A skipped gap costs one more read into the caller's buffer
		// (a system call on the local backend), not a request: skip
		// gaps longer than a few pages rather than copy them.
		s.gap = rangeGap
	}
	return s
}

// ScanResult is what Scan read.
type ScanResult struct {
	// Sum is the BLAKE3 of the pack's bytes (its name, if it is intact),
	// when Scan was asked for it; zero otherwise.
	Sum hash.ID
	// Size is how many bytes the pack holds (all of them were read).
	Size int64
}

// Scan reads pack id whole, once and in order, hashing it all if hashPack
// (for ScanResult.Sum), and calls fn for each of
// blobs (in offset order, those past the end of the pack last;
// duplicates once) with its stored bytes, valid only during the call, and
// nil, or the reason they are not the blob's: an error wrapping ErrForged
// when they do not hash to its ID, or one saying that the blob lies past
// the end of the pack (truncated; c is then nil). A pack larger than
// MaxPackSize is refused before it is read. Scan's error says that the
// pack could not be read (fn may have been called for some blobs), or is
// fn's error.
func (s *PackScanner) Scan(ctx context.Context, id hash.ID, blobs []PackedBlob, hashPack bool, fn func(b PackedBlob, c []byte, err error) error) (ScanResult, error) {
	return s.read(ctx, id, blobs, true, hashPack, fn)
}

// Blobs is Scan for readers that need only the given blobs (prune's
// repack): it reads only the ranges that hold them, in order (gaps
// shorter than a MiB, 64 KiB on a backend that reads ranges into a
// buffer, are read through, so that neighbours cost one read),
// and does not hash the whole pack.
func (s *PackScanner) Blobs(ctx context.Context, id hash.ID, blobs []PackedBlob, fn func(b PackedBlob, c []byte, err error) error) error {
	_, err := s.read(ctx, id, blobs, false, false, fn)
	return err
}

// maxGap is the longest gap between two blobs that Blobs reads through
// rather than skips with a new read.
const maxGap = 1 << 20

// rangeGap is maxGap on a backend that reads ranges into the caller's
// buffer (storage.RangeOpener).
const rangeGap = 64 << 10

// read reads the blobs of pack id, and all its bytes if whole; it hashes
// them all if hashPack (which needs whole).
func (s *PackScanner) read(ctx context.Context, id hash.ID, blobs []PackedBlob, whole, hashPack bool, fn func(b PackedBlob, c []byte, err error) error) (ScanResult, error) {
	hashPack = hashPack && whole
	sorted := slices.Clone(blobs)
	slices.SortFunc(sorted, packfile.CompareBlobs)
	sorted = slices.Compact(sorted)
	h := storage.Handle{Type: storage.Pack, Name: id.String()}
	if s.ranges == nil {
		if whole {
			return s.loadWhole(ctx, id, h, sorted, hashPack, fn)
		}
		return ScanResult{}, s.loadRanges(ctx, id, h, sorted, fn)
	}
	if err := ctx.Err(); err != nil {
		return ScanResult{}, err
	}
	obj, err := s.ranges.OpenRange(ctx, h)
	if err != nil {
		return ScanResult{}, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	defer obj.Close()
	size := obj.Size()
	if limit := s.r.MaxPackSize(); size > limit || size < 0 {
		return ScanResult{}, fmt.Errorf("pack %s: %d bytes is more than the limit of %d bytes for a pack: %w", id.Short(), size, limit, storage.ErrTooLarge)
	}
	sorted, past, longest := splitPastEnd(sorted, size)
	// The buffer holds the longest blob whole plus a window; a blob that
	// straddles a window's end moves to the buffer's start.
	end := size // where reading stops
	if !whole {
		end = 0
		for _, b := range sorted {
			end = max(end, int64(b.Offset)+int64(b.Length))
		}
	}
	want := min(end, longest+s.window)
	if int64(cap(s.buf)) < want {
		s.buf = make([]byte, want)
	}
	buf := s.buf[:want]
	s.hasher.Reset()
	var base, n, pos int64 // buf[:n] holds the pack's bytes base..pos
	for pos < end {
		if err := ctx.Err(); err != nil {
			return ScanResult{}, err
		}
		// keep the bytes of the next blob that is not complete yet
		keep := pos
		if len(sorted) > 0 && int64(sorted[0].Offset) < keep {
			keep = int64(sorted[0].Offset)
		}
		copy(buf, buf[keep-base:n])
		n -= keep - base
		base = keep
		if !whole && n == 0 && len(sorted) > 0 && int64(sorted[0].Offset)-pos >= s.gap {
			// skip a long gap: nothing before the next blob is needed
			pos, base = int64(sorted[0].Offset), int64(sorted[0].Offset)
		}
		stop := end
		if !whole && len(sorted) > 0 {
			// Read only to the end of the run of blobs that begins with
			// the next one: the bytes of a gap beyond it would be copied
			// for nothing (repack reads packs that are half garbage), and
			// the next read skips the gap. sorted[0] ends past pos, so the
			// read gets somewhere.
			stop = int64(sorted[0].Offset) + int64(sorted[0].Length)
			for _, b := range sorted[1:] {
				if int64(b.Offset)-stop >= s.gap || stop-pos >= int64(len(buf))-n {
					break
				}
				stop = max(stop, int64(b.Offset)+int64(b.Length))
			}
		}
		k := min(stop-pos, int64(len(buf))-n)
		got, err := obj.ReadAt(buf[n:n+k], pos)
		if err != nil && !(errors.Is(err, io.EOF) && int64(got) == k) {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("pack shrank while reading: %w", io.ErrUnexpectedEOF)
			}
			return ScanResult{}, fmt.Errorf("pack %s: %w", id.Short(), err)
		}
		if hashPack {
			_, _ = s.hasher.Write(buf[n : n+k])
		}
		n += k
		pos += k
		done := 0
		for done < len(sorted) && int64(sorted[done].Offset)+int64(sorted[done].Length) <= pos {
			done++
		}
		if err := scanBlobs(id, buf[:n], base, pos, size, sorted[:done], fn); err != nil {
			return ScanResult{}, err
		}
		sorted = sorted[done:]
	}
	res := ScanResult{Size: size}
	if hashPack {
		s.hasher.Sum(res.Sum[:0])
	}
	return res, scanBlobs(id, nil, size, size, size, past, fn)
}

// loadWhole is read(whole) on a backend without range reads: the pack in
// one request, what object stores serve best.
func (s *PackScanner) loadWhole(ctx context.Context, id hash.ID, h storage.Handle, sorted []PackedBlob, hashPack bool, fn func(b PackedBlob, c []byte, err error) error) (ScanResult, error) {
	data, err := storage.LoadAll(ctx, s.r.be, h, s.r.MaxPackSize())
	if err != nil {
		return ScanResult{}, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	size := int64(len(data))
	res := ScanResult{Size: size}
	if hashPack {
		res.Sum = hash.Sum(data)
	}
	inside, past, _ := splitPastEnd(sorted, size)
	if err := scanBlobs(id, data, 0, size, size, inside, fn); err != nil {
		return res, err
	}
	return res, scanBlobs(id, nil, size, size, size, past, fn)
}

// loadRanges is read(!whole) on a backend without range reads into a
// buffer: one request per run of blobs no more than maxGap apart.
func (s *PackScanner) loadRanges(ctx context.Context, id hash.ID, h storage.Handle, sorted []PackedBlob, fn func(b PackedBlob, c []byte, err error) error) error {
	size, err := s.r.PackSize(ctx, id)
	if err != nil {
		return err
	}
	if limit := s.r.MaxPackSize(); size > limit || size < 0 {
		return fmt.Errorf("pack %s: %d bytes is more than the limit of %d bytes for a pack: %w", id.Short(), size, limit, storage.ErrTooLarge)
	}
	sorted, past, longest := splitPastEnd(sorted, size)
	for i := 0; i < len(sorted); {
		start, end := int64(sorted[i].Offset), int64(sorted[i].Offset)+int64(sorted[i].Length)
		j := i + 1
		// a request holds at most a window beyond the longest blob, as
		// the buffer of the range path does
		for j < len(sorted) && int64(sorted[j].Offset)-end < s.gap &&
			max(end, int64(sorted[j].Offset)+int64(sorted[j].Length))-start <= longest+s.window {
			end = max(end, int64(sorted[j].Offset)+int64(sorted[j].Length))
			j++
		}
		var data []byte
		if end > start { // Load's length 0 means "to the end"
			data, err = s.r.be.Load(ctx, h, start, end-start)
			if err != nil {
				return fmt.Errorf("pack %s: %w", id.Short(), err)
			}
		}
		if int64(len(data)) != end-start {
			return fmt.Errorf("pack %s: got %d bytes at %d, want %d: %w", id.Short(), len(data), start, end-start, io.ErrUnexpectedEOF)
		}
		if err := scanBlobs(id, data, start, end, size, sorted[i:j], fn); err != nil {
			return err
		}
		i = j
	}
	return scanBlobs(id, nil, size, size, size, past, fn)
}

// splitPastEnd splits blobs into those inside a pack of size bytes and
// those past its end, and returns the length of the longest inside.
func splitPastEnd(blobs []PackedBlob, size int64) (inside, past []PackedBlob, longest int64) {
	inside = blobs[:0:0]
	for _, b := range blobs {
		if int64(b.Offset)+int64(b.Length) > size {
			past = append(past, b)
			continue
		}
		inside = append(inside, b)
		longest = max(longest, int64(b.Length))
	}
	return inside, past, longest
}

// scanBlobs verifies blobs (sorted by offset) that end by pos, the bytes
// base..pos of the size-byte pack being data.
func scanBlobs(id hash.ID, data []byte, base, pos, size int64, blobs []PackedBlob, fn func(b PackedBlob, c []byte, err error) error) error {
	for _, b := range blobs {
		off, end := int64(b.Offset), int64(b.Offset)+int64(b.Length)
		var c []byte
		var err error
		switch {
		case end > size:
			err = fmt.Errorf("%s blob %s: bytes %d..%d lie past the end of the %d-byte pack %s (truncated)",
				b.Type, b.ID.Short(), off, end, size, id.Short())
		case off < base || end > pos:
			// cannot happen: Scan keeps the bytes of every blob until it ends
			err = fmt.Errorf("%s blob %s in pack %s: bytes %d..%d not held (internal error)", b.Type, b.ID.Short(), id.Short(), off, end)
		default:
			c = data[off-base : end-base]
			if packfile.BlobID(b.Type, c) != b.ID {
				err = fmt.Errorf("%s blob %s in pack %s: %w", b.Type, b.ID.Short(), id.Short(), ErrForged)
			}
		}
		if ferr := fn(b, c, err); ferr != nil {
			return ferr
		}
	}
	return nil
}

// Open decrypts and verifies the stored bytes c of blob b that Scan has
// just handed to fn without an error (so c hashes to b.ID; Open does not
// hash them again), with ref, which names b: the plaintext must decrypt
// with ref's key, decompress within the limits and hash to ref's key, as
// every reader checks (readers: FORMAT.md "Blobs"). The plaintext is valid
// until the next Open.
func (s *PackScanner) Open(b PackedBlob, ref hash.Ref, c []byte) ([]byte, error) {
	if s.r.WriteOnly() {
		return nil, ErrWriteOnly
	}
	if ref.ID != b.ID {
		return nil, fmt.Errorf("%s blob %s: the reference names blob %s", b.Type, b.ID.Short(), ref.Short())
	}
	payload, err := crypto.OpenBlob(s.payload[:0], blobKey(ref.Key), c, blobAD(b.Type))
	if err != nil {
		return nil, fmt.Errorf("%s blob %s: does not decrypt with the key its reference holds: %w", b.Type, ref.Short(), err)
	}
	s.payload = payload
	plain, err := s.r.decodePayload(b.Type, ref, payload, s.plain)
	if err != nil {
		return nil, err
	}
	s.plain = plain
	return plain, nil
}

// SaveScannedBlob stores the bytes c of blob b that a PackScanner has just
// handed to its fn without an error, so verified against b's ID (prune's
// repack): SaveRawBlob would hash them a second time. The blob is stored
// even if the index has it (prune copies what it keeps out of a pack it
// is about to mark), but not twice by this writer.
func (w *Writer) SaveScannedBlob(ctx context.Context, b PackedBlob, c []byte) error {
	h := BlobHandle{b.Type, b.ID}
	w.mu.Lock()
	if err := w.stopped(); err != nil {
		w.mu.Unlock()
		return err
	}
	if _, ok := w.pending[h]; ok {
		w.mu.Unlock()
		return nil
	}
	w.pending[h] = struct{}{}
	w.mu.Unlock()
	_, err := w.add(ctx, b.Type, b.ID, c, 0)
	return err
}
