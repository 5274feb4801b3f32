package repo

import (
	"bytes"
	"sort"

	"github.com/floe-backup/floe/internal/hash"
)

// blobTable maps blob handles to index entries. What the index files list
// when the index is loaded goes into base, a sorted array of 44-byte
// entries found through a table of the IDs' first two bytes; blobs added
// later (this process's saves, a copy's imports) go into more, a map
// searched first. A map of everything took 114-142 bytes per chunk (Go's
// maps round their capacity up to a power of two) and held 10 million
// chunks in 1.1 GiB (bench/SCALE.md).
//
// A handle is in base or in more, never both: set updates base in place
// when the handle is there. Every further copy of a blob stays in
// Index.extra, with its flags, as before.
type blobTable struct {
	start []uint32 // base[start[p]:start[p+1]] have IDs starting with p (2 bytes); nil when base is empty
	base  []compactEntry
	more  map[BlobHandle]indexEntry
}

// compactEntry is an indexEntry of base without the first two bytes of its
// ID (start holds them).
type compactEntry struct {
	id                   [30]byte
	flags                uint8 // bits 0-1: blob type; then the flag bits below
	pack, offset, length uint32
}

const (
	ceTrusted uint8 = 1 << (2 + iota)
	ceBad
	ceReferenced
	ceTypeMask uint8 = 3
)

func newBlobTable() blobTable { return blobTable{more: map[BlobHandle]indexEntry{}} }

func prefixOf(id *hash.ID) int { return int(id[0])<<8 | int(id[1]) }

func compact(h BlobHandle, e indexEntry) compactEntry {
	c := compactEntry{flags: uint8(h.Type) & ceTypeMask, pack: e.pack, offset: e.offset, length: e.length}
	copy(c.id[:], h.ID[2:])
	if e.trusted {
		c.flags |= ceTrusted
	}
	if e.bad {
		c.flags |= ceBad
	}
	if e.referenced {
		c.flags |= ceReferenced
	}
	return c
}

func (c *compactEntry) entry() indexEntry {
	return indexEntry{copyLoc: copyLoc{pack: c.pack, offset: c.offset, length: c.length,
		trusted: c.flags&ceTrusted != 0, bad: c.flags&ceBad != 0}, referenced: c.flags&ceReferenced != 0}
}

func (c *compactEntry) handle(prefix int) BlobHandle {
	h := BlobHandle{Type: BlobType(c.flags & ceTypeMask)}
	h.ID[0], h.ID[1] = byte(prefix>>8), byte(prefix)
	copy(h.ID[2:], c.id[:])
	return h
}

// cmp orders entries by ID, then type.
func (c *compactEntry) cmp(rest []byte, t BlobType) int {
	if d := bytes.Compare(c.id[:], rest); d != 0 {
		return d
	}
	return int(c.flags&ceTypeMask) - int(uint8(t)&ceTypeMask)
}

// find returns h's position in base, or -1.
func (t *blobTable) find(h BlobHandle) int {
	if t.start == nil {
		return -1
	}
	p := prefixOf(&h.ID)
	lo, hi := int(t.start[p]), int(t.start[p+1])
	rest := h.ID[2:]
	i := lo + sort.Search(hi-lo, func(i int) bool { return t.base[lo+i].cmp(rest, h.Type) >= 0 })
	if i < hi && t.base[i].cmp(rest, h.Type) == 0 {
		return i
	}
	return -1
}

func (t *blobTable) get(h BlobHandle) (indexEntry, bool) {
	if e, ok := t.more[h]; ok {
		return e, true
	}
	if i := t.find(h); i >= 0 {
		return t.base[i].entry(), true
	}
	return indexEntry{}, false
}

func (t *blobTable) set(h BlobHandle, e indexEntry) {
	if i := t.find(h); i >= 0 {
		t.base[i] = compact(h, e)
		return
	}
	t.more[h] = e
}

func (t *blobTable) len() int { return len(t.base) + len(t.more) }

// each calls fn for every handle and its entry.
func (t *blobTable) each(fn func(BlobHandle, indexEntry)) {
	if t.start != nil {
		for p := 0; p < 1<<16; p++ {
			for i := t.start[p]; i < t.start[p+1]; i++ {
				fn(t.base[i].handle(p), t.base[i].entry())
			}
		}
	}
	for h, e := range t.more {
		fn(h, e)
	}
}

// build fills an empty table with the first copy of every blob of copies
// (in their order) and returns the further copies, in their order, for
// the caller to merge like any later copy.
func (t *blobTable) build(copies []loadCopy) []loadCopy {
	// Stable counting sort by the 2-byte prefix, then a stable sort of each
	// bucket: much faster than sorting millions of 44-byte entries whole.
	start := make([]uint32, 1<<16+1)
	for i := range copies {
		start[copies[i].prefix+1]++
	}
	for p := 1; p <= 1<<16; p++ {
		start[p] += start[p-1]
	}
	sorted := make([]compactEntry, len(copies))
	pos := make([]uint32, 1<<16)
	copy(pos, start[:1<<16])
	for i := range copies {
		p := copies[i].prefix
		sorted[pos[p]] = copies[i].entry
		pos[p]++
	}
	var dups []loadCopy
	out := sorted[:0]
	for p := 0; p < 1<<16; p++ {
		bucket := sorted[start[p]:start[p+1]]
		sort.SliceStable(bucket, func(i, j int) bool {
			return bucket[i].cmp(bucket[j].id[:], BlobType(bucket[j].flags&ceTypeMask)) < 0
		})
		begin := len(out)
		for i := range bucket {
			if len(out) > begin && out[len(out)-1].cmp(bucket[i].id[:], BlobType(bucket[i].flags&ceTypeMask)) == 0 {
				dups = append(dups, loadCopy{prefix: p, entry: bucket[i]})
				continue
			}
			out = append(out, bucket[i])
		}
		start[p] = uint32(begin)
	}
	start[1<<16] = uint32(len(out))
	// Trim to the unique entries (the duplicates were rare).
	t.base = append([]compactEntry(nil), out...)
	t.start = start
	return dups
}

// loadCopy is one copy read from an index file, before build.
type loadCopy struct {
	prefix int
	entry  compactEntry
}
