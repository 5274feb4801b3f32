package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// BlobType is the kind of a blob (packfile.Type).
type BlobType = packfile.Type

// Blob types (docs/FORMAT.md "Blobs").
const (
	DataBlob = packfile.Data
	TreeBlob = packfile.Tree
)

// BlobHandle names a blob: its type and ID.
type BlobHandle struct {
	Type BlobType
	ID   hash.ID
}

// PackedBlob is one blob's entry in a pack header or index file.
type PackedBlob = packfile.Blob

// PackInfo lists the blobs of one pack.
type PackInfo = packfile.Pack

// IndexFile is the content of one index file. Trusted says that the
// authority's signature over it verified: its entries were written or
// verified by a full key, and only then is its Supersedes honoured.
type IndexFile = packfile.Index

// Location says where one copy of a blob is stored.
type Location struct {
	Pack   hash.ID
	Offset uint32
	Length uint32
	// Trusted: a signed index file lists this copy, this process wrote or
	// verified it, or the backend verifies uploads.
	Trusted bool
}

// copyLoc is one copy of a blob.
type copyLoc struct {
	pack           uint32 // into Index.packs
	offset, length uint32
	trusted        bool
	bad            bool // its bytes do not hash to the blob's ID
}

type indexEntry struct {
	copyLoc // the best copy (rank)
	// referenced: HasBlob or SaveBlob relied on this blob, or this
	// repository stored it (VerifyReferences checks these before a
	// snapshot is written).
	referenced bool
}

type indexPack struct {
	id     hash.ID
	marked bool // a gc mark names the pack: prune may delete it
}

// Index is the in-memory union of all index files. It keeps every copy of
// a blob that an index file names, because a copy may be forged (its
// bytes do not match the ID) and readers then fall back to another.
// Safe for concurrent use.
type Index struct {
	mu      sync.RWMutex
	blobs   blobTable
	extra   map[BlobHandle][]copyLoc // copies beyond the best one (rare)
	packs   []indexPack
	packPos map[hash.ID]uint32 // packs added after the load (and all, before buildFiles)
	// packOrder: positions in packs of the packs buildFiles loaded, sorted
	// by ID (a map of 625,000 packs took 7 bytes per chunk of 10 million)
	packOrder []uint32
	files     map[hash.ID]bool // index files loaded
	replaced  map[hash.ID]bool // index files superseded by a loaded signed one

	// marked are the packs that signed gc marks name (docs/FORMAT.md
	// "Garbage collection"): their blobs are found, but not deduplicated
	// against.
	marked map[hash.ID]bool
	loaded time.Time     // when LoadIndex started; zero: never
	grace  time.Duration // prune's grace period the backup trusts (SetGCGrace)
}

func newIndex() *Index {
	return &Index{blobs: newBlobTable(), extra: map[BlobHandle][]copyLoc{}, packPos: map[hash.ID]uint32{},
		files: map[hash.ID]bool{}, replaced: map[hash.ID]bool{}, marked: map[hash.ID]bool{},
		grace: DefaultGCGrace}
}

// packNumber returns the position of pack in x.packs.
func (x *Index) packNumber(pack hash.ID) (uint32, bool) {
	if pos, ok := x.packPos[pack]; ok {
		return pos, true
	}
	i := sort.Search(len(x.packOrder), func(i int) bool { return bytes.Compare(x.packs[x.packOrder[i]].id[:], pack[:]) >= 0 })
	if i < len(x.packOrder) && x.packs[x.packOrder[i]].id == pack {
		return x.packOrder[i], true
	}
	return 0, false
}

// packSlot returns pack's number, numbering it if it is new. x.mu is
// held (or x is not shared yet).
func (x *Index) packSlot(pack hash.ID) uint32 {
	if pos, ok := x.packNumber(pack); ok {
		return pos
	}
	pos := uint32(len(x.packs))
	x.packs = append(x.packs, indexPack{id: pack, marked: x.marked[pack]})
	x.packPos[pack] = pos
	return pos
}

// rank orders copies, lower is better: good before bad, unmarked before
// marked, trusted before untrusted.
func (x *Index) rank(c copyLoc) int {
	r := 0
	if c.bad {
		r += 4
	}
	if x.packs[c.pack].marked {
		r += 2
	}
	if !c.trusted {
		r++
	}
	return r
}

// hasPack tells whether x lists pack.
func (x *Index) hasPack(pack hash.ID) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	_, ok := x.packNumber(pack)
	return ok
}

// addPacks merges packs; trusted says their entries are vouched for, own
// that this repository stored them (their blobs count as referenced).
func (x *Index) addPacks(packs []PackInfo, trusted, own bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, p := range packs {
		pos := x.packSlot(p.ID)
		for _, b := range p.Blobs {
			x.addCopy(BlobHandle{b.Type, b.ID}, copyLoc{pack: pos, offset: b.Offset, length: b.Length, trusted: trusted}, own)
		}
	}
}

func (x *Index) addCopy(h BlobHandle, c copyLoc, own bool) {
	e, dup := x.blobs.get(h)
	if !dup {
		x.blobs.set(h, indexEntry{copyLoc: c, referenced: own})
		return
	}
	e.referenced = e.referenced || own
	same := func(o copyLoc) bool { return o.pack == c.pack && o.offset == c.offset && o.length == c.length }
	if same(e.copyLoc) {
		e.trusted = e.trusted || c.trusted
		x.blobs.set(h, e)
		return
	}
	ex := x.extra[h]
	for i := range ex {
		if same(ex[i]) {
			ex[i].trusted = ex[i].trusted || c.trusted
			x.blobs.set(h, e)
			x.rerank(h)
			return
		}
	}
	x.extra[h] = append(ex, c)
	x.blobs.set(h, e)
	x.rerank(h)
}

// rerank makes the best copy of h the primary one.
func (x *Index) rerank(h BlobHandle) {
	e, _ := x.blobs.get(h)
	ex := x.extra[h]
	best := -1
	for i := range ex {
		if x.rank(ex[i]) < x.rank(e.copyLoc) && (best < 0 || x.rank(ex[i]) < x.rank(ex[best])) {
			best = i
		}
	}
	if best >= 0 {
		e.copyLoc, ex[best] = ex[best], e.copyLoc
		x.blobs.set(h, e)
	}
}

// setCopy changes the copy of h in pack: trusted (verified) or bad.
func (x *Index) setCopy(h BlobHandle, pack hash.ID, offset uint32, fn func(*copyLoc)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	pos, ok := x.packNumber(pack)
	e, found := x.blobs.get(h)
	if !ok || !found {
		return
	}
	if e.pack == pos && e.offset == offset {
		fn(&e.copyLoc)
		x.blobs.set(h, e)
	}
	for i, c := range x.extra[h] {
		if c.pack == pos && c.offset == offset {
			fn(&x.extra[h][i])
		}
	}
	x.rerank(h)
}

// markVerified records that the copy of h in pack hashed to its ID.
func (x *Index) markVerified(h BlobHandle, loc Location) {
	x.setCopy(h, loc.Pack, loc.Offset, func(c *copyLoc) { c.trusted = true; c.bad = false })
}

// markBad records that the copy of h in pack does not hash to its ID.
func (x *Index) markBad(h BlobHandle, loc Location) {
	x.setCopy(h, loc.Pack, loc.Offset, func(c *copyLoc) { c.bad = true; c.trusted = false })
}

// use reports whether the blob has a copy not known to be bad in a pack
// that no gc mark names, and if so records that the caller relies on it.
// It is for IDs the caller already relies on (from its parent snapshot):
// those were verified when that snapshot was made, so trust is not asked.
func (x *Index) use(h BlobHandle) bool {
	x.mu.RLock()
	e, ok := x.blobs.get(h)
	ok = ok && !e.bad && !x.packs[e.pack].marked
	x.mu.RUnlock()
	if ok && !e.referenced {
		x.mu.Lock()
		if e, found := x.blobs.get(h); found {
			e.referenced = true
			x.blobs.set(h, e)
		}
		x.mu.Unlock()
	}
	return ok
}

// dedupState is what the index says about a blob a backup wants to store.
type dedupState int

const (
	absent    dedupState = iota // no usable copy: store it
	trusted                     // a trusted copy in an unmarked pack: rely on it
	untrusted                   // only unverified copies: verify one first
)

func (x *Index) dedup(h BlobHandle) dedupState {
	x.mu.RLock()
	defer x.mu.RUnlock()
	e, ok := x.blobs.get(h)
	switch {
	case !ok || e.bad || x.packs[e.pack].marked:
		return absent
	case e.trusted:
		return trusted
	}
	return untrusted
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
	_, ok := x.blobs.get(h)
	x.mu.RUnlock()
	return ok
}

func (x *Index) loc(c copyLoc) Location {
	return Location{Pack: x.packs[c.pack].id, Offset: c.offset, Length: c.length, Trusted: c.trusted}
}

// Lookup returns where the best copy of the blob is stored.
func (x *Index) Lookup(h BlobHandle) (Location, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	e, ok := x.blobs.get(h)
	if !ok {
		return Location{}, false
	}
	return x.loc(e.copyLoc), true
}

// Copies returns every known copy of the blob, best first; copies found
// bad are left out.
func (x *Index) Copies(h BlobHandle) []Location {
	x.mu.RLock()
	defer x.mu.RUnlock()
	e, ok := x.blobs.get(h)
	if !ok {
		return nil
	}
	var out []Location
	if !e.bad {
		out = append(out, x.loc(e.copyLoc))
	}
	ex := append([]copyLoc(nil), x.extra[h]...)
	sort.SliceStable(ex, func(i, j int) bool { return x.rank(ex[i]) < x.rank(ex[j]) })
	for _, c := range ex {
		if !c.bad {
			out = append(out, x.loc(c))
		}
	}
	return out
}

// Len returns the number of blobs.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.blobs.len()
}

// Each calls fn for every blob with its best copy, in no particular order,
// under a read lock (fn must not call back into the index).
func (x *Index) Each(fn func(BlobHandle, Location)) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	x.blobs.each(func(h BlobHandle, e indexEntry) {
		fn(h, x.loc(e.copyLoc))
	})
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

// domainIndex is the signature domain of index files.
const domainIndex = "floe v2 index"

// encodeIndexFile returns the stored form of f: signed when this key is a
// full key (it holds the authority), unsigned for a write-only key.
func (r *Repository) encodeIndexFile(f *IndexFile) ([]byte, error) {
	var sign func([]byte) []byte
	if r.secrets.AuthorityPrivate != nil {
		seed := *r.secrets.AuthorityPrivate
		sign = func(m []byte) []byte { return seed.Sign(domainIndex, m) }
	}
	return packfile.EncodeIndex(f, sign)
}

// SaveIndexFile stores an index file (signed with a full key), returning
// its ID. f must hold at most packfile.MaxIndexEntries entries: writers
// of more use SaveIndexFiles or SplitIndexFile.
func (r *Repository) SaveIndexFile(ctx context.Context, f *IndexFile) (hash.ID, error) {
	return r.SaveIndexFileTo(ctx, r.be, f)
}

// IndexFileID returns the ID f would be stored under by SaveIndexFile
// (signatures are deterministic, so the ID is known before writing).
func (r *Repository) IndexFileID(f *IndexFile) (hash.ID, error) {
	data, err := r.encodeIndexFile(f)
	if err != nil {
		return hash.ID{}, err
	}
	return hash.Sum(data), nil
}

// SaveIndexFiles stores f as one or more index files of at most
// packfile.MaxIndexEntries entries each (SplitIndexFile), in order, and
// returns their IDs in that order. On an error, the files stored before
// it stay (each is a valid index file, see SplitIndexFile).
func (r *Repository) SaveIndexFiles(ctx context.Context, f *IndexFile) ([]hash.ID, error) {
	var ids []hash.ID
	for _, part := range SplitIndexFile(f, packfile.MaxIndexEntries) {
		id, err := r.SaveIndexFile(ctx, part)
		if err != nil {
			return ids, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// indexEntries counts the entries of f the way SplitIndexFile does: each
// superseded file, each pack and each blob is one.
func indexEntries(f *IndexFile) int {
	n := len(f.Supersedes) + len(f.Packs)
	for _, p := range f.Packs {
		n += len(p.Blobs)
	}
	return n
}

// SplitIndexFile splits f into index files of at most max entries each
// (a superseded file, a pack and each of its blobs count one), to be
// written in the order returned (docs/FORMAT.md "Garbage collection"). A
// pack is never split (an index entry lists every blob of its pack): one
// with more blobs than max gets a file of its own, which stays under
// packfile.MaxIndexLen since the pack's header is bounded. The packs come
// first, in f's order; the superseded files come after every pack, so a
// file that supersedes anything is written only when every pack of f is
// listed in it or in a file written before it: a writer stopped between
// two files leaves the old files in force (packs listed twice), never a
// pack of f unlisted.
func SplitIndexFile(f *IndexFile, max int) []*IndexFile {
	if indexEntries(f) <= max {
		return []*IndexFile{f}
	}
	var out []*IndexFile
	cur := &IndexFile{Packs: []PackInfo{}}
	n := 0
	flush := func() {
		out = append(out, cur)
		cur, n = &IndexFile{Packs: []PackInfo{}}, 0
	}
	for _, p := range f.Packs {
		if k := 1 + len(p.Blobs); n > 0 && n+k > max {
			flush()
		}
		cur.Packs = append(cur.Packs, p)
		n += 1 + len(p.Blobs)
	}
	for _, id := range f.Supersedes {
		if n > 0 && n+1 > max {
			flush()
		}
		cur.Supersedes = append(cur.Supersedes, id)
		n++
	}
	if n > 0 {
		flush()
	}
	return out
}

// DecodeIndexFile decodes a stored index file and verifies its signature,
// if any, with the authority's public key: Trusted is set when it verifies.
// A signature that does not verify is an error (the file is damaged or
// forged), not a silent downgrade.
func (r *Repository) DecodeIndexFile(data []byte) (*IndexFile, error) {
	f, err := packfile.DecodeIndex(data)
	if err != nil {
		return nil, err
	}
	if f.Signature != nil {
		if !r.secrets.AuthorityPublic.Verify(domainIndex, f.Signed, f.Signature) {
			return nil, errors.New("signature does not verify (damaged or forged)")
		}
		f.Trusted = true
	}
	// Signed and Signature point into data: dropped, so that the stored
	// bytes do not stay in memory as long as the decoded file (at 10
	// million chunks, 400 MB more at the peak of LoadIndex). Trusted says
	// what they said.
	f.Signed, f.Signature = nil, nil
	return f, nil
}

// ErrDamagedIndex is matched (errors.Is) by the errors of LoadIndexFile
// that say the stored file itself is bad: its content does not match its
// name, does not decode, or its signature does not verify (a file larger
// than any index file fails with storage.ErrTooLarge). Other errors are
// the storage's: the file may be fine. repair removes only damaged files.
var ErrDamagedIndex = errors.New("index file is damaged")

// damagedIndexError keeps the message of a damaged index file and makes
// it match ErrDamagedIndex.
type damagedIndexError struct{ err error }

func (e damagedIndexError) Error() string        { return e.err.Error() }
func (e damagedIndexError) Unwrap() error        { return e.err }
func (e damagedIndexError) Is(target error) bool { return target == ErrDamagedIndex }

// LoadIndexFile reads, verifies and decodes one index file.
func (r *Repository) LoadIndexFile(ctx context.Context, id hash.ID) (*IndexFile, error) {
	data, err := storage.LoadAll(ctx, r.be, storage.Handle{Type: storage.Index, Name: id.String()}, maxIndexSize)
	if err != nil {
		return nil, err
	}
	if hash.Sum(data) != id {
		return nil, damagedIndexError{fmt.Errorf("index %s: content does not match its name (damaged)", id.Short())}
	}
	f, err := r.DecodeIndexFile(data)
	if err != nil {
		return nil, damagedIndexError{fmt.Errorf("index %s: %w", id.Short(), err)}
	}
	if r.verifiesUploads {
		f.Verified = true
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
	return fmt.Sprintf("%s could not be loaded: %v", ui.Count(len(e.Errs), "index file"), errors.Join(e.Errs...))
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
	grace := DefaultGCGrace
	if r.idx != nil {
		grace = r.idx.grace
	}
	dir := r.indexCacheDir
	var key [32]byte
	if dir != "" {
		key = r.indexCacheKey(marked)
		idx, errs, ok, err := r.loadIndexCached(ctx, dir, key, marked)
		if err != nil {
			return err
		}
		if ok {
			idx.grace, idx.loaded = grace, start
			r.idx = idx
			if len(errs) > 0 {
				return &IndexLoadError{Errs: errs}
			}
			return nil
		}
	}
	files, errs, err := r.loadIndexFiles(ctx)
	if err != nil {
		return err
	}
	idx := newIndex()
	idx.grace = grace
	idx.loaded = start
	idx.marked = marked
	idx.addFiles(files)
	r.idx = idx
	r.indexSource = "files"
	if dir != "" && idx.blobs.len() >= indexCacheMin {
		// A cache that cannot be written costs the next load its speed
		// only: no error.
		_ = r.writeIndexCache(dir, key, idx, slices.Collect(maps.Keys(files)))
	}
	if len(errs) > 0 {
		return &IndexLoadError{Errs: errs}
	}
	return nil
}

// Superseded returns the index files that the trusted (signed) files of
// files supersede. Supersedes in an unsigned file is ignored: otherwise a
// write-only host could hide every other index file.
func Superseded(files map[hash.ID]*IndexFile) map[hash.ID]bool {
	replaced := map[hash.ID]bool{}
	for _, f := range files {
		if !f.Trusted {
			continue
		}
		for _, s := range f.Supersedes {
			replaced[s] = true
		}
	}
	return replaced
}

// addFiles adds index files minus the superseded ones, in a fixed order.
func (x *Index) addFiles(files map[hash.ID]*IndexFile) {
	ids := make([]hash.ID, 0, len(files))
	for id := range files {
		ids = append(ids, id)
		x.files[id] = true
	}
	x.replaced = Superseded(files)
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	if x.blobs.len() == 0 {
		x.buildFiles(ids, files)
		return
	}
	for _, id := range ids {
		if !x.replaced[id] {
			x.addPacks(files[id].Packs, files[id].EntriesTrusted(), false)
		}
	}
}

// buildFiles fills an empty index with the files ids (none superseded):
// every first copy of a blob goes into the table's sorted array at once,
// and further copies are merged one by one, exactly as addPacks would.
func (x *Index) buildFiles(ids []hash.ID, files map[hash.ID]*IndexFile) {
	x.mu.Lock()
	defer x.mu.Unlock()
	var nblobs, npacks int
	for _, id := range ids {
		if !x.replaced[id] {
			npacks += len(files[id].Packs)
			for _, p := range files[id].Packs {
				nblobs += len(p.Blobs)
			}
		}
	}
	if len(x.packs) == 0 {
		x.packPos = make(map[hash.ID]uint32, npacks)
		x.packs = make([]indexPack, 0, npacks)
	}
	// The files to add, in order, and the position of each of their packs
	// in x.packs (numbered in file order, a pack listed twice once).
	var list []*IndexFile
	for _, id := range ids {
		if !x.replaced[id] {
			list = append(list, files[id])
		}
	}
	packPos := make([][]uint32, len(list))
	for i, f := range list {
		packPos[i] = make([]uint32, len(f.Packs))
		for j := range f.Packs {
			id := f.Packs[j].ID
			pos, ok := x.packPos[id]
			if !ok {
				pos = uint32(len(x.packs))
				x.packs = append(x.packs, indexPack{id: id, marked: x.marked[id]})
				x.packPos[id] = pos
			}
			packPos[i][j] = pos
		}
	}
	// Place each blob in its bucket of the table's array, by its ID's
	// first two bytes, in file order (a stable counting sort): no
	// intermediate array of every copy, which at 10 million chunks cost
	// 560 MB of the load's peak memory. The files are split between the
	// cores, each with its own cursors into every bucket, its files' blobs
	// after those of the files before them.
	workers := max(1, min(runtime.GOMAXPROCS(0), nblobs/buildPerWorker))
	bounds := []int{0}
	for i, seen := 0, 0; i < len(list); i++ {
		for _, p := range list[i].Packs {
			seen += len(p.Blobs)
		}
		if len(bounds) < workers && seen >= len(bounds)*nblobs/workers {
			bounds = append(bounds, i+1)
		}
	}
	for len(bounds) <= workers {
		bounds = append(bounds, len(list))
	}
	cursors := make([][]uint32, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := make([]uint32, 1<<16)
			for _, f := range list[bounds[w]:bounds[w+1]] {
				for _, p := range f.Packs {
					for i := range p.Blobs {
						c[prefixOf(&p.Blobs[i].ID)]++
					}
				}
			}
			cursors[w] = c
		}()
	}
	wg.Wait()
	start := make([]uint32, 1<<16+1)
	for p := 0; p < 1<<16; p++ {
		at := start[p]
		for w := range workers {
			n := cursors[w][p]
			cursors[w][p] = at
			at += n
		}
		start[p+1] = at
	}
	sorted := make([]compactEntry, nblobs)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := cursors[w]
			for i := bounds[w]; i < bounds[w+1]; i++ {
				f := list[i]
				var flags uint8
				if f.EntriesTrusted() {
					flags = ceTrusted
				}
				for j := range f.Packs {
					pos := packPos[i][j]
					for _, b := range f.Packs[j].Blobs {
						pre := prefixOf(&b.ID)
						c := &sorted[next[pre]]
						next[pre]++
						copy(c.id[:], b.ID[2:])
						c.flags = uint8(b.Type)&ceTypeMask | flags
						c.pack, c.offset, c.length = pos, b.Offset, b.Length
					}
				}
			}
		}()
	}
	wg.Wait()
	if len(x.packPos) == len(x.packs) {
		x.packOrder = make([]uint32, len(x.packs))
		for i := range x.packOrder {
			x.packOrder[i] = uint32(i)
		}
		slices.SortFunc(x.packOrder, func(a, b uint32) int {
			return bytes.Compare(x.packs[a].id[:], x.packs[b].id[:])
		})
		x.packPos = map[hash.ID]uint32{}
	}
	for _, d := range x.blobs.build(sorted, start) {
		e := d.entry.entry()
		x.addCopy(d.entry.handle(d.prefix), e.copyLoc, false)
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
		for s := range Superseded(files) {
			delete(gone, s)
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
