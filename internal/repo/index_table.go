package repo

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"runtime"
	"slices"
	"sort"
	"sync"

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

// build makes sorted, whose entries are in buckets by their IDs' 2-byte
// prefix (sorted[start[p]:start[p+1]] for prefix p, each in the order the
// index files list them), the table: it sorts each bucket, keeps the first
// copy of every blob and returns the further copies, in their order, for
// the caller to merge like any later copy. start becomes the table's.
//
// The buckets are sorted on every core (at 10 million chunks this was
// most of the load's CPU time, sorted one at a time through reflection).
func (t *blobTable) build(sorted []compactEntry, start []uint32) []loadCopy {
	workers := max(1, min(runtime.GOMAXPROCS(0), len(sorted)/buildPerWorker))
	uniq := make([]uint32, 1<<16) // entries of each bucket kept, at its front
	dups := make([][]loadCopy, workers)
	var wg sync.WaitGroup
	lo := 0
	for w := 0; w < workers; w++ {
		// Split the prefixes into ranges of about as many entries.
		hi := lo
		want := uint32((w + 1) * len(sorted) / workers)
		for hi < 1<<16 && (start[hi] < want || w == workers-1) {
			hi++
		}
		wg.Add(1)
		go func(w, lo, hi int) {
			defer wg.Done()
			var s bucketSorter
			for p := lo; p < hi; p++ {
				bucket := sorted[start[p]:start[p+1]]
				n := s.sort(bucket, func(c *compactEntry) { dups[w] = append(dups[w], loadCopy{prefix: p, entry: *c}) })
				uniq[p] = uint32(n)
			}
		}(w, lo, hi)
		lo = hi
	}
	wg.Wait()
	// Close the gaps the duplicates left (none, usually).
	out := uint32(0)
	for p := 0; p < 1<<16; p++ {
		begin, n := start[p], uniq[p]
		if out != begin {
			copy(sorted[out:out+n], sorted[begin:begin+n])
		}
		start[p] = out
		out += n
	}
	start[1<<16] = out
	t.base = sorted[:out:out]
	t.start = start
	var all []loadCopy
	for _, d := range dups {
		all = append(all, d...)
	}
	return all
}

// buildPerWorker is the fewest entries worth another goroutine (tests
// lower it to sort small tables on several).
var buildPerWorker = 1 << 16

// bucketSorter sorts the entries of one bucket, stably, by their first
// 8 bytes first (IDs are random: those nearly always decide), reusing its
// buffers from bucket to bucket.
type bucketSorter struct {
	keys []sortKey
	tmp  []compactEntry
}

type sortKey struct {
	k uint64
	i uint32
}

// sort sorts bucket, moves the first copy of each blob to the front in
// order and returns how many there are; dup is called for every further
// copy, in order.
func (s *bucketSorter) sort(bucket []compactEntry, dup func(*compactEntry)) int {
	if len(bucket) < 2 {
		return len(bucket)
	}
	s.keys = s.keys[:0]
	for i := range bucket {
		s.keys = append(s.keys, sortKey{k: binary.BigEndian.Uint64(bucket[i].id[:8]), i: uint32(i)})
	}
	slices.SortFunc(s.keys, func(a, b sortKey) int {
		if a.k != b.k {
			return cmp.Compare(a.k, b.k)
		}
		x, y := &bucket[a.i], &bucket[b.i]
		if d := x.cmp(y.id[:], BlobType(y.flags&ceTypeMask)); d != 0 {
			return d
		}
		return cmp.Compare(a.i, b.i) // stable: the first listed copy first
	})
	s.tmp = s.tmp[:0]
	for j, k := range s.keys {
		c := &bucket[k.i]
		if j > 0 {
			prev := &s.tmp[len(s.tmp)-1]
			if prev.cmp(c.id[:], BlobType(c.flags&ceTypeMask)) == 0 {
				dup(c)
				continue
			}
		}
		s.tmp = append(s.tmp, *c)
	}
	return copy(bucket, s.tmp)
}

// loadCopy is a further copy of a blob found by build.
type loadCopy struct {
	prefix int
	entry  compactEntry
}
