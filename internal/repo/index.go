package repo

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// BlobType is the kind of a blob.
type BlobType uint8

// Blob types (docs/FORMAT.md "Blobs").
const (
	DataBlob BlobType = 0
	TreeBlob BlobType = 1
)

func (t BlobType) String() string {
	switch t {
	case DataBlob:
		return "data"
	case TreeBlob:
		return "tree"
	}
	return fmt.Sprintf("blobtype(%d)", uint8(t))
}

// BlobHandle names a blob: its type and ID.
type BlobHandle struct {
	Type BlobType
	ID   hash.ID
}

// PackedBlob is one blob's entry in a pack header or index file.
type PackedBlob struct {
	Type      BlobType `json:"type"`
	ID        hash.ID  `json:"id"`
	Offset    uint32   `json:"offset"`
	Length    uint32   `json:"length"`
	RawLength uint32   `json:"raw_length"`
}

// PackInfo lists the blobs of one pack and its ephemeral public key.
type PackInfo struct {
	ID        hash.ID          `json:"id"`
	Ephemeral crypto.PublicKey `json:"ephemeral"`
	Blobs     []PackedBlob     `json:"blobs"`
}

// IndexFile is the content of one index file.
type IndexFile struct {
	Supersedes []hash.ID  `json:"supersedes,omitempty"`
	Packs      []PackInfo `json:"packs"`
}

const adIndex = "floe v1 index"

// Location says where a blob is stored.
type Location struct {
	Pack      hash.ID
	Offset    uint32
	Length    uint32
	RawLength uint32
}

type indexEntry struct {
	pack                      uint32 // into Index.packs
	offset, length, rawLength uint32
	// referenced: HasBlob or SaveBlob relied on this blob, or this
	// repository stored it (VerifyReferences checks these before a
	// snapshot is written).
	referenced bool
}

type indexPack struct {
	id        hash.ID
	ephemeral crypto.PublicKey
	marked    bool // a gc mark names the pack: prune may delete it
}

// Index is the in-memory union of all index files. Safe for concurrent use.
type Index struct {
	mu       sync.RWMutex
	blobs    map[BlobHandle]indexEntry
	packs    []indexPack
	packPos  map[hash.ID]uint32
	files    map[hash.ID]bool // index files loaded
	replaced map[hash.ID]bool // index files superseded by a loaded one

	// marked are the packs that gc marks name (docs/FORMAT.md "Garbage
	// collection"): their blobs are found, but not deduplicated against.
	marked map[hash.ID]bool
	loaded time.Time     // when LoadIndex started; zero: never
	grace  time.Duration // prune's grace period the backup trusts (SetGCGrace)
}

func newIndex() *Index {
	return &Index{blobs: map[BlobHandle]indexEntry{}, packPos: map[hash.ID]uint32{},
		files: map[hash.ID]bool{}, replaced: map[hash.ID]bool{}, marked: map[hash.ID]bool{},
		grace: DefaultGCGrace}
}

// add merges the packs of one index file.
func (x *Index) add(packs []PackInfo) { x.addPacks(packs, false) }

// addPacks merges packs; own says this repository stored them (their
// blobs count as referenced). Of several copies of a blob, one in a pack
// that no gc mark names is preferred.
func (x *Index) addPacks(packs []PackInfo, own bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, p := range packs {
		pos, ok := x.packPos[p.ID]
		if !ok {
			pos = uint32(len(x.packs))
			x.packs = append(x.packs, indexPack{id: p.ID, ephemeral: p.Ephemeral, marked: x.marked[p.ID]})
			x.packPos[p.ID] = pos
		}
		for _, b := range p.Blobs {
			h := BlobHandle{b.Type, b.ID}
			e := indexEntry{pack: pos, offset: b.Offset, length: b.Length, rawLength: b.RawLength, referenced: own}
			if old, dup := x.blobs[h]; dup {
				if !x.packs[old.pack].marked || x.packs[pos].marked {
					if own && !old.referenced {
						old.referenced = true
						x.blobs[h] = old
					}
					continue // any copy serves
				}
				e.referenced = e.referenced || old.referenced
			}
			x.blobs[h] = e
		}
	}
}

// use reports whether the blob has a copy in a pack that no gc mark names,
// and if so records that the caller relies on it.
func (x *Index) use(h BlobHandle) bool {
	x.mu.RLock()
	e, ok := x.blobs[h]
	ok = ok && !x.packs[e.pack].marked
	x.mu.RUnlock()
	if ok && !e.referenced {
		x.mu.Lock()
		if e, found := x.blobs[h]; found {
			e.referenced = true
			x.blobs[h] = e
		}
		x.mu.Unlock()
	}
	return ok
}

// Marked reports whether a gc mark loaded with the index names the pack.
func (x *Index) Marked(pack hash.ID) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.marked[pack]
}

// Has reports whether the blob is in the index.
func (x *Index) Has(h BlobHandle) bool {
	x.mu.RLock()
	_, ok := x.blobs[h]
	x.mu.RUnlock()
	return ok
}

// Lookup returns where the blob is stored.
func (x *Index) Lookup(h BlobHandle) (Location, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	e, ok := x.blobs[h]
	if !ok {
		return Location{}, false
	}
	return Location{Pack: x.packs[e.pack].id, Offset: e.offset, Length: e.length, RawLength: e.rawLength}, true
}

func (x *Index) ephemeral(pack hash.ID) (crypto.PublicKey, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	pos, ok := x.packPos[pack]
	if !ok {
		return crypto.PublicKey{}, false
	}
	return x.packs[pos].ephemeral, true
}

// Len returns the number of blobs.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.blobs)
}

// Each calls fn for every blob, in no particular order, under a read lock
// (fn must not call back into the index).
func (x *Index) Each(fn func(BlobHandle, Location)) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for h, e := range x.blobs {
		fn(h, Location{Pack: x.packs[e.pack].id, Offset: e.offset, Length: e.length, RawLength: e.rawLength})
	}
}

// Packs returns the IDs of all packs the index names, sorted.
func (x *Index) Packs() []hash.ID {
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := make([]hash.ID, 0, len(x.packs))
	for _, p := range x.packs {
		out = append(out, p.id)
	}
	sort.Slice(out, func(i, j int) bool { return string(out[i][:]) < string(out[j][:]) })
	return out
}

// encodeIndexFile returns the plaintext binary form (docs/FORMAT.md).
func encodeIndexFile(f *IndexFile) []byte {
	n := 16 + len(f.Supersedes)*32
	for _, p := range f.Packs {
		n += 80 + len(p.Blobs)*50
	}
	b := make([]byte, 0, n)
	b = append(b, 1)
	b = binary.AppendUvarint(b, uint64(len(f.Supersedes)))
	for _, id := range f.Supersedes {
		b = append(b, id[:]...)
	}
	b = binary.AppendUvarint(b, uint64(len(f.Packs)))
	for _, p := range f.Packs {
		b = append(b, p.ID[:]...)
		b = append(b, p.Ephemeral[:]...)
		b = appendBlobList(b, p.Blobs)
	}
	return b
}

func appendBlobList(b []byte, blobs []PackedBlob) []byte {
	b = binary.AppendUvarint(b, uint64(len(blobs)))
	for _, bl := range blobs {
		b = append(b, byte(bl.Type))
		b = append(b, bl.ID[:]...)
		b = binary.AppendUvarint(b, uint64(bl.Offset))
		b = binary.AppendUvarint(b, uint64(bl.Length))
		b = binary.AppendUvarint(b, uint64(bl.RawLength))
	}
	return b
}

// decoder reads the binary formats defensively: every count is checked
// against the bytes left, so hostile input cannot force huge allocations.
type decoder struct {
	b   []byte
	err error
}

var errTruncated = errors.New("truncated")

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) u32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 && d.err == nil {
		d.err = errors.New("value out of range")
	}
	return uint32(v)
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.err = errTruncated
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	b := d.bytes(1)
	if d.err != nil {
		return 0
	}
	return b[0]
}

func (d *decoder) id() (id hash.ID) {
	copy(id[:], d.bytes(32))
	return id
}

// count reads a count of items at least minSize bytes each.
func (d *decoder) count(minSize int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)/minSize) {
		d.err = fmt.Errorf("count %d exceeds the data left", n)
		return 0
	}
	return int(n)
}

func (d *decoder) blobList() []PackedBlob {
	n := d.count(36)
	blobs := make([]PackedBlob, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		t := BlobType(d.byte())
		bl := PackedBlob{Type: t, ID: d.id(), Offset: d.u32(), Length: d.u32(), RawLength: d.u32()}
		if t != DataBlob && t != TreeBlob {
			d.err = fmt.Errorf("unknown blob type %d", t)
		}
		if bl.Length < crypto.Overhead+1 && d.err == nil {
			d.err = fmt.Errorf("blob length %d is shorter than an envelope", bl.Length)
		}
		blobs = append(blobs, bl)
	}
	return blobs
}

// DecodeIndexFile decodes the plaintext of an index file.
func DecodeIndexFile(plain []byte) (*IndexFile, error) {
	d := &decoder{b: plain}
	if v := d.byte(); d.err == nil && v != 1 {
		return nil, fmt.Errorf("index version %d not supported", v)
	}
	f := &IndexFile{}
	n := d.count(32)
	for i := 0; i < n && d.err == nil; i++ {
		f.Supersedes = append(f.Supersedes, d.id())
	}
	n = d.count(65)
	f.Packs = make([]PackInfo, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		p := PackInfo{ID: d.id()}
		copy(p.Ephemeral[:], d.bytes(32))
		p.Blobs = d.blobList()
		f.Packs = append(f.Packs, p)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d bytes of trailing garbage", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode index: %w", d.err)
	}
	return f, nil
}

// SaveIndexFile encrypts and stores an index file, returning its ID.
func (r *Repository) SaveIndexFile(ctx context.Context, f *IndexFile) (hash.ID, error) {
	data := r.meta.Seal(nil, encodeIndexFile(f), []byte(adIndex))
	id := hash.Sum(data)
	if err := r.be.Save(ctx, storage.Handle{Type: storage.Index, Name: id.String()}, data); err != nil {
		return id, fmt.Errorf("save index %s: %w", id.Short(), err)
	}
	return id, nil
}

// LoadIndexFile reads, verifies and decodes one index file.
func (r *Repository) LoadIndexFile(ctx context.Context, id hash.ID) (*IndexFile, error) {
	data, err := storage.ReadAll(ctx, r.be, storage.Handle{Type: storage.Index, Name: id.String()})
	if err != nil {
		return nil, err
	}
	if hash.Sum(data) != id {
		return nil, fmt.Errorf("index %s: content does not match its name (damaged)", id.Short())
	}
	plain, err := r.meta.Open(nil, data, []byte(adIndex))
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", id.Short(), err)
	}
	f, err := DecodeIndexFile(plain)
	if err != nil {
		return nil, fmt.Errorf("index %s: %w", id.Short(), err)
	}
	return f, nil
}

// ListIDs lists the IDs of all objects of type t; names that are not IDs
// are reported through bad (may be nil) and skipped.
func (r *Repository) ListIDs(ctx context.Context, t storage.FileType) ([]hash.ID, error) {
	var ids []hash.ID
	err := r.be.List(ctx, t, func(fi storage.FileInfo) error {
		id, err := hash.Parse(fi.Name)
		if err != nil {
			return nil // not ours; check reports stray files
		}
		ids = append(ids, id)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", t, err)
	}
	return ids, nil
}

// IndexLoadError reports index files that could not be loaded. The index
// is still usable with the others (restore of unaffected files works).
type IndexLoadError struct{ Errs []error }

func (e *IndexLoadError) Error() string {
	return fmt.Sprintf("%d index file(s) could not be loaded: %v", len(e.Errs), errors.Join(e.Errs...))
}

// LoadIndex reads every index file and every gc mark into memory, in
// parallel. Damaged index files are skipped and reported in an
// *IndexLoadError; the rest are used. Blobs whose only copies lie in
// packs that gc marks name are found (LoadBlob) but not deduplicated
// against (HasBlob, SaveBlob).
func (r *Repository) LoadIndex(ctx context.Context) error {
	start := time.Now()
	marked, err := r.markedPacks(ctx)
	if err != nil {
		return err
	}
	files, errs, err := r.loadIndexFiles(ctx)
	if err != nil {
		return err
	}
	idx := newIndex()
	if r.idx != nil {
		idx.grace = r.idx.grace
	}
	idx.loaded = start
	idx.marked = marked
	idx.addFiles(files)
	r.idx = idx
	if len(errs) > 0 {
		return &IndexLoadError{Errs: errs}
	}
	return nil
}

// addFiles adds index files minus the superseded ones, in a fixed order.
func (x *Index) addFiles(files map[hash.ID]*IndexFile) {
	ids := make([]hash.ID, 0, len(files))
	for id, f := range files {
		ids = append(ids, id)
		x.files[id] = true
		for _, s := range f.Supersedes {
			x.replaced[s] = true
		}
	}
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	for _, id := range ids {
		if !x.replaced[id] {
			x.add(files[id].Packs)
		}
	}
}

// loadIndexFiles loads every index file. A prune running meanwhile may
// write an index file that supersedes others and then remove them: a file
// that vanishes is skipped when a loaded file supersedes it, else the
// files are listed again (up to three times) to find the new one.
// Files that cannot be loaded are returned in errs.
func (r *Repository) loadIndexFiles(ctx context.Context) (map[hash.ID]*IndexFile, []error, error) {
	files := map[hash.ID]*IndexFile{}
	tried := map[hash.ID]bool{}
	var errs []error
	gone := map[hash.ID]error{}
	for attempt := 0; ; attempt++ {
		ids, err := r.ListIDs(ctx, storage.Index)
		if err != nil {
			return nil, nil, err
		}
		var todo []hash.ID
		for _, id := range ids {
			if !tried[id] {
				tried[id] = true
				todo = append(todo, id)
			}
		}
		loaded, lerrs := r.loadIndexFileList(ctx, todo)
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		for i, id := range todo {
			switch {
			case lerrs[i] == nil:
				files[id] = loaded[i]
			case storage.IsNotExist(lerrs[i]):
				gone[id] = lerrs[i]
			default:
				errs = append(errs, lerrs[i])
			}
		}
		for _, f := range files {
			for _, s := range f.Supersedes {
				delete(gone, s)
			}
		}
		if len(gone) == 0 {
			return files, errs, nil
		}
		if len(todo) == 0 || attempt == 2 {
			for _, err := range gone {
				errs = append(errs, err)
			}
			return files, errs, nil
		}
	}
}

// loadIndexFileList loads the given index files on four goroutines.
func (r *Repository) loadIndexFileList(ctx context.Context, ids []hash.ID) ([]*IndexFile, []error) {
	files := make([]*IndexFile, len(ids))
	errs := make([]error, len(ids))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(4, len(ids)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				files[i], errs[i] = r.LoadIndexFile(ctx, ids[i])
			}
		}()
	}
	for i := range ids {
		if ctx.Err() != nil {
			errs[i] = ctx.Err()
			continue
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return files, errs
}
