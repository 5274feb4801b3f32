package repo

// Writing blobs: a Writer fills packs, uploads them as they fill and
// indexes them, from StartWriting to Finish or Abort.

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/slab"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// packsPerIndex is how many packs an index file covers while a backup runs,
// so that a killed backup leaves most of its uploads usable.
const packsPerIndex = 16

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
	written int    // bytes of blobs added to a streamed pack (some in pend)
	pend    []byte // small blobs not yet written to out (streamWrite)
	raw     uint64 // plaintext bytes of the blobs (statistics)
	err     error  // first write error of a streamed pack
}

// size is the number of bytes of blobs in the pack so far.
func (p *openPack) size() int { return p.written + len(p.buf) }

// Writer is a run of blobs being written: the packs it fills and uploads
// exist between StartWriting and Finish or Abort, and only then. Its
// SaveBlob and SaveRawBlob accept blobs from many goroutines. They
// compress and encrypt in parallel; appending a sealed blob to the one
// open pack of its type happens under a lock (a copy at memory speed),
// which keeps memory to three pack buffers: one filling, one uploading,
// one waiting (streamed packs to a server with several connections: one
// spool per upload at once, see uploaders).
type Writer struct {
	r       *Repository
	open    map[BlobType]*openPack
	openMu  sync.Mutex
	uploads chan *openPack
	upWG    sync.WaitGroup
	mu      sync.Mutex
	pending map[BlobHandle]struct{} // claimed but not yet in the index
	unsaved []PackInfo              // stored packs not yet in an index file
	err     error                   // first upload error; sticky
	ended   bool                    // Finish or Abort was called
	scratch sync.Pool               // seal buffers of small blobs
	free    chan []byte             // pack buffers to reuse
	stats   SaveStats
	counts  ui.Counters // CountQueued, CountUploaded; nil: nobody asked
}

// The counters a Writer keeps for CountUploads: the stored bytes of the
// new blobs handed to it (queued), and of those in packs that reached the
// storage (uploaded). What lies between waits in packs being filled or
// uploaded: after a backup has read everything, that is what it still
// waits for.
const (
	CountQueued   = "bytes_queued"
	CountUploaded = "bytes_uploaded"
)

// CountUploads makes w count the bytes it queues and uploads in c
// (CountQueued, CountUploaded), for a progress line. Call it before the
// first SaveBlob.
func (w *Writer) CountUploads(c ui.Counters) { w.counts = c }

// ErrWriterEnded is returned by a Writer's SaveBlob and SaveRawBlob
// after its Finish or Abort.
var ErrWriterEnded = errors.New("repo: blob written after Finish or Abort")

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

// StartWriting starts writing blobs: packs fill and upload as blobs are
// saved until w.Finish (which stores what is left and indexes it all) or
// w.Abort (which indexes only what is stored already). Every Writer must
// end with one of them. Blobs pending in a Writer count for HasBlob.
func (r *Repository) StartWriting() *Writer {
	w := &Writer{r: r, open: map[BlobType]*openPack{}, uploads: make(chan *openPack),
		pending: map[BlobHandle]struct{}{}, free: make(chan []byte, 1)}
	n := uploaders(r.be)
	w.upWG.Add(n)
	for range n {
		go w.uploader()
	}
	r.wmu.Lock()
	if r.writers == nil {
		r.writers = map[*Writer]struct{}{}
	}
	r.writers[w] = struct{}{}
	r.wmu.Unlock()
	return w
}

// uploaders is how many packs upload at once. One suits a local disk,
// which stores a pack in well under the time the workers take to fill one.
// A backend that spreads requests over several connections (a floe
// server, --connections N) gets one per connection (storage.ParallelSaver,
// up to the server's uploads per token): with a single upload
// at a time all connections but one idle, and on a far link one TCP
// connection's window is the whole throughput (bench/REMOTE.md, "Far
// link"). Only for backends that stream packs: each pack then sits in its
// own spool (storage.Spool: memory up to SpoolMemory, then a temporary
// file), so memory grows by at most a pack per connection; packs built
// whole in memory keep the three-buffer bound of one uploader.
func uploaders(be storage.Backend) int {
	if _, ok := be.(storage.StreamSaver); !ok {
		return 1
	}
	if p, ok := storage.As[storage.ParallelSaver](be); ok {
		return max(1, p.ParallelSaves())
	}
	return 1
}

func (r *Repository) isPending(h BlobHandle) bool {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	for w := range r.writers {
		w.mu.Lock()
		_, ok := w.pending[h]
		w.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
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
func (w *Writer) SaveBlob(ctx context.Context, t BlobType, key hash.ID, data []byte) (hash.Ref, bool, int, error) {
	return w.SaveBlobOf(ctx, t, compress.Files, key, data)
}

// SaveBlobOf is SaveBlob for a blob of content c, which together with the
// repository's level decides how a new blob is compressed
// (compress.Level.For: at Auto, disk images at Fastest). A blob this
// process or the index already knows by its key is reused whatever level
// stored it: its bytes decode alike.
func (w *Writer) SaveBlobOf(ctx context.Context, t BlobType, c compress.Content, key hash.ID, data []byte) (hash.Ref, bool, int, error) {
	r := w.r
	if id, ok := r.knownID(t, key); ok && r.HasBlob(BlobHandle{t, id}) {
		return hash.Ref{ID: id, Key: key}, false, 0, nil
	}
	// A large blob is sealed in a buffer from the slab, with room for the
	// largest data blob: as a sync.Pool's, buffers made in the heap were
	// dropped at every collection and faulted in again (a sixth of a
	// large backup's allocations). Its first 4x the average chunk size
	// stay resident while it waits to be reused, as the backup's chunk
	// buffers' (pages are given back only after a larger blob, which may
	// have written past them: zstd's output for data it cannot shrink is
	// a little longer than the data); the backup gives the rest back when
	// it ends (slab.Trim). Small blobs (trees, small files), saved by
	// many goroutines at once, keep small buffers from the heap: a slab
	// buffer each would hold at least a huge page.
	var buf, sealed []byte
	if len(data) >= slabSealMin {
		buf = slab.Get(r.maxRaw(DataBlob) + sealOverhead)
		keep := 4 * int(r.chunker.Avg)
		if len(data)+len(data)/64+sealOverhead+4096 <= keep {
			keep = cap(buf)
		}
		defer slab.Put(buf, keep)
	} else {
		sp, _ := w.scratch.Get().(*[]byte)
		if sp == nil {
			b := make([]byte, 0, len(data)+sealOverhead)
			sp = &b
		}
		buf = *sp
		defer func() {
			*sp = sealed // grown for a larger blob, if it was
			w.scratch.Put(sp)
		}()
	}
	sealed = sealBlob(buf, r.level.For(c), t, key, data)
	if t == DataBlob {
		w.mu.Lock()
		w.stats.EncodedData++
		w.mu.Unlock()
	}
	id := packfile.BlobID(t, sealed)
	ref := hash.Ref{ID: id, Key: key}
	h := BlobHandle{t, id}
	r.RememberRefs(t, ref)

	w.mu.Lock()
	if err := w.stopped(); err != nil {
		w.mu.Unlock()
		return ref, false, 0, err
	}
	if _, ok := w.pending[h]; ok {
		w.mu.Unlock()
		return ref, false, 0, nil
	}
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
	w.pending[h] = struct{}{}
	w.mu.Unlock()
	n, err := w.add(ctx, t, id, sealed, len(data))
	return ref, true, n, err
}

// stopped returns why the writer accepts no more blobs (its sticky upload
// error, or its end), or nil. w.mu is held.
func (w *Writer) stopped() error {
	if w.err != nil {
		return w.err
	}
	if w.ended {
		return ErrWriterEnded
	}
	return nil
}

// SaveRawBlob stores the sealed bytes of a blob as they are (prune copies
// the live blobs of packs it repacks, copy moves blobs between
// repositories that share the chunk ID key): they are checked against id
// first. Unless force, a blob the index has is not stored again.
func (w *Writer) SaveRawBlob(ctx context.Context, t BlobType, id hash.ID, sealed []byte, rawLen int, force bool) (bool, error) {
	if packfile.BlobID(t, sealed) != id {
		return false, fmt.Errorf("%s blob %s: %w", t, id.Short(), ErrForged)
	}
	h := BlobHandle{t, id}
	w.mu.Lock()
	if err := w.stopped(); err != nil {
		w.mu.Unlock()
		return false, err
	}
	if _, ok := w.pending[h]; ok || (!force && w.r.idx.dedup(h) == trusted) {
		w.mu.Unlock()
		return false, nil
	}
	w.pending[h] = struct{}{}
	w.mu.Unlock()
	_, err := w.add(ctx, t, id, sealed, rawLen)
	return true, err
}

// add appends a sealed blob to the open pack of its type.
func (w *Writer) add(ctx context.Context, t BlobType, id hash.ID, sealed []byte, rawLen int) (int, error) {
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
		p.streamWrite(sealed)
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
	if w.counts != nil {
		w.counts.Count(CountQueued, int64(len(sealed)))
	}
	if full != nil {
		if err := w.submit(ctx, full); err != nil {
			return len(sealed), err
		}
	}
	return len(sealed), nil
}

// streamPend is how many bytes of small blobs a streamed pack gathers
// before writing them to its PendingObject: a backup of many directories
// saves a tree blob of a few hundred bytes each, and a write call each
// (to a file, for a local repository) was a tenth of its system calls.
const streamPend = 64 << 10

// streamWrite writes sealed to the streamed pack's out, through pend
// when small. The first error is kept in p.err for storeStreamed.
func (p *openPack) streamWrite(sealed []byte) {
	if len(p.pend)+len(sealed) > streamPend {
		p.flushPend()
	}
	if len(sealed) >= streamPend {
		p.write(sealed)
		return
	}
	if p.pend == nil {
		p.pend = make([]byte, 0, streamPend)
	}
	p.pend = append(p.pend, sealed...)
}

// flushPend writes the gathered small blobs to out.
func (p *openPack) flushPend() {
	if len(p.pend) > 0 {
		p.write(p.pend)
		p.pend = p.pend[:0]
	}
}

func (p *openPack) write(b []byte) {
	if _, err := p.out.Write(b); err != nil && p.err == nil {
		p.err = err
	}
}

// minBlobEstimate is the blob size a pack's header room is planned for; a
// pack of smaller blobs rotates early instead of reallocating.
const minBlobEstimate = 4 << 10

// newPack starts a pack whose buffer holds PackSize bytes (or one blob of
// need bytes, if larger), so that appending never reallocates.
func (w *Writer) newPack(t BlobType, need int) (*openPack, error) {
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

func (w *Writer) submit(ctx context.Context, p *openPack) error {
	select {
	case w.uploads <- p:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *Writer) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *Writer) uploader() {
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
func (w *Writer) store(ctx context.Context, p *openPack) error {
	if p.out != nil {
		return w.storeStreamed(ctx, p)
	}
	p.buf = packfile.AppendHeader(p.buf, packUnique(), p.blobs)
	id := hash.Sum(p.buf)
	w.r.noteUnindexed(PackInfo{ID: id, Blobs: p.blobs})
	if err := w.r.be.Save(ctx, storage.Handle{Type: storage.Pack, Name: id.String()}, p.buf); err != nil {
		return fmt.Errorf("save pack %s: %w", id.Short(), err)
	}
	return w.stored(ctx, p, id)
}

// storeStreamed finishes a pack written to a storage.PendingObject.
func (w *Writer) storeStreamed(ctx context.Context, p *openPack) error {
	p.flushPend()
	p.pend = nil
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
	w.r.noteUnindexed(PackInfo{ID: id, Blobs: p.blobs})
	if err := p.out.Commit(ctx, id.String()); err != nil {
		return fmt.Errorf("save pack %s: %w", id.Short(), err)
	}
	return w.stored(ctx, p, id)
}

// stored indexes a pack that is now in storage. This process wrote it, so
// its entries are trusted.
func (w *Writer) stored(ctx context.Context, p *openPack, id hash.ID) error {
	info := PackInfo{ID: id, Blobs: p.blobs}
	if w.counts != nil {
		var n int64
		for _, b := range p.blobs {
			n += int64(b.Length)
		}
		w.counts.Count(CountUploaded, n)
	}
	w.r.idx.addPacks([]PackInfo{info}, true, true)
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

func (w *Writer) saveIndex(ctx context.Context, packs []PackInfo) error {
	return w.r.indexPacks(ctx, packs)
}

// indexPacks writes index files listing packs, which the in-memory index
// then counts as loaded, and drops the packs' notes (unindexed.go) once
// every file is stored.
func (r *Repository) indexPacks(ctx context.Context, packs []PackInfo) error {
	ids, err := r.SaveIndexFiles(ctx, &IndexFile{Packs: packs})
	r.idx.mu.Lock()
	for _, id := range ids {
		r.idx.files[id] = true
	}
	r.idx.mu.Unlock()
	if err == nil {
		r.dropUnindexed(packs)
	}
	return err
}

// Finish stores the open packs and writes the index for everything
// stored. After Finish returns nil, every blob saved through w is durable
// and indexed. It must not run concurrently with w's SaveBlob; w accepts
// no blobs after it.
func (w *Writer) Finish(ctx context.Context) error { return w.end(ctx, true) }

// Abort ends w without storing its open packs: it waits for the packs being
// uploaded, then writes an index file for every stored pack that is not in
// one yet. An interrupted backup or transfer calls it so that the next run
// deduplicates against what it uploaded, without uploading more after the
// interruption. The blobs of the open packs are dropped: a later SaveBlob
// stores them again. Like Finish, it must not run concurrently with
// SaveBlob.
func (w *Writer) Abort(ctx context.Context) error { return w.end(ctx, false) }

// end ends w: its open packs are stored if store, else dropped; what
// reached storage is indexed in either case (even after an error, a full
// disk, so that a retry does not upload it again).
func (w *Writer) end(ctx context.Context, store bool) error {
	w.mu.Lock()
	if w.ended {
		w.mu.Unlock()
		return nil
	}
	w.ended = true
	w.mu.Unlock()
	w.openMu.Lock()
	open := w.open
	w.open = map[BlobType]*openPack{}
	w.openMu.Unlock()
	var err error
	for _, t := range []BlobType{DataBlob, TreeBlob} {
		p := open[t]
		switch {
		case p == nil:
		case store && len(p.blobs) > 0 && err == nil:
			err = w.submit(ctx, p)
		default: // not stored after all
			w.mu.Lock()
			for _, b := range p.blobs {
				w.stats.Blobs--
				w.stats.StoredBytes -= uint64(b.Length)
			}
			w.stats.RawBytes -= p.raw
			w.mu.Unlock()
			if p.out != nil {
				p.out.Abort() // no temporary file left behind
			}
		}
	}
	close(w.uploads)
	w.upWG.Wait()
	if err == nil {
		err = w.err
	}
	if len(w.unsaved) > 0 {
		if ierr := w.saveIndex(context.WithoutCancel(ctx), w.unsaved); err == nil {
			err = ierr
		}
	}
	r := w.r
	r.wmu.Lock()
	delete(r.writers, w)
	r.saved.add(w.stats)
	r.wmu.Unlock()
	return err
}

// Stats returns what w added so far.
func (w *Writer) Stats() SaveStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

func (s *SaveStats) add(o SaveStats) {
	s.Blobs += o.Blobs
	s.RawBytes += o.RawBytes
	s.StoredBytes += o.StoredBytes
	s.Packs += o.Packs
	s.EncodedData += o.EncodedData
}

// SavedStats returns what was added since Open, by ended writers and
// those still writing.
func (r *Repository) SavedStats() SaveStats {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	s := r.saved
	for w := range r.writers {
		s.add(w.Stats())
	}
	return s
}

// slabSealMin is the size from which a blob is sealed in a slab buffer
// (SaveBlobOf): a file's chunks, not trees or small files.
const slabSealMin = 256 << 10
