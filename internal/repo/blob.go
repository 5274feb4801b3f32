package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
)

// packsPerIndex is how many packs an index file covers while a backup runs,
// so that a killed backup leaves most of its uploads usable.
const packsPerIndex = 16

// MaxTreeSize bounds the plaintext of a tree blob that readers accept
// (decompression stops there): a directory of a million entries encodes
// to about 150 MiB.
const MaxTreeSize = 256 << 20

const (
	adBlob         = "floe v2 blob"
	blobKeyContext = "floe v2 blob key"
)

// ErrForged is wrapped by errors about a stored copy whose bytes do not
// hash to the blob's ID: damaged, or written by someone who wanted it
// taken for another blob.
var ErrForged = errors.New("stored bytes do not match the blob ID (damaged or forged)")

// openPack is a pack being filled in memory.
type openPack struct {
	typ   BlobType
	blobs []PackedBlob
	// Either the pack is buffered whole in buf, or (when the backend is a
	// storage.StreamSaver) each blob is written to out as it is added,
	// hashed on the way for the pack's name, and buf is not used.
	buf     []byte
	out     storage.PendingObject
	name    *hash.Writer
	written int
	raw     uint64 // plaintext bytes of the blobs (statistics)
	err     error  // first write error of a streamed pack
}

// size is the number of bytes of blobs in the pack so far.
func (p *openPack) size() int { return p.written + len(p.buf) }

// packWriter accepts blobs from many goroutines. They compress and
// encrypt in parallel; appending a sealed blob to the one open pack of its
// type happens under a lock (a copy at memory speed), which keeps memory
// to three pack buffers: one filling, one uploading, one waiting.
type packWriter struct {
	r       *Repository
	open    map[BlobType]*openPack
	openMu  sync.Mutex
	uploads chan *openPack
	upWG    sync.WaitGroup
	mu      sync.Mutex
	pending map[BlobHandle]struct{} // claimed but not yet in the index
	unsaved []PackInfo              // stored packs not yet in an index file
	err     error                   // first upload error; sticky
	scratch sync.Pool
	free    chan []byte // pack buffers to reuse
	stats   SaveStats
	// onUpload is told the size of each stored pack (progress).
	onUpload func(n int64)
}

// SaveStats counts what SaveBlob added.
type SaveStats struct {
	Blobs       uint64 // new blobs
	RawBytes    uint64 // their plaintext size
	StoredBytes uint64 // their stored size
	Packs       uint64
	// EncodedData counts the data blobs SaveBlob compressed and encrypted
	// to find their IDs: those its key did not find (docs/FORMAT.md
	// "Deduplication"), stored or not.
	EncodedData uint64
}

func (r *Repository) packWriter() *packWriter {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.writer != nil {
		return r.writer
	}
	w := &packWriter{r: r, open: map[BlobType]*openPack{}, uploads: make(chan *openPack),
		pending: map[BlobHandle]struct{}{}, free: make(chan []byte, 1)}
	// One uploader: a local disk stores a pack in well under the time the
	// workers take to fill one; remote backends will want more.
	w.upWG.Add(1)
	go w.uploader()
	r.writer = w
	return w
}

// SetUploadObserver registers fn to be told the size of each stored pack
// (progress reporting). Call before saving blobs.
func (r *Repository) SetUploadObserver(fn func(n int64)) { r.packWriter().onUpload = fn }

// BlobKey returns the keyed hash of a blob's plaintext: the K of its Ref,
// from which its encryption key derives (docs/FORMAT.md "Blobs").
func (r *Repository) BlobKey(data []byte) hash.ID { return r.ids.Sum(data) }

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

func (r *Repository) isPending(h BlobHandle) bool {
	r.wmu.Lock()
	w := r.writer
	r.wmu.Unlock()
	if w == nil {
		return false
	}
	w.mu.Lock()
	_, ok := w.pending[h]
	w.mu.Unlock()
	return ok
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

func (r *Repository) knownID(t BlobType, key hash.ID) (hash.ID, bool) {
	r.runMu.Lock()
	id, ok := r.runKeys[BlobHandle{t, key}]
	r.runMu.Unlock()
	return id, ok
}

// SaveBlob stores a blob of plaintext data whose key (BlobKey(data)) the
// caller computed, unless the repository has it already, and returns its
// Ref, whether it was new and its stored size. SaveBlob is safe for
// concurrent use; data is not retained.
//
// Deduplication (docs/FORMAT.md "Deduplication"): the key is looked up in
// the refs this process knows (RememberRefs and earlier SaveBlobs); only on
// a miss is the blob compressed and encrypted, which yields its ID, and
// the index asked. A copy that the index lists without vouching for it
// (an unsigned index file) is read and hashed before it is relied on; if
// it does not match, the blob is stored again and the copy reported.
func (r *Repository) SaveBlob(ctx context.Context, t BlobType, key hash.ID, data []byte) (hash.Ref, bool, int, error) {
	return r.saveBlob(ctx, t, key, data, true)
}

func (r *Repository) saveBlob(ctx context.Context, t BlobType, key hash.ID, data []byte, dedup bool) (hash.Ref, bool, int, error) {
	w := r.packWriter()
	if dedup {
		if id, ok := r.knownID(t, key); ok && r.HasBlob(BlobHandle{t, id}) {
			return hash.Ref{ID: id, Key: key}, false, 0, nil
		}
	}
	sp, _ := w.scratch.Get().(*[]byte)
	if sp == nil {
		b := make([]byte, 0, len(data)+64)
		sp = &b
	}
	defer w.scratch.Put(sp)
	sealed := sealBlob(*sp, t, key, data)
	if t == DataBlob {
		w.mu.Lock()
		w.stats.EncodedData++
		w.mu.Unlock()
	}
	*sp = sealed
	id := packfile.BlobID(t, sealed)
	ref := hash.Ref{ID: id, Key: key}
	h := BlobHandle{t, id}
	r.RememberRefs(t, ref)

	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return ref, false, 0, err
	}
	if _, ok := w.pending[h]; ok {
		w.mu.Unlock()
		return ref, false, 0, nil
	}
	if dedup {
		switch r.idx.dedup(h) {
		case trusted:
			w.mu.Unlock()
			r.idx.use(h)
			return ref, false, 0, nil
		case untrusted:
			w.mu.Unlock()
			if r.verifyCopies(ctx, h, sealed) {
				r.idx.use(h)
				return ref, false, 0, nil
			}
			w.mu.Lock()
			if _, ok := w.pending[h]; ok {
				w.mu.Unlock()
				return ref, false, 0, nil
			}
		}
	}
	w.pending[h] = struct{}{}
	w.mu.Unlock()
	n, err := w.add(ctx, t, id, sealed, len(data))
	return ref, true, n, err
}

// SaveRawBlob stores the sealed bytes of a blob as they are (prune copies
// the live blobs of packs it repacks, copy moves blobs between
// repositories that share the chunk ID key): they are checked against id
// first. Unless force, a blob the index has is not stored again.
func (r *Repository) SaveRawBlob(ctx context.Context, t BlobType, id hash.ID, sealed []byte, rawLen int, force bool) (bool, error) {
	if packfile.BlobID(t, sealed) != id {
		return false, fmt.Errorf("%s blob %s: %w", t, id.Short(), ErrForged)
	}
	w := r.packWriter()
	h := BlobHandle{t, id}
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return false, err
	}
	if _, ok := w.pending[h]; ok || (!force && r.idx.dedup(h) == trusted) {
		w.mu.Unlock()
		return false, nil
	}
	w.pending[h] = struct{}{}
	w.mu.Unlock()
	_, err := w.add(ctx, t, id, sealed, rawLen)
	return true, err
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
	defer r.forgedMu.Unlock()
	return append([]ForgedCopy(nil), r.forged...)
}

// sealBlob returns the stored form of a blob, in buf's storage when it is
// large enough: the payload (flag, raw length, data compressed or not)
// encrypted in place under the key derived from K (docs/FORMAT.md
// "Blobs"). The same plaintext always gives the same bytes.
func sealBlob(buf []byte, t BlobType, key hash.ID, data []byte) []byte {
	// room for the stored case and the tag, so that nothing reallocates
	if need := len(data) + 1 + binary.MaxVarintLen64 + crypto.BlobOverhead; cap(buf) < need {
		buf = make([]byte, 0, need)
	}
	p := append(buf[:0], 1)
	p = binary.AppendUvarint(p, uint64(len(data)))
	if out, ok := compress.Compress(p, data); ok {
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

// add appends a sealed blob to the open pack of its type.
func (w *packWriter) add(ctx context.Context, t BlobType, id hash.ID, sealed []byte, rawLen int) (int, error) {
	w.openMu.Lock()
	p := w.open[t]
	var full *openPack
	if p != nil && len(p.blobs) > 0 && p.out == nil && len(p.buf)+len(sealed) > cap(p.buf)-packfile.HeaderRoom(len(p.blobs)+1) {
		full, p = p, nil // rotate before the buffer would have to grow
	}
	if p == nil {
		var err error
		if p, err = w.newPack(t, len(sealed)); err != nil {
			w.openMu.Unlock()
			return 0, err
		}
		w.open[t] = p
	}
	off := p.size()
	if p.out != nil {
		p.name.Write(sealed)
		if _, err := p.out.Write(sealed); err != nil && p.err == nil {
			p.err = err
		}
		p.written += len(sealed)
	} else {
		p.buf = append(p.buf, sealed...)
	}
	p.blobs = append(p.blobs, PackedBlob{Type: t, ID: id, Offset: uint32(off), Length: uint32(len(sealed))})
	p.raw += uint64(rawLen)
	if p.size() >= w.r.cfg.PackSize && full == nil {
		full = p
		delete(w.open, t)
	}
	w.openMu.Unlock()

	w.mu.Lock()
	w.stats.Blobs++
	w.stats.RawBytes += uint64(rawLen)
	w.stats.StoredBytes += uint64(len(sealed))
	w.mu.Unlock()
	if full != nil {
		if err := w.submit(ctx, full); err != nil {
			return len(sealed), err
		}
	}
	return len(sealed), nil
}

// minBlobEstimate is the blob size a pack's header room is planned for; a
// pack of smaller blobs rotates early instead of reallocating.
const minBlobEstimate = 4 << 10

// newPack starts a pack whose buffer holds PackSize bytes (or one blob of
// need bytes, if larger), so that appending never reallocates.
func (w *packWriter) newPack(t BlobType, need int) (*openPack, error) {
	if ss, ok := w.r.be.(storage.StreamSaver); ok {
		out, err := ss.SaveStream(context.Background(), storage.Pack)
		if err != nil {
			return nil, err
		}
		return &openPack{typ: t, out: out, name: hash.NewWriter()}, nil
	}
	size := w.r.cfg.PackSize
	if t == TreeBlob {
		size = 4 << 20
	}
	var buf []byte
	if t == DataBlob {
		select {
		case buf = <-w.free:
		default:
		}
	}
	// room for the blobs, the header and the trailer: a pack is stored
	// from this buffer without ever being copied
	want := max(size, need) + packfile.HeaderRoom(size/minBlobEstimate)
	if cap(buf) < want {
		buf = make([]byte, 0, want)
	}
	return &openPack{typ: t, buf: buf}, nil
}

func (w *packWriter) submit(ctx context.Context, p *openPack) error {
	select {
	case w.uploads <- p:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *packWriter) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *packWriter) uploader() {
	defer w.upWG.Done()
	for p := range w.uploads {
		if err := w.store(context.Background(), p); err != nil {
			w.fail(err)
		}
		if p.typ == DataBlob && cap(p.buf) > 0 {
			select {
			case w.free <- p.buf[:0]:
			default:
			}
		}
		p.buf = nil
	}
}

// store finishes a pack (header + trailer), saves it, and indexes it.
func (w *packWriter) store(ctx context.Context, p *openPack) error {
	if p.out != nil {
		return w.storeStreamed(ctx, p)
	}
	p.buf = packfile.AppendHeader(p.buf, packUnique(), p.blobs)
	id := hash.Sum(p.buf)
	if err := w.r.be.Save(ctx, storage.Handle{Type: storage.Pack, Name: id.String()}, p.buf); err != nil {
		return fmt.Errorf("save pack %s: %w", id.Short(), err)
	}
	return w.stored(ctx, p, id, len(p.buf))
}

// storeStreamed finishes a pack written to a storage.PendingObject.
func (w *packWriter) storeStreamed(ctx context.Context, p *openPack) error {
	if p.err != nil {
		p.out.Abort()
		return fmt.Errorf("write pack: %w", p.err)
	}
	tail := packfile.AppendHeader(nil, packUnique(), p.blobs)
	p.name.Write(tail)
	if _, err := p.out.Write(tail); err != nil {
		p.out.Abort()
		return fmt.Errorf("write pack: %w", err)
	}
	id := p.name.Sum()
	if err := p.out.Commit(ctx, id.String()); err != nil {
		return fmt.Errorf("save pack %s: %w", id.Short(), err)
	}
	return w.stored(ctx, p, id, p.written+len(tail))
}

// stored indexes a pack that is now in storage. This process wrote it, so
// its entries are trusted.
func (w *packWriter) stored(ctx context.Context, p *openPack, id hash.ID, size int) error {
	info := PackInfo{ID: id, Blobs: p.blobs}
	w.r.idx.addPacks([]PackInfo{info}, true, true)
	if w.onUpload != nil {
		w.onUpload(int64(size))
	}
	w.mu.Lock()
	for _, b := range p.blobs {
		delete(w.pending, BlobHandle{b.Type, b.ID})
	}
	w.unsaved = append(w.unsaved, info)
	w.stats.Packs++
	var batch []PackInfo
	if len(w.unsaved) >= packsPerIndex {
		batch, w.unsaved = w.unsaved, nil
	}
	w.mu.Unlock()
	if batch != nil {
		return w.saveIndex(ctx, batch)
	}
	return nil
}

func (w *packWriter) saveIndex(ctx context.Context, packs []PackInfo) error {
	id, err := w.r.SaveIndexFile(ctx, &IndexFile{Packs: packs})
	if err != nil {
		return err
	}
	w.r.idx.mu.Lock()
	w.r.idx.files[id] = true
	w.r.idx.mu.Unlock()
	return nil
}

// Flush stores all open packs and writes the index for everything stored.
// After Flush returns nil, every blob saved so far is durable and indexed.
func (r *Repository) Flush(ctx context.Context) error {
	r.wmu.Lock()
	w := r.writer
	r.writer = nil
	r.wmu.Unlock()
	if w == nil {
		return nil
	}
	var err error
	w.openMu.Lock()
	open := w.open
	w.open = map[BlobType]*openPack{}
	w.openMu.Unlock()
	for _, t := range []BlobType{DataBlob, TreeBlob} {
		p := open[t]
		switch {
		case p == nil:
		case len(p.blobs) > 0 && err == nil:
			err = w.submit(ctx, p)
		case p.out != nil:
			p.out.Abort() // no temporary file left behind
		}
	}
	close(w.uploads)
	w.upWG.Wait()
	if err == nil {
		err = w.err
	}
	// Index what reached storage even after an error (a full disk), so
	// that a retry does not upload it again.
	if len(w.unsaved) > 0 {
		if ierr := w.saveIndex(context.WithoutCancel(ctx), w.unsaved); err == nil {
			err = ierr
		}
	}
	r.statsMu.Lock()
	r.saved.add(w.stats)
	r.statsMu.Unlock()
	return err
}

func (s *SaveStats) add(o SaveStats) {
	s.Blobs += o.Blobs
	s.RawBytes += o.RawBytes
	s.StoredBytes += o.StoredBytes
	s.Packs += o.Packs
	s.EncodedData += o.EncodedData
}

// SavedStats returns what was added since Open, counting flushed writers.
func (r *Repository) SavedStats() SaveStats {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	s := r.saved
	if r.writer != nil {
		r.writer.mu.Lock()
		s.add(r.writer.stats)
		r.writer.mu.Unlock()
	}
	return s
}

// maxRaw is the largest plaintext a blob of type t may decode to.
func (r *Repository) maxRaw(t BlobType) int {
	if t == TreeBlob {
		return MaxTreeSize
	}
	return int(r.chunker.Max)
}

// LoadBlob returns the plaintext of the blob ref refers to, appended to
// buf[:0]. Each copy the index knows is tried in turn, best first: a copy
// whose bytes do not hash to the ID is reported (ForgedCopies) and the
// next one read. The plaintext is checked against the ref's key.
func (r *Repository) LoadBlob(ctx context.Context, t BlobType, ref hash.Ref, buf []byte) ([]byte, error) {
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
		c, err := r.be.Load(ctx, storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}, int64(loc.Offset), int64(loc.Length))
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
		// The bytes are the blob's: every copy would decrypt alike, so an
		// error here is about the ref, not the copy.
		return r.openBlob(t, ref, c, buf)
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
	if len(plain) < 2 {
		return nil, fmt.Errorf("%s blob %s: payload too short", t, ref.Short())
	}
	raw, n := binary.Uvarint(plain[1:])
	if n <= 0 || raw > uint64(r.maxRaw(t)) {
		return nil, fmt.Errorf("%s blob %s: raw length is missing or above the limit of %d bytes", t, ref.Short(), r.maxRaw(t))
	}
	data := plain[1+n:]
	var out []byte
	var err error
	switch plain[0] {
	case 0:
		out = append(buf[:0], data...)
	case 1:
		out, err = compress.Decompress(buf[:0], data, int(raw))
		if err != nil {
			return nil, fmt.Errorf("%s blob %s: %w", t, ref.Short(), err)
		}
	default:
		return nil, fmt.Errorf("%s blob %s: unknown compression flag %d", t, ref.Short(), plain[0])
	}
	if uint64(len(out)) != raw {
		return nil, fmt.Errorf("%s blob %s: %d bytes, its header says %d", t, ref.Short(), len(out), raw)
	}
	if r.ids.Sum(out) != ref.Key {
		return nil, fmt.Errorf("%s blob %s: content does not match its reference (damaged or forged)", t, ref.Short())
	}
	return out, nil
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
	key := r.BlobKey(data)
	return hash.Ref{ID: packfile.BlobID(t, sealBlob(nil, t, key, data)), Key: key}
}
