package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
)

// MaxTreeSize bounds the plaintext of a tree blob that readers accept
// (decompression stops there): a directory of a million entries encodes
// to about 150 MiB.
const MaxTreeSize = packfile.MaxTreePlain

const (
	adBlob         = "floe v2 blob"
	blobKeyContext = "floe v2 blob key"
)

// ErrForged is wrapped by errors about a stored copy whose bytes do not
// hash to the blob's ID: damaged, or written by someone who wanted it
// taken for another blob.
var ErrForged = errors.New("stored bytes do not match the blob ID (damaged or forged)")

// BlobKey returns the keyed hash of a blob's plaintext: the K of its Ref,
// from which its encryption key derives (docs/FORMAT.md "Blobs").
func (r *Repository) BlobKey(data []byte) hash.ID { return r.ids.Sum(data) }

// ZeroKeys returns the BlobKey of n zero bytes for each n of sizes (the
// keys of zero chunks), hashing zeros once up to the longest. Lengths
// above the chunker's maximum get no key: no chunk is that long, and a
// hostile tree's claim is never allocated nor hashed.
func (r *Repository) ZeroKeys(sizes []uint32) map[uint32]hash.ID {
	max := r.ChunkerParams().Max
	return r.ids.SumZeros(slices.DeleteFunc(slices.Clone(sizes), func(n uint32) bool { return n > max }))
}

// HasBlob reports whether the repository has the blob, stored or pending.
// A blob whose only copies lie in packs that a gc mark names counts as
// absent: prune may delete those packs. It is for IDs the caller took
// from a snapshot (a parent's unchanged file): those were verified when
// that snapshot was written.
func (r *Repository) HasBlob(h BlobHandle) bool {
	if r.idx.use(h) {
		return true
	}
	return r.isPending(h)
}

// HasTrustedBlob is HasBlob for IDs that did not come from this
// repository's snapshots (copy and import between repositories): only a
// copy that is vouched for counts (docs/FORMAT.md "Deduplication"). A blob
// the index lists only in unverified entries counts as absent, so the
// caller stores it, and SaveBlob then verifies the entry or stores a copy.
func (r *Repository) HasTrustedBlob(h BlobHandle) bool {
	if r.idx.dedup(h) == trusted {
		r.idx.use(h)
		return true
	}
	return r.isPending(h)
}

// RememberRefs tells the repository blobs the caller knows (a parent
// snapshot's refs of a file or directory being saved again): a SaveBlob
// whose key matches one then needs no compression and encryption to find
// the blob's ID.
func (r *Repository) RememberRefs(t BlobType, refs ...hash.Ref) {
	r.runMu.Lock()
	for _, ref := range refs {
		r.runKeys[BlobHandle{t, ref.Key}] = ref.ID
	}
	r.runMu.Unlock()
}

// KnowsKey reports whether this process knows the ID of the blob of type
// t whose key is key (RememberRefs, an earlier SaveBlob), so that SaveBlob
// finds it without compressing and encrypting it.
func (r *Repository) KnowsKey(t BlobType, key hash.ID) bool {
	_, ok := r.knownID(t, key)
	return ok
}

func (r *Repository) knownID(t BlobType, key hash.ID) (hash.ID, bool) {
	r.runMu.Lock()
	id, ok := r.runKeys[BlobHandle{t, key}]
	r.runMu.Unlock()
	return id, ok
}

// verifyCopies reads the copies of h that the index lists until one holds
// exactly sealed (the bytes this process made for the blob, whose hash is
// its ID), and records the result of each check.
func (r *Repository) verifyCopies(ctx context.Context, h BlobHandle, sealed []byte) bool {
	for _, loc := range r.idx.Copies(h) {
		if r.idx.Marked(loc.Pack) {
			continue // prune may delete it: not a copy to rely on
		}
		if loc.Trusted {
			return true
		}
		if int(loc.Length) != len(sealed) {
			r.reportForged(h, loc, "its length differs from the blob's")
			continue
		}
		c, err := r.be.Load(ctx, storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}, int64(loc.Offset), int64(loc.Length))
		if err != nil {
			continue // unreadable now: not proof of forgery, but no proof of the copy either
		}
		if bytes.Equal(c, sealed) {
			r.idx.markVerified(h, loc)
			return true
		}
		r.reportForged(h, loc, "its bytes do not hash to the blob's ID")
	}
	return false
}

// ForgedCopy is a stored copy of a blob whose bytes do not match its ID.
type ForgedCopy struct {
	Blob   BlobHandle
	Pack   hash.ID
	Reason string
	// Others counts the blob's other copies not found bad when
	// ForgedCopies was called (a copy a backup stored anew included): 0
	// means the operation had none to use instead, and failed where it
	// needed the blob.
	Others int
}

func (r *Repository) reportForged(h BlobHandle, loc Location, reason string) {
	r.idx.markBad(h, loc)
	r.forgedMu.Lock()
	defer r.forgedMu.Unlock()
	for _, f := range r.forged {
		if f.Blob == h && f.Pack == loc.Pack {
			return // found again by another goroutine
		}
	}
	if len(r.forged) < 1000 {
		r.forged = append(r.forged, ForgedCopy{Blob: h, Pack: loc.Pack, Reason: reason})
	}
}

// ForgedCopies returns the copies found forged or damaged so far (by
// reads, which then used another copy, and by deduplication, which then
// stored the blob again).
func (r *Repository) ForgedCopies() []ForgedCopy {
	r.forgedMu.Lock()
	out := append([]ForgedCopy(nil), r.forged...)
	r.forgedMu.Unlock()
	for i := range out {
		out[i].Others = len(r.idx.Copies(out[i].Blob))
	}
	return out
}

// sealOverhead is how much longer than its data a sealed blob may be when
// its data is stored as it is: the header byte, the length and the tag.
const sealOverhead = 1 + binary.MaxVarintLen64 + crypto.BlobOverhead

// sealBlob returns the stored form of a blob, in buf's storage when it is
// large enough: the payload (flag, raw length, data compressed or not)
// encrypted in place under the key derived from K (docs/FORMAT.md
// "Blobs"), compressed at level. The same plaintext always gives the same
// bytes at the same level.
func sealBlob(buf []byte, level compress.Level, t BlobType, key hash.ID, data []byte) []byte {
	// room for the stored case and the tag, so that nothing reallocates
	if need := len(data) + sealOverhead; cap(buf) < need {
		buf = make([]byte, 0, need)
	}
	p := append(buf[:0], 1)
	p = binary.AppendUvarint(p, uint64(len(data)))
	if out, ok := level.Compress(p, data); ok {
		p = out
	} else {
		p[0] = 0
		p = append(p, data...)
	}
	return crypto.SealBlob(p[:0], blobKey(key), p, blobAD(t))
}

// packUnique returns the random bytes that make every pack a new object
// (packfile.UniqueLen says why).
func packUnique() [packfile.UniqueLen]byte {
	var u [packfile.UniqueLen]byte
	k := crypto.RandomKey()
	copy(u[:], k[:])
	return u
}

func blobKey(key hash.ID) crypto.Key {
	return crypto.Key(hash.DeriveKey(blobKeyContext, key[:]))
}

func blobAD(t BlobType) []byte {
	return []byte{'f', 'l', 'o', 'e', ' ', 'v', '2', ' ', 'b', 'l', 'o', 'b', byte(t)}
}

// maxRaw is the largest plaintext a blob of type t may decode to.
func (r *Repository) maxRaw(t BlobType) int {
	if t == TreeBlob {
		return MaxTreeSize
	}
	return int(r.chunker.Max)
}

// checkStoredLength is the readers' second line behind the decoders'
// bound (packfile.MaxBlobLength): a copy longer than a blob of type t of
// this repository can be is refused before it is read.
func (r *Repository) checkStoredLength(t BlobType, loc Location) error {
	if limit := packfile.MaxStoredLength(r.maxRaw(t)); loc.Length > limit {
		return fmt.Errorf("copy in pack %s: %d bytes is more than the limit of %d bytes for a stored %s blob (damaged or forged index entry)", loc.Pack.Short(), loc.Length, limit, t)
	}
	return nil
}

// LoadBlob returns the plaintext of the blob ref refers to, appended to
// buf[:0]. Each copy the index knows is tried in turn, best first: a copy
// whose bytes do not hash to the ID is reported (ForgedCopies) and the
// next one read. The plaintext is checked against the ref's key.
func (r *Repository) LoadBlob(ctx context.Context, t BlobType, ref hash.Ref, buf []byte) ([]byte, error) {
	c, err := r.loadGoodCopy(ctx, t, ref, func(ctx context.Context, loc Location) ([]byte, error) {
		return r.be.Load(ctx, storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}, int64(loc.Offset), int64(loc.Length))
	})
	if err != nil {
		return nil, err
	}
	// The bytes are the blob's: every copy would decrypt alike, so an
	// error from here on is about the ref, not the copy.
	return r.openBlob(t, ref, c, buf)
}

// LoadBlobSealed is LoadBlob that also returns the blob's stored bytes,
// which hash to ref.ID (the plaintext is checked against the ref's key
// as LoadBlob does). copy stores them as they are in a repository that
// shares the chunk ID key: compressed anew, a blob could get other bytes
// and so another ID than the one the copied trees name (a disk image's
// blobs are compressed at another level than files', and two
// repositories may be set to different levels).
func (r *Repository) LoadBlobSealed(ctx context.Context, t BlobType, ref hash.Ref, buf []byte) (plain, sealed []byte, err error) {
	c, err := r.loadGoodCopy(ctx, t, ref, func(ctx context.Context, loc Location) ([]byte, error) {
		return r.be.Load(ctx, storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}, int64(loc.Offset), int64(loc.Length))
	})
	if err != nil {
		return nil, nil, err
	}
	plain, err = r.openBlob(t, ref, c, buf)
	return plain, c, err
}

// loadGoodCopy returns the stored bytes of the first copy of ref, best
// first, that read returns and that hash to ref.ID; a copy whose bytes do
// not is reported (ForgedCopies) and the next one tried. LoadBlob and
// BlobLoader differ only in how they read a copy.
func (r *Repository) loadGoodCopy(ctx context.Context, t BlobType, ref hash.Ref, read func(context.Context, Location) ([]byte, error)) ([]byte, error) {
	if r.WriteOnly() {
		return nil, ErrWriteOnly
	}
	h := BlobHandle{t, ref.ID}
	locs := r.idx.Copies(h)
	if len(locs) == 0 {
		if r.idx.Has(h) {
			return nil, fmt.Errorf("%s blob %s: every stored copy is %w", t, ref.Short(), ErrForged)
		}
		return nil, fmt.Errorf("%s blob %s: %w", t, ref.Short(), ErrBlobNotFound)
	}
	var errs []error
	for _, loc := range locs {
		if err := r.checkStoredLength(t, loc); err != nil {
			errs = append(errs, err)
			continue
		}
		c, err := read(ctx, loc)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			errs = append(errs, fmt.Errorf("pack %s: %w", loc.Pack.Short(), err))
			continue
		}
		if packfile.BlobID(t, c) != ref.ID {
			r.reportForged(h, loc, "its bytes do not hash to the blob's ID")
			errs = append(errs, fmt.Errorf("copy in pack %s: %w", loc.Pack.Short(), ErrForged))
			continue
		}
		return c, nil
	}
	return nil, fmt.Errorf("%s blob %s: %w", t, ref.Short(), errors.Join(errs...))
}

// openBlob decrypts, decompresses and verifies one stored blob whose bytes
// already matched ref.ID.
func (r *Repository) openBlob(t BlobType, ref hash.Ref, c []byte, buf []byte) ([]byte, error) {
	plain, err := crypto.OpenBlob(nil, blobKey(ref.Key), c, blobAD(t))
	if err != nil {
		return nil, fmt.Errorf("%s blob %s: does not decrypt with the key its reference holds: %w", t, ref.Short(), err)
	}
	return r.decodePayload(t, ref, plain, buf)
}

func (r *Repository) decodePayload(t BlobType, ref hash.Ref, plain, buf []byte) ([]byte, error) {
	out, _, err := r.decode(t, ref, plain, buf, false)
	return out, err
}

// decode is decodePayload that, with inPlace, returns the data of a payload
// stored uncompressed where it lies in plain instead of copying it to buf;
// inBuf tells whether out is buf, or a buffer that replaces it, rather
// than part of plain (the caller keeps it for the next blob).
func (r *Repository) decode(t BlobType, ref hash.Ref, plain, buf []byte, inPlace bool) (out []byte, inBuf bool, err error) {
	if len(plain) < 2 {
		return nil, false, fmt.Errorf("%s blob %s: payload too short", t, ref.Short())
	}
	raw, n := binary.Uvarint(plain[1:])
	if n <= 0 || raw > uint64(r.maxRaw(t)) {
		return nil, false, fmt.Errorf("%s blob %s: raw length is missing or above the limit of %d bytes", t, ref.Short(), r.maxRaw(t))
	}
	data := plain[1+n:]
	switch plain[0] {
	case 0:
		if inPlace {
			out = data
		} else {
			out, inBuf = append(buf[:0], data...), true
		}
	case 1:
		out, err = compress.Decompress(buf[:0], data, int(raw))
		if err != nil {
			return nil, false, fmt.Errorf("%s blob %s: %w", t, ref.Short(), err)
		}
		inBuf = true
	default:
		return nil, false, fmt.Errorf("%s blob %s: unknown compression flag %d", t, ref.Short(), plain[0])
	}
	if uint64(len(out)) != raw {
		return nil, false, fmt.Errorf("%s blob %s: %d bytes, its header says %d", t, ref.Short(), len(out), raw)
	}
	if r.ids.Sum(out) != ref.Key {
		return nil, false, fmt.Errorf("%s blob %s: content does not match its reference (damaged or forged)", t, ref.Short())
	}
	return out, inBuf, nil
}

// PackBlob is a blob to read from one pack in LoadBlobsFromPack.
type PackBlob struct {
	Type   BlobType
	Ref    hash.Ref
	Offset uint32
	Length uint32
}

// LoadBlobsFromPack reads the given blobs of one pack with as few range
// reads as gaps allow, calling fn for each in offset order with its
// plaintext (valid only during the call) or its error. A copy whose bytes
// do not match its ID is reported and its error wraps ErrForged: the
// caller can read the blob from another copy with LoadBlob. fn's error
// stops the walk.
func (r *Repository) LoadBlobsFromPack(ctx context.Context, pack hash.ID, blobs []PackBlob, fn func(b PackBlob, data []byte, err error) error) error {
	if r.WriteOnly() {
		return ErrWriteOnly
	}
	sortPackBlobs(blobs)
	const maxGap = 1 << 20
	h := storage.Handle{Type: storage.Pack, Name: pack.String()}
	var buf []byte
	for i := 0; i < len(blobs); {
		if err := r.checkStoredLength(blobs[i].Type, Location{Pack: pack, Offset: blobs[i].Offset, Length: blobs[i].Length}); err != nil {
			if ferr := fn(blobs[i], nil, fmt.Errorf("%s blob %s: %w", blobs[i].Type, blobs[i].Ref.Short(), err)); ferr != nil {
				return ferr
			}
			i++
			continue
		}
		j := i + 1
		end := int64(blobs[i].Offset) + int64(blobs[i].Length)
		for j < len(blobs) && int64(blobs[j].Offset) <= end+maxGap && int64(blobs[j].Offset)+int64(blobs[j].Length)-int64(blobs[i].Offset) <= 64<<20 {
			if e := int64(blobs[j].Offset) + int64(blobs[j].Length); e > end {
				end = e
			}
			j++
		}
		start := int64(blobs[i].Offset)
		data, err := r.be.Load(ctx, h, start, end-start)
		for _, b := range blobs[i:j] {
			var plain []byte
			var berr error
			if err != nil {
				berr = fmt.Errorf("%s blob %s: %w", b.Type, b.Ref.Short(), err)
			} else {
				c := data[int64(b.Offset)-start : int64(b.Offset)-start+int64(b.Length)]
				if packfile.BlobID(b.Type, c) != b.Ref.ID {
					r.reportForged(BlobHandle{b.Type, b.Ref.ID}, Location{Pack: pack, Offset: b.Offset, Length: b.Length}, "its bytes do not hash to the blob's ID")
					berr = fmt.Errorf("%s blob %s in pack %s: %w", b.Type, b.Ref.Short(), pack.Short(), ErrForged)
				} else if plain, berr = r.openBlob(b.Type, b.Ref, c, buf); berr == nil {
					buf = plain
				}
			}
			if ferr := fn(b, plain, berr); ferr != nil {
				return ferr
			}
		}
		i = j
	}
	return nil
}

func sortPackBlobs(b []PackBlob) {
	for i := 1; i < len(b); i++ { // usually already sorted: insertion sort
		for j := i; j > 0 && b[j].Offset < b[j-1].Offset; j-- {
			b[j], b[j-1] = b[j-1], b[j]
		}
	}
}

// ErrBlobNotFound means a blob is not in the index.
var ErrBlobNotFound = errors.New("blob not in index")

// RefOf returns the ref a blob of type t with plaintext data has (or would
// have) in this repository, without storing anything: the stored bytes
// are determined by the plaintext.
func (r *Repository) RefOf(t BlobType, data []byte) hash.Ref {
	return r.RefOfContent(t, compress.Files, data)
}

// RefOfContent is RefOf for a blob of content c (Writer.SaveBlobOf).
func (r *Repository) RefOfContent(t BlobType, c compress.Content, data []byte) hash.Ref {
	key := r.BlobKey(data)
	return hash.Ref{ID: packfile.BlobID(t, sealBlob(nil, r.level.For(c), t, key, data)), Key: key}
}
