package repo

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/zeebo/blake3"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// The index cache keeps the table LoadIndex built, in the local cache
// directory (docs/FORMAT.md "Local cache"), so that the next LoadIndex
// reads it in one go instead of reading, verifying and decoding every
// index file and sorting millions of entries again (bench/SCALE.md: at
// 10 million chunks, 0.5 s of CPU instead of 4). It is an optimisation
// only: any doubt about it means the index files are loaded as without it.
//
// It records the index files it was built from (those it lists and the
// ones their signed files supersede) and a key of everything else the
// table depends on: the repository, its authority, whether the storage
// verifies uploads, and the packs that gc marks name. It is used only
// when every index file it was built from is still stored (or superseded
// by one it holds): a prune that removed or superseded index files, or
// marked packs, makes LoadIndex build the table from the index files
// again. Index files written since are read and added to it, in a map
// up to 1/indexCacheSlack of its entries; beyond that they are merged
// into the table (mergeFiles) and the cache is rewritten.
//
// Its bytes are authenticated with a MAC under a key derived from the
// repository's chunk ID key (every key, full or write-only, holds it):
// a damaged or foreign cache file is ignored, never trusted. The trust
// of each entry (a signed index file, or a storage that verifies
// uploads) is recorded as it was found when the cache was written, and
// supersedes count only from signed files, as in LoadIndex.
//
// Writers write a temporary file and rename it over the old one, so
// concurrent processes each read a whole cache file, old or new.

// indexCacheName is the cache file in the index cache directory.
const indexCacheName = "table"

// indexCacheSlack: entries of index files added since the cache was
// written, beyond 1/indexCacheSlack of its entries, make LoadIndex
// merge them into the table and rewrite the cache (below, they are kept
// in a map, at about 150 bytes each instead of 44: 1/64 of that adds 1.6
// bytes per chunk).
const indexCacheSlack = 64

// indexCacheMin is the fewest blobs worth a cache. Small: on a local
// path a small index loads in milliseconds either way, but through a
// server or S3 every index file is a request, and a no-change backup of
// a small tree spent most of its time on them; the cache needs only a
// listing.
var indexCacheMin = 1_000

const (
	indexCacheMagic   = "floe index cache" // 16 bytes
	indexCacheVersion = 1
	indexCacheOrder   = 0x01020304 // written in the machine's byte order: another order is refused
	indexCacheHeader  = 16 + 3*4 + 32 + 6*4
	indexCacheMACSize = 32
	compactEntrySize  = int(unsafe.Sizeof(compactEntry{}))
	cacheExtraSize    = 1 + 32 + 4*3 + 1
)

// compactLayout describes compactEntry's memory layout, which the cache
// holds as is: a floe whose layout differs ignores the cache.
var compactLayout = uint32(compactEntrySize) | uint32(unsafe.Offsetof(compactEntry{}.flags))<<8 |
	uint32(unsafe.Offsetof(compactEntry{}.pack))<<16 | uint32(unsafe.Offsetof(compactEntry{}.length))<<24

// SetIndexCache makes LoadIndex use and keep an index cache in dir
// (created if needed); "" turns it off.
func (r *Repository) SetIndexCache(dir string) { r.indexCacheDir = dir }

// IndexSource says where the last LoadIndex found the index: "files"
// (every index file was read), "cache" (the cache only) or "cache+N"
// (the cache and N index files written since).
func (r *Repository) IndexSource() string { return r.indexSource }

// indexCacheKey names everything besides the index files that a table
// depends on.
func (r *Repository) indexCacheKey(marked map[hash.ID]bool) [32]byte {
	h := blake3.New()
	h.WriteString("floe index cache key\x00")
	h.WriteString(r.cfg.ID)
	h.Write(r.secrets.AuthorityPublic[:])
	if r.verifiesUploads {
		h.Write([]byte{1})
	} else {
		h.Write([]byte{0})
	}
	ids := make([]hash.ID, 0, len(marked))
	for id, ok := range marked {
		if ok {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(a, b hash.ID) int { return strings.Compare(string(a[:]), string(b[:])) })
	for _, id := range ids {
		h.Write(id[:])
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// indexCacheMAC returns a fresh MAC over a cache file's bytes.
func (r *Repository) indexCacheMAC() *blake3.Hasher {
	var key [32]byte
	blake3.DeriveKey("floe v2 index cache MAC", r.secrets.ChunkIDKey[:], key[:])
	h, err := blake3.NewKeyed(key[:])
	if err != nil {
		panic("blake3.NewKeyed with a 32-byte key: " + err.Error()) // cannot happen
	}
	return h
}

// cachedIndex is an index read from the cache with the index files it
// was built from.
type cachedIndex struct {
	x     *Index
	files map[hash.ID]bool // index files read (superseded ones included)
}

// readIndexCache reads the cache file in dir; an error means it cannot be
// used (missing, damaged, foreign or for another key).
func (r *Repository) readIndexCache(dir string, key [32]byte, marked map[hash.ID]bool) (*cachedIndex, error) {
	f, err := os.Open(filepath.Join(dir, indexCacheName))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return r.decodeIndexCache(f, fi.Size(), key, marked)
}

// decodeIndexCache decodes a cache file of size bytes from rd. It checks
// the sizes against size before allocating, the MAC before using any of
// it, and every pack number and type, so that whatever the bytes, the
// index is safe to use (bad bytes that carry a good MAC could at worst
// misplace entries; such bytes need the chunk ID key).
func (r *Repository) decodeIndexCache(rd io.Reader, size int64, key [32]byte, marked map[hash.ID]bool) (*cachedIndex, error) {
	br := bufio.NewReaderSize(rd, 1<<16)
	head := make([]byte, indexCacheHeader)
	if _, err := io.ReadFull(br, head); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	if string(head[:16]) != indexCacheMagic {
		return nil, errors.New("not an index cache file")
	}
	le := binary.LittleEndian
	if v := le.Uint32(head[16:]); v != indexCacheVersion {
		return nil, fmt.Errorf("version %d", v)
	}
	if o := binary.NativeEndian.Uint32(head[20:]); o != indexCacheOrder || le.Uint32(head[24:]) != compactLayout {
		return nil, errors.New("written by another kind of machine")
	}
	if subtle.ConstantTimeCompare(head[28:60], key[:]) != 1 {
		return nil, errors.New("stale (gc marks, storage or repository differ)")
	}
	var n [6]uint64
	for i := range n {
		n[i] = uint64(le.Uint32(head[60+4*i:]))
	}
	nfiles, nreplaced, npacks, nbuckets, nextra, nbase := n[0], n[1], n[2], n[3], n[4], n[5]
	if nbuckets > 1<<16 {
		return nil, errors.New("too many buckets")
	}
	small := 32*(nfiles+nreplaced+npacks) + 4*npacks + 6*nbuckets + cacheExtraSize*nextra
	if want := uint64(indexCacheHeader) + small + uint64(compactEntrySize)*nbase + indexCacheMACSize; size < 0 || uint64(size) != want {
		return nil, fmt.Errorf("%d bytes, its counts say %d", size, want)
	}
	buf := make([]byte, small)
	if _, err := io.ReadFull(br, buf); err != nil {
		return nil, err
	}
	base := make([]compactEntry, nbase)
	if nbase > 0 {
		if _, err := io.ReadFull(br, unsafe.Slice((*byte)(unsafe.Pointer(&base[0])), int(nbase)*compactEntrySize)); err != nil {
			return nil, err
		}
	}
	var got [indexCacheMACSize]byte
	if _, err := io.ReadFull(br, got[:]); err != nil {
		return nil, err
	}
	return r.decodeCacheBody(head, buf, base, got, marked)
}

// decodeCacheBody checks the MAC got over head, buf and base, then
// decodes them.
func (r *Repository) decodeCacheBody(head, buf []byte, base []compactEntry, got [indexCacheMACSize]byte, marked map[hash.ID]bool) (*cachedIndex, error) {
	mac := r.indexCacheMAC()
	mac.Write(head)
	mac.Write(buf)
	if len(base) > 0 {
		mac.Write(unsafe.Slice((*byte)(unsafe.Pointer(&base[0])), len(base)*compactEntrySize))
	}
	if subtle.ConstantTimeCompare(mac.Sum(nil), got[:]) != 1 {
		return nil, errors.New("damaged (its MAC does not verify)")
	}
	le := binary.LittleEndian
	nfiles, nreplaced, npacks := int(le.Uint32(head[60:])), int(le.Uint32(head[64:])), int(le.Uint32(head[68:]))
	nbuckets, nextra := int(le.Uint32(head[72:])), int(le.Uint32(head[76:]))
	id := func() hash.ID {
		var x hash.ID
		copy(x[:], buf)
		buf = buf[32:]
		return x
	}
	u32 := func() uint32 {
		v := le.Uint32(buf)
		buf = buf[4:]
		return v
	}
	c := &cachedIndex{x: newIndex(), files: make(map[hash.ID]bool, nfiles)}
	x := c.x
	for range nfiles {
		fid := id()
		c.files[fid] = true
		x.files[fid] = true
	}
	for range nreplaced {
		x.replaced[id()] = true
	}
	x.packs = make([]indexPack, npacks)
	for i := range x.packs {
		x.packs[i].id = id()
		x.packs[i].marked = marked[x.packs[i].id]
	}
	x.packOrder = make([]uint32, npacks)
	for i := range x.packOrder {
		p := u32()
		if int(p) >= npacks || (i > 0 && string(x.packs[p].id[:]) <= string(x.packs[x.packOrder[i-1]].id[:])) {
			return nil, errors.New("pack order is not sorted")
		}
		x.packOrder[i] = p
	}
	// The buckets: (prefix, entries) of those not empty, by prefix.
	start := make([]uint32, 1<<16+1)
	var total uint64
	next := 0
	for range nbuckets {
		p := int(le.Uint16(buf))
		buf = buf[2:]
		k := u32()
		if p < next || k == 0 {
			return nil, errors.New("bad bucket table")
		}
		for ; next <= p; next++ {
			start[next] = uint32(total)
		}
		total += uint64(k)
		if total > uint64(len(base)) {
			return nil, errors.New("bad bucket table")
		}
	}
	for ; next <= 1<<16; next++ {
		start[next] = uint32(total)
	}
	if total != uint64(len(base)) {
		return nil, errors.New("bad bucket table")
	}
	for range nextra {
		t, b := buf[0], buf[1:]
		var h BlobHandle
		h.Type = BlobType(t)
		copy(h.ID[:], b[:32])
		buf = buf[33:]
		cl := copyLoc{pack: u32(), offset: u32(), length: u32()}
		flags := buf[0]
		buf = buf[1:]
		if !h.Type.Valid() || int(cl.pack) >= npacks || flags&^ceTrusted != 0 {
			return nil, errors.New("bad further copy")
		}
		cl.trusted = flags&ceTrusted != 0
		x.extra[h] = append(x.extra[h], cl)
	}
	for i := range base {
		e := &base[i]
		if int(e.pack) >= npacks || e.flags&^(ceTypeMask|ceTrusted) != 0 || !BlobType(e.flags&ceTypeMask).Valid() {
			return nil, errors.New("bad entry")
		}
	}
	x.blobs.start, x.blobs.base = start, base
	if len(base) == 0 {
		x.blobs.start = nil
	}
	for h := range x.extra {
		if x.blobs.find(h) < 0 {
			return nil, errors.New("a further copy of a blob not in the table")
		}
	}
	x.marked = marked
	return c, nil
}

// writeIndexCache writes x, built from files (every index file read,
// superseded ones included), to the cache in dir. x must be freshly built
// or merged (nothing added to it since, no flag but trusted set).
func (r *Repository) writeIndexCache(dir string, key [32]byte, x *Index, files []hash.ID) error {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if len(x.blobs.more) > 0 || len(x.packPos) > 0 || len(x.packOrder) != len(x.packs) {
		return errors.New("index not freshly built") // cannot happen after buildFiles
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	removeStaleTemps(dir)
	tmp, err := os.CreateTemp(dir, ".tmp-"+indexCacheName+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename: nothing
	mac := r.indexCacheMAC()
	w := bufio.NewWriterSize(io.MultiWriter(tmp, mac), 1<<20)
	le := binary.LittleEndian
	var nextra int
	for _, ex := range x.extra {
		nextra += len(ex)
	}
	// In a fixed order: the same index gives the same cache file.
	byID := func(a, b hash.ID) int { return strings.Compare(string(a[:]), string(b[:])) }
	replaced := slices.SortedFunc(maps.Keys(x.replaced), byID)
	fileIDs := slices.SortedFunc(slices.Values(files), byID)
	extra := slices.SortedFunc(maps.Keys(x.extra), func(a, b BlobHandle) int {
		return cmp.Or(byID(a.ID, b.ID), cmp.Compare(a.Type, b.Type))
	})
	head := make([]byte, 0, indexCacheHeader)
	head = append(head, indexCacheMagic...)
	head = le.AppendUint32(head, indexCacheVersion)
	head = binary.NativeEndian.AppendUint32(head, indexCacheOrder)
	head = le.AppendUint32(head, compactLayout)
	head = append(head, key[:]...)
	var nbuckets int
	start := x.blobs.start
	for p := 0; start != nil && p < 1<<16; p++ {
		if start[p+1] > start[p] {
			nbuckets++
		}
	}
	for _, n := range []int{len(files), len(replaced), len(x.packs), nbuckets, nextra, len(x.blobs.base)} {
		head = le.AppendUint32(head, uint32(n))
	}
	w.Write(head)
	for _, id := range fileIDs {
		w.Write(id[:])
	}
	for _, id := range replaced {
		w.Write(id[:])
	}
	for _, p := range x.packs {
		w.Write(p.id[:])
	}
	var b [6]byte
	for _, p := range x.packOrder {
		w.Write(le.AppendUint32(b[:0], p))
	}
	for p := 0; start != nil && p < 1<<16; p++ {
		if k := start[p+1] - start[p]; k > 0 {
			w.Write(le.AppendUint32(le.AppendUint16(b[:0], uint16(p)), k))
		}
	}
	for _, h := range extra {
		for _, c := range x.extra[h] {
			e := []byte{byte(h.Type)}
			e = append(e, h.ID[:]...)
			e = le.AppendUint32(le.AppendUint32(le.AppendUint32(e, c.pack), c.offset), c.length)
			var flags byte
			if c.trusted {
				flags = ceTrusted
			}
			w.Write(append(e, flags))
		}
	}
	if base := x.blobs.base; len(base) > 0 {
		w.Write(unsafe.Slice((*byte)(unsafe.Pointer(&base[0])), len(base)*compactEntrySize))
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(mac.Sum(nil)); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, indexCacheName))
}

// removeStaleTemps removes temporary files that writers killed before
// their rename left, an hour later (a writer may still be at work on a
// younger one).
func removeStaleTemps(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".tmp-") {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > time.Hour {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// loadIndexCached is LoadIndex with the cache in dir: it returns the index
// and the errors of the index files written since the cache that could not
// be loaded, or ok false when the cache cannot be used.
func (r *Repository) loadIndexCached(ctx context.Context, dir string, key [32]byte, marked map[hash.ID]bool) (x *Index, errs []error, ok bool, err error) {
	c, cerr := r.readIndexCache(dir, key, marked)
	if cerr != nil {
		return nil, nil, false, nil
	}
	x = c.x
	ids, err := r.ListIDs(ctx, storage.Index)
	if err != nil {
		return nil, nil, false, err
	}
	listed := make(map[hash.ID]bool, len(ids))
	var todo []hash.ID
	for _, id := range ids {
		listed[id] = true
		if !c.files[id] && !x.replaced[id] {
			todo = append(todo, id)
		}
	}
	for id := range c.files {
		if !listed[id] && !x.replaced[id] {
			return nil, nil, false, nil // removed (a prune): its entries may be gone
		}
	}
	loaded, lerrs := r.loadIndexFileList(ctx, todo)
	if err := ctx.Err(); err != nil {
		return nil, nil, false, err
	}
	files := map[hash.ID]*IndexFile{}
	var entries int
	for i, id := range todo {
		switch {
		case lerrs[i] == nil:
			files[id] = loaded[i]
			entries += indexEntries(loaded[i])
		case storage.IsNotExist(lerrs[i]):
			return nil, nil, false, nil // a prune at work: load every file
		default:
			errs = append(errs, lerrs[i])
		}
	}
	newly := Superseded(files)
	for id := range newly {
		if c.files[id] && !x.replaced[id] {
			return nil, nil, false, nil // a newer signed file supersedes a cached one
		}
	}
	slices.SortFunc(todo, func(a, b hash.ID) int { return strings.Compare(string(a[:]), string(b[:])) })
	for _, id := range todo {
		x.files[id] = true
	}
	for id := range newly {
		x.replaced[id] = true
	}
	if entries > x.blobs.len()/indexCacheSlack {
		// Too many for the map: merge them into the table, and keep that.
		var add []*IndexFile
		for _, id := range todo {
			if f := files[id]; f != nil && !x.replaced[id] {
				add = append(add, f)
			}
		}
		x.mergeFiles(add)
		r.indexSource = fmt.Sprintf("cache+%d merged", len(todo))
		ids := slices.AppendSeq(slices.Collect(maps.Keys(c.files)), maps.Keys(files))
		_ = r.writeIndexCache(dir, key, x, ids) // it costs the next load its speed only
		return x, errs, true, nil
	}
	for _, id := range todo {
		if f := files[id]; f != nil && !x.replaced[id] {
			x.addPacks(f.Packs, f.EntriesTrusted(), false)
		}
	}
	r.indexSource = "cache"
	if len(todo) > 0 {
		r.indexSource = fmt.Sprintf("cache+%d", len(todo))
	}
	return x, errs, true, nil
}

// mergeFiles merges the blobs of files (in order) into x's table, as a
// fresh build would after the blobs already there: a blob's first copy
// in the table stays its primary one, further copies are ranked as
// addPacks ranks them. x must hold a built table and nothing added since.
func (x *Index) mergeFiles(files []*IndexFile) {
	x.mu.Lock()
	defer x.mu.Unlock()
	var add []loadCopy
	for _, f := range files {
		var flags uint8
		if f.EntriesTrusted() {
			flags = ceTrusted
		}
		for _, p := range f.Packs {
			pos := x.packSlot(p.ID)
			for _, b := range p.Blobs {
				c := loadCopy{prefix: prefixOf(&b.ID)}
				copy(c.entry.id[:], b.ID[2:])
				c.entry.flags = uint8(b.Type)&ceTypeMask | flags
				c.entry.pack, c.entry.offset, c.entry.length = pos, b.Offset, b.Length
				add = append(add, c)
			}
		}
	}
	// stable: of two copies of a blob, the one listed first stays first
	slices.SortStableFunc(add, func(a, b loadCopy) int {
		return cmp.Or(cmp.Compare(a.prefix, b.prefix), a.entry.cmp(b.entry.id[:], BlobType(b.entry.flags&ceTypeMask)))
	})
	old, oldStart := x.blobs.base, x.blobs.start
	if oldStart == nil {
		oldStart = make([]uint32, 1<<16+1)
	}
	merged := make([]compactEntry, 0, len(old)+len(add))
	start := make([]uint32, 1<<16+1)
	var dups []loadCopy
	j := 0
	for p := 0; p < 1<<16; p++ {
		start[p] = uint32(len(merged))
		begin := len(merged)
		bucket := old[oldStart[p]:oldStart[p+1]]
		i := 0
		for i < len(bucket) || (j < len(add) && add[j].prefix == p) {
			if j < len(add) && add[j].prefix == p {
				a := &add[j].entry
				var d int
				if i < len(bucket) {
					d = bucket[i].cmp(a.id[:], BlobType(a.flags&ceTypeMask))
				}
				if i >= len(bucket) || d > 0 {
					// before the table's next entry: new, unless it repeats
					// the one just taken
					if len(merged) > begin && merged[len(merged)-1].cmp(a.id[:], BlobType(a.flags&ceTypeMask)) == 0 {
						dups = append(dups, add[j])
					} else {
						merged = append(merged, *a)
					}
					j++
					continue
				}
				if d == 0 {
					merged = append(merged, bucket[i])
					i++
					continue // add[j] is then a repeat of the entry just taken
				}
			}
			merged = append(merged, bucket[i])
			i++
		}
	}
	start[1<<16] = uint32(len(merged))
	x.blobs.base, x.blobs.start = merged, start
	if len(x.packPos) > 0 {
		x.packOrder = make([]uint32, len(x.packs))
		for i := range x.packOrder {
			x.packOrder[i] = uint32(i)
		}
		slices.SortFunc(x.packOrder, func(a, b uint32) int { return bytes.Compare(x.packs[a].id[:], x.packs[b].id[:]) })
		x.packPos = map[hash.ID]uint32{}
	}
	for _, d := range dups {
		e := d.entry.entry()
		x.addCopy(d.entry.handle(d.prefix), e.copyLoc, false)
	}
}
