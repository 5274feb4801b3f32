package repo

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// packsPerIndex is how many packs an index file covers while a backup runs,
// so that a killed backup leaves most of its uploads usable.
const packsPerIndex = 16

// openPack is a pack being filled in memory.
type openPack struct {
	typ       BlobType
	ephemeral crypto.PublicKey
	aead      *crypto.AEAD
	blobs     []PackedBlob
	// Either the pack is buffered whole in buf, or (when the backend is a
	// storage.StreamSaver) each blob is written to out as it is sealed,
	// hashed on the way for the pack's name, and buf is not used.
	buf     []byte
	out     storage.PendingObject
	name    *hash.Writer
	written int
	err     error // first write error of a streamed pack
}

// size is the number of bytes of blobs in the pack so far.
func (p *openPack) size() int { return p.written + len(p.buf) }

// packWriter accepts blobs from many goroutines. They compress in parallel;
// sealing a blob into the one open pack of its type happens under a lock
// (AES-GCM runs at GB/s, so the lock is held briefly), which keeps memory
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
	stage   []byte      // a blob being sealed into a streamed pack (under openMu)
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

// HasBlob reports whether the repository has the blob, stored or pending.
// A blob whose only copies lie in packs that a gc mark names counts as
// absent: prune may delete those packs.
func (r *Repository) HasBlob(h BlobHandle) bool {
	if r.idx.use(h) {
		return true
	}
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

// SaveBlob stores a blob unless the repository has it already (see
// HasBlob). The ID must be r.BlobID(data) (callers compute it to check for
// duplicates early). It returns whether the blob was new and its stored
// size. SaveBlob is safe for concurrent use; data is not retained.
func (r *Repository) SaveBlob(ctx context.Context, t BlobType, id hash.ID, data []byte) (bool, int, error) {
	return r.saveBlob(ctx, t, id, data, true)
}

// SaveBlobCopy stores a blob even if the index has it (prune copies the
// live blobs of packs it repacks); only a copy pending in this writer is
// not stored twice.
func (r *Repository) SaveBlobCopy(ctx context.Context, t BlobType, id hash.ID, data []byte) (bool, int, error) {
	return r.saveBlob(ctx, t, id, data, false)
}

func (r *Repository) saveBlob(ctx context.Context, t BlobType, id hash.ID, data []byte, dedup bool) (bool, int, error) {
	w := r.packWriter()
	h := BlobHandle{t, id}
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return false, 0, err
	}
	if _, ok := w.pending[h]; ok || (dedup && r.idx.use(h)) {
		w.mu.Unlock()
		return false, 0, nil
	}
	w.pending[h] = struct{}{}
	w.mu.Unlock()

	// flag byte, then the compressed or stored payload
	sp, _ := w.scratch.Get().(*[]byte)
	if sp == nil {
		b := make([]byte, 0, len(data)+64)
		sp = &b
	}
	plain := append((*sp)[:0], 1)
	if out, ok := compress.Compress(plain, data); ok {
		plain = out
	} else {
		plain = append(append(plain[:0], 0), data...)
	}
	envLen := len(plain) + crypto.Overhead

	w.openMu.Lock()
	p := w.open[t]
	var full *openPack
	if p != nil && len(p.blobs) > 0 && p.out == nil && len(p.buf)+envLen > cap(p.buf)-headerRoom(len(p.blobs)+1) {
		full, p = p, nil // rotate before the buffer would have to grow
	}
	if p == nil {
		var err error
		if p, err = w.newPack(t, envLen); err != nil {
			w.openMu.Unlock()
			return false, 0, err
		}
		w.open[t] = p
	}
	off := p.size()
	if p.out != nil {
		w.stage = p.aead.Seal(w.stage[:0], plain, blobAD(h))
		p.name.Write(w.stage)
		if _, err := p.out.Write(w.stage); err != nil && p.err == nil {
			p.err = err
		}
		p.written += len(w.stage)
	} else {
		p.buf = p.aead.Seal(p.buf, plain, blobAD(h))
	}
	p.blobs = append(p.blobs, PackedBlob{Type: t, ID: id, Offset: uint32(off), Length: uint32(envLen), RawLength: uint32(len(data))})
	if p.size() >= r.cfg.PackSize && full == nil {
		full = p
		delete(w.open, t)
	}
	w.openMu.Unlock()
	*sp = plain
	w.scratch.Put(sp)

	w.mu.Lock()
	w.stats.Blobs++
	w.stats.RawBytes += uint64(len(data))
	w.stats.StoredBytes += uint64(envLen)
	w.mu.Unlock()
	if full != nil {
		if err := w.submit(ctx, full); err != nil {
			return true, envLen, err
		}
	}
	return true, envLen, nil
}

// minBlobEstimate is the blob size a pack's header room is planned for; a
// pack of smaller blobs rotates early instead of reallocating.
const minBlobEstimate = 4 << 10

// headerRoom is the space the header envelope and trailer of a pack of n
// blobs can take (type, ID and three uvarints per blob).
func headerRoom(n int) int {
	return 64 + n*(1+32+3*binary.MaxVarintLen32) + crypto.Overhead + packTrailerLen
}

// newPack starts a pack whose buffer holds PackSize bytes (or one blob of
// need bytes, if larger), so that appending never reallocates.
func (w *packWriter) newPack(t BlobType, need int) (*openPack, error) {
	eph, key, err := crypto.SealTo(w.r.secrets.DataPublic)
	if err != nil {
		return nil, err
	}
	if ss, ok := w.r.be.(storage.StreamSaver); ok {
		out, err := ss.SaveStream(context.Background(), storage.Pack)
		if err != nil {
			return nil, err
		}
		return &openPack{typ: t, ephemeral: eph, aead: crypto.NewAEAD(key), out: out, name: hash.NewWriter()}, nil
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
	want := max(size, need) + headerRoom(size/minBlobEstimate)
	if cap(buf) < want {
		buf = make([]byte, 0, want)
	}
	return &openPack{typ: t, ephemeral: eph, aead: crypto.NewAEAD(key), buf: buf}, nil
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
	hdr := encodePackHeader(&PackHeader{Ephemeral: p.ephemeral, Blobs: p.blobs})
	if p.out != nil {
		return w.storeStreamed(ctx, p, hdr)
	}
	start := len(p.buf)
	p.buf = w.r.meta.Seal(p.buf, hdr, []byte(adPackHeader))
	p.buf = binary.LittleEndian.AppendUint32(p.buf, uint32(len(p.buf)-start))
	p.buf = append(p.buf, packMagic...)
	id := hash.Sum(p.buf)
	if err := w.r.be.Save(ctx, storage.Handle{Type: storage.Pack, Name: id.String()}, p.buf); err != nil {
		return fmt.Errorf("save pack %s: %w", id.Short(), err)
	}
	return w.stored(ctx, p, id, len(p.buf))
}

// storeStreamed finishes a pack written to a storage.PendingObject.
func (w *packWriter) storeStreamed(ctx context.Context, p *openPack, hdr []byte) error {
	if p.err != nil {
		p.out.Abort()
		return fmt.Errorf("write pack: %w", p.err)
	}
	tail := w.r.meta.Seal(nil, hdr, []byte(adPackHeader))
	tail = binary.LittleEndian.AppendUint32(tail, uint32(len(tail)))
	tail = append(tail, packMagic...)
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

// stored indexes a pack that is now in storage.
func (w *packWriter) stored(ctx context.Context, p *openPack, id hash.ID, size int) error {
	info := PackInfo{ID: id, Ephemeral: p.ephemeral, Blobs: p.blobs}
	w.r.idx.addPacks([]PackInfo{info}, true)
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

// LoadBlob returns the plaintext of a blob, appended to buf[:0]. It checks
// the blob's authenticity and that its content matches its ID.
func (r *Repository) LoadBlob(ctx context.Context, h BlobHandle, buf []byte) ([]byte, error) {
	if r.WriteOnly() {
		return nil, ErrWriteOnly
	}
	loc, ok := r.idx.Lookup(h)
	if !ok {
		return nil, fmt.Errorf("%s blob %s: %w", h.Type, h.ID.Short(), ErrBlobNotFound)
	}
	env, err := r.be.Load(ctx, storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}, int64(loc.Offset), int64(loc.Length))
	if err != nil {
		return nil, fmt.Errorf("%s blob %s: %w", h.Type, h.ID.Short(), err)
	}
	return r.openBlob(h, loc.Pack, nil, env, loc.RawLength, buf)
}

// openBlob decrypts, decompresses and verifies one stored blob.
func (r *Repository) openBlob(h BlobHandle, pack hash.ID, ephemeral *crypto.PublicKey, env []byte, rawLen uint32, buf []byte) ([]byte, error) {
	a, err := r.packAEAD(pack, ephemeral)
	if err != nil {
		return nil, err
	}
	plain, err := a.Open(nil, env, blobAD(h))
	if err != nil {
		return nil, fmt.Errorf("%s blob %s in pack %s: %w", h.Type, h.ID.Short(), pack.Short(), err)
	}
	if len(plain) == 0 {
		return nil, fmt.Errorf("%s blob %s: empty payload", h.Type, h.ID.Short())
	}
	var out []byte
	switch plain[0] {
	case 0:
		out = append(buf[:0], plain[1:]...)
	case 1:
		out, err = compress.Decompress(buf[:0], plain[1:], int(rawLen))
		if err != nil {
			return nil, fmt.Errorf("%s blob %s: %w", h.Type, h.ID.Short(), err)
		}
	default:
		return nil, fmt.Errorf("%s blob %s: unknown compression flag %d", h.Type, h.ID.Short(), plain[0])
	}
	if uint32(len(out)) != rawLen {
		return nil, fmt.Errorf("%s blob %s: %d bytes, index says %d", h.Type, h.ID.Short(), len(out), rawLen)
	}
	if r.ids.Sum(out) != h.ID {
		return nil, fmt.Errorf("%s blob %s: content does not match its ID (damaged or forged)", h.Type, h.ID.Short())
	}
	return out, nil
}

// PackBlob is a blob to read from one pack in LoadBlobsFromPack.
type PackBlob struct {
	Handle    BlobHandle
	Offset    uint32
	Length    uint32
	RawLength uint32
}

// LoadBlobsFromPack reads the given blobs of one pack with as few range
// reads as gaps allow, calling fn for each in offset order with its
// plaintext (valid only during the call) or its error. A read error of a
// range is reported for each blob in it. fn's error stops the walk.
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
				berr = fmt.Errorf("%s blob %s: %w", b.Handle.Type, b.Handle.ID.Short(), err)
			} else {
				env := data[int64(b.Offset)-start : int64(b.Offset)-start+int64(b.Length)]
				plain, berr = r.openBlob(b.Handle, pack, nil, env, b.RawLength, buf)
				if berr == nil {
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
