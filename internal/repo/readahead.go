package repo

import (
	"cmp"
	"container/list"
	"context"
	"slices"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/storage"
)

// A walk of a snapshot's trees (ls, find, diff, stats, mount, restore
// --dry-run) loads a directory's tree, then the trees it names, one after
// the other. Loaded one by one, that was a request per directory: 1,676
// for GOROOT's 1,667 directories, 0.7 s through a floe server and 1.8 s
// from S3 on loopback, and minutes across a WAN. A ReadAhead reads such
// blobs by stretches of their packs, for every walk at once, restore's
// plan included (docs/PERFORMANCE.md, "Browsing a remote snapshot").

// aheadLimits shape the ranges of a hinted group: a directory's subtrees
// lie in its tree pack among their own subtrees, which the walk reads next;
// reading what lies between is cheaper than another request.
var aheadLimits = RangeLimits{MaxGap: 512 << 10, MaxRange: 8 << 20}

// aheadBelowMin and aheadBelow bound how far below the first subtree of
// a group its stretch reaches (belowFor): a backup writes a directory's
// subtrees before its tree, so the subtrees of the subtree a walk enters
// next lie just below it. Measured on GOROOT through floe serve (ls of
// the whole snapshot and, recursively, of four directories of it, which
// need 1.69 MB, 47, 42, 131 and 132 KiB of trees): 0 took 13, 12, 21, 12
// and 13 requests; 16 KiB to 1 MiB 8, 8, 11, 8 and 10, reading 1.70 MB,
// 79, 119, 163 and 224 KiB; 64 KiB to 4 MiB no fewer requests for up
// to twice the bytes; a fixed 4 MiB 5 requests each, but the whole
// 1.7 MB tree pack for every directory listed.
const (
	aheadBelowMin = 16 << 10
	aheadBelow    = 1 << 20
)

// aheadHole is the widest gap between a stretch being planned and one
// held (or being read) that the new stretch fills (fillHoles). A small
// snapshot's tree pack (205 directories, 48 KiB) took 8 requests without
// it, 4 with it.
const aheadHole = 64 << 10

// maxAheadHeld bounds the stored bytes of the stretches a ReadAhead holds;
// maxAheadFetch the bytes that one group's read adds at once, so that a
// group's stretches do not push each other out.
const (
	maxAheadHeld  = 32 << 20
	maxAheadFetch = maxAheadHeld / 2
)

// maxAheadHinted bounds the blobs hinted and not loaded yet: a walk that
// skips directories (diff skips identical subtrees, find what it
// remembers) leaves their groups behind. The oldest groups go first.
const maxAheadHinted = 1 << 16

// aheadWorkers is how many stretches of one group are read at once.
const aheadWorkers = 4

// ReadAhead loads blobs of one type exactly as LoadBlob does, for a reader
// that can say which blobs it will likely need next (Hint): a walk names
// the subtrees of each tree it loads. When the first blob of a group is
// loaded (or a second one, readAhead says why) and its best copy is not
// held, the rest of the group is planned by pack (PlanReads) and read in
// up to aheadWorkers concurrent ranged requests, each a stretch of a pack
// (the first reaching a little below, belowFor; each filling a small hole
// to one held, fillHoles). The stretches are kept, least recently used
// out first, up to maxAheadHeld stored bytes (and the one stretch that
// pushed the others out). Nothing is kept decoded here: a walk's own
// cache (walk.Cache) does that.
//
// Every blob is verified exactly as LoadBlob verifies it: the stored
// bytes of its copy (from a held stretch or, when none holds it, read by
// themselves) are hashed against its ID, a copy that does not hash is
// reported as forged (ForgedCopies) and the next tried, and the first
// that does is decrypted and checked against the ref's key. A stretch that
// could not be read is simply not held, so its blobs are read by
// themselves and their errors are LoadBlob's.
//
// A ReadAhead is safe for concurrent use (mount answers lookups at once).
type ReadAhead struct {
	r *Repository
	t BlobType
	// maxHeld and maxFetch are maxAheadHeld and maxAheadFetch (tests
	// lower them).
	maxHeld, maxFetch int64

	mu      sync.Mutex
	held    map[hash.ID][]*stretch // by pack
	lru     list.List              // of *stretch, the most recently used first
	heldLen int                    // bytes of held
	pending []*aheadFetch          // stretches being read
	groups  map[hash.ID]*aheadGroup
	gorder  list.List // of *aheadGroup, the oldest first
}

// stretch is a run of a pack's stored bytes, from start on.
type stretch struct {
	pack  hash.ID
	start int64
	data  []byte
	elem  *list.Element
}

func (s *stretch) covers(loc Location) bool {
	return s.pack == loc.Pack && s.start <= int64(loc.Offset) && int64(loc.Offset)+int64(loc.Length) <= s.start+int64(len(s.data))
}

// aheadFetch is a stretch being read; done is closed when it is held (or
// could not be read).
type aheadFetch struct {
	pack       hash.ID
	start, end int64
	done       chan struct{}
}

func (f *aheadFetch) covers(loc Location) bool {
	return f.pack == loc.Pack && f.start <= int64(loc.Offset) && int64(loc.Offset)+int64(loc.Length) <= f.end
}

// aheadGroup is the blobs of one Hint.
type aheadGroup struct {
	refs    []hash.Ref // in the walk's order
	next    int        // refs before next are loaded (or in other groups)
	left    int        // refs still the group's
	entered bool       // one of refs was loaded by itself, out of order
	elem    *list.Element
}

// first returns the first of g's blobs still the group's: the one a walk
// in name order enters next. a.mu is held.
func (a *ReadAhead) first(g *aheadGroup) hash.ID {
	for g.next < len(g.refs) && a.groups[g.refs[g.next].ID] != g {
		g.next++
	}
	if g.next == len(g.refs) {
		return hash.ID{}
	}
	return g.refs[g.next].ID
}

// take removes the blob id from its group, if any, and returns the group
// and whether id was its first (Hint's order). a.mu is held.
func (a *ReadAhead) take(id hash.ID) (g *aheadGroup, first bool) {
	g = a.groups[id]
	if g == nil {
		return nil, false
	}
	first = a.first(g) == id
	delete(a.groups, id)
	if g.left--; g.left == 0 {
		a.gorder.Remove(g.elem)
	}
	return g, first
}

// NewReadAhead returns a ReadAhead for blobs of type t.
func (r *Repository) NewReadAhead(t BlobType) *ReadAhead {
	return &ReadAhead{r: r, t: t, maxHeld: maxAheadHeld, maxFetch: maxAheadFetch,
		held: map[hash.ID][]*stretch{}, groups: map[hash.ID]*aheadGroup{}}
}

// Hint says that refs are likely loaded soon, in about that order, and
// are read together when the first of them is loaded. A ref hinted
// before and not loaded since stays in its first group.
func (a *ReadAhead) Hint(refs []hash.Ref) {
	if len(refs) == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.hint(refs)
}

// hint is Hint with a.mu held.
func (a *ReadAhead) hint(refs []hash.Ref) {
	g := &aheadGroup{}
	for _, ref := range refs {
		if _, ok := a.groups[ref.ID]; ok {
			continue
		}
		a.groups[ref.ID] = g
		g.refs = append(g.refs, ref)
		g.left++
	}
	if len(g.refs) == 0 {
		return
	}
	g.elem = a.gorder.PushBack(g)
	// Older groups first; never the new one (a directory of more
	// subdirectories than the bound holds them all while it is walked).
	for len(a.groups) > maxAheadHinted && a.gorder.Front() != g.elem {
		a.dropGroup(a.gorder.Front().Value.(*aheadGroup))
	}
}

// dropGroup forgets g's blobs that are still in it. a.mu is held.
func (a *ReadAhead) dropGroup(g *aheadGroup) {
	if g.left == 0 {
		return
	}
	for _, ref := range g.refs {
		if a.groups[ref.ID] == g {
			delete(a.groups, ref.ID)
		}
	}
	g.left = 0
	a.gorder.Remove(g.elem)
}

// Load returns the plaintext of ref, appended to buf[:0], as LoadBlob
// does; its stored bytes come from a held stretch when one holds them.
func (a *ReadAhead) Load(ctx context.Context, ref hash.Ref, buf []byte) ([]byte, error) {
	if a.r.WriteOnly() {
		return nil, ErrWriteOnly
	}
	a.readAhead(ctx, ref)
	c, err := a.r.loadGoodCopy(ctx, a.t, ref, a.read)
	if err != nil {
		return nil, err
	}
	return a.r.openBlob(a.t, ref, c, buf)
}

// read returns the stored bytes of one copy: from a held stretch, or read
// by themselves as LoadBlob reads them.
func (a *ReadAhead) read(ctx context.Context, loc Location) ([]byte, error) {
	a.mu.Lock()
	s := a.holding(loc)
	a.mu.Unlock()
	if s != nil {
		// Only read: loadGoodCopy hashes it, openBlob decrypts it into
		// a buffer of its own, so the stretch serves again.
		off := int64(loc.Offset) - s.start
		return s.data[off : off+int64(loc.Length)], nil
	}
	return a.r.be.Load(ctx, storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}, int64(loc.Offset), int64(loc.Length))
}

// holding returns the held stretch that holds loc, as the most recently
// used, or nil. a.mu is held.
func (a *ReadAhead) holding(loc Location) *stretch {
	for _, s := range a.held[loc.Pack] {
		if s.covers(loc) {
			a.lru.MoveToFront(s.elem)
			return s
		}
	}
	return nil
}

// bestCopy is the copy of ref that loadGoodCopy reads first.
func (a *ReadAhead) bestCopy(ref hash.Ref) (Location, bool) {
	locs := a.r.idx.Copies(BlobHandle{a.t, ref.ID})
	if len(locs) == 0 || a.r.checkStoredLength(a.t, locs[0]) != nil {
		return Location{}, false
	}
	return locs[0], true
}

// readAhead makes sure, if it can, that the best copy of ref is held: it
// waits for a stretch being read that holds it, or reads ref's group.
// Errors are left to the load, which reads the copy by itself and reports
// them where they belong.
//
// A group is read when the walk enters its first blob (a walk in name
// order: ls, find, du) or a second of its blobs (diff, which enters only
// what changed); a blob entered first out of order (a path being
// resolved: /usr of /'s subtrees) and a blob never hinted (a snapshot's
// root) are read by themselves, as LoadBlob reads them, so that a lookup
// costs no more than it did.
func (a *ReadAhead) readAhead(ctx context.Context, ref hash.Ref) {
	loc, ok := a.bestCopy(ref)
	if !ok {
		return
	}
	a.mu.Lock()
	// ref leaves its group whatever happens next: the group's first is
	// then the next blob the walk enters.
	g, first := a.take(ref.ID)
	if a.holding(loc) != nil {
		a.mu.Unlock()
		return
	}
	for _, f := range a.pending {
		if f.covers(loc) {
			a.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
			}
			return
		}
	}
	if g == nil || (!first && !g.entered) {
		if g != nil {
			g.entered = true
		}
		a.mu.Unlock()
		return
	}
	// In the group's order (the walk's), ref first; only what is still
	// the group's (not loaded), neither held nor being read (a walk's
	// next group lies mostly in the stretches of the last).
	todo := []hash.Ref{ref}
	for _, r := range g.refs[g.next:] {
		if a.groups[r.ID] != g {
			continue
		}
		if l, ok := a.bestCopy(r); ok && a.holding(l) == nil && !a.isPending(l) {
			todo = append(todo, r)
		}
	}
	a.dropGroup(g)

	// Planned with a.mu held, until the stretches are pending: a
	// concurrent load of one of them then waits for it rather than
	// reading its blob by itself.
	ranges, _ := a.r.PlanReads(a.t, todo, aheadLimits)
	// The ranges the walk needs first, first: by their first blob in the
	// group's order (ref's range, Tag 0, leads).
	firstTag := func(rg PackRange) int {
		m := len(todo)
		for _, b := range rg.Blobs {
			m = min(m, b.Tag)
		}
		return m
	}
	slices.SortStableFunc(ranges, func(x, y PackRange) int { return cmp.Compare(firstTag(x), firstTag(y)) })
	// One round of concurrent requests, within maxAheadFetch; the rest
	// is hinted again, as a group of its own.
	var fetch []PackRange
	var total int64
	var restTags []int
	for _, rg := range ranges {
		if len(fetch) > 0 && (len(fetch) == aheadWorkers || total+rg.End-rg.Start > a.maxFetch) {
			for _, b := range rg.Blobs {
				restTags = append(restTags, b.Tag)
			}
			continue
		}
		total += rg.End - rg.Start
		fetch = append(fetch, rg)
	}
	slices.Sort(restTags)
	rest := make([]hash.Ref, len(restTags))
	for i, t := range restTags {
		rest[i] = todo[t]
	}

	fs := make([]*aheadFetch, len(fetch))
	for i := range fetch {
		rg := &fetch[i]
		if i == 0 && first {
			// The walk enters ref next, and its own subtrees lie
			// below it: widen below, but not over what is held, being
			// read, or read by another range of this group.
			start := max(0, rg.Start-belowFor(*rg))
			for _, s := range a.held[rg.Pack] {
				if end := s.start + int64(len(s.data)); end > start && end <= rg.Start {
					start = end
				}
			}
			for _, f := range a.pending {
				if f.pack == rg.Pack && f.end > start && f.end <= rg.Start {
					start = f.end
				}
			}
			for _, o := range fetch[1:] {
				if o.Pack == rg.Pack && o.End > start && o.End <= rg.Start {
					start = o.End
				}
			}
			rg.Start = start
		}
		a.fillHoles(rg)
		fs[i] = &aheadFetch{pack: rg.Pack, start: rg.Start, end: rg.End, done: make(chan struct{})}
		a.pending = append(a.pending, fs[i])
	}
	a.hint(rest)
	a.mu.Unlock()

	data := make([][]byte, len(fetch))
	par.For(ctx, len(fetch), aheadWorkers, func(_, i int) {
		l := a.r.NewBlobLoader()
		defer l.Close()
		if b, err := l.RangeBytes(ctx, fetch[i]); err == nil {
			data[i] = b
		}
	})

	a.mu.Lock()
	defer a.mu.Unlock()
	for i, f := range fs {
		a.pending = slices.DeleteFunc(a.pending, func(p *aheadFetch) bool { return p == f })
		if data[i] != nil {
			a.hold(&stretch{pack: f.pack, start: f.start, data: data[i]})
		}
		close(f.done)
	}
}

// belowFor is how far below rg a stretch that starts with the subtree
// the walk enters next reaches: about as far as two of rg's blobs lie
// apart on average (the subtrees of siblings are alike in size more often
// than not), within [aheadBelowMin, aheadBelow].
func belowFor(rg PackRange) int64 {
	return min(aheadBelow, max(aheadBelowMin, 2*(rg.End-rg.Start)/int64(len(rg.Blobs))))
}

// fillHoles stretches rg down to the end of the stretch held or being
// read just below it, and up to the start of the one just above it, when
// no more than aheadHole lies between: a walk reads what lies there
// sooner or later, and a hole left is a request then. a.mu is held.
func (a *ReadAhead) fillHoles(rg *PackRange) {
	below, above := int64(-1), int64(-1)
	anchor := func(start, end int64) {
		if end <= rg.Start && end > below {
			below = end
		}
		if start >= rg.End && (above < 0 || start < above) {
			above = start
		}
	}
	for _, s := range a.held[rg.Pack] {
		anchor(s.start, s.start+int64(len(s.data)))
	}
	for _, f := range a.pending {
		if f.pack == rg.Pack {
			anchor(f.start, f.end)
		}
	}
	if below >= 0 && rg.Start-below <= aheadHole {
		rg.Start = below
	}
	if above >= 0 && above-rg.End <= aheadHole {
		rg.End = above
	}
}

// isPending tells whether a stretch being read holds loc. a.mu is held.
func (a *ReadAhead) isPending(loc Location) bool {
	for _, f := range a.pending {
		if f.covers(loc) {
			return true
		}
	}
	return false
}

// hold keeps s, pushing out the least recently used stretches beyond
// maxAheadHeld. a.mu is held.
func (a *ReadAhead) hold(s *stretch) {
	s.elem = a.lru.PushFront(s)
	a.held[s.pack] = append(a.held[s.pack], s)
	a.heldLen += len(s.data)
	for int64(a.heldLen) > a.maxHeld && a.lru.Len() > 1 {
		old := a.lru.Back().Value.(*stretch)
		a.lru.Remove(old.elem)
		a.held[old.pack] = slices.DeleteFunc(a.held[old.pack], func(x *stretch) bool { return x == old })
		if len(a.held[old.pack]) == 0 {
			delete(a.held, old.pack)
		}
		a.heldLen -= len(old.data)
	}
}

// HeldBytes returns the stored bytes of the stretches held (for tests and
// benchmarks: the bound of a walk's memory).
func (a *ReadAhead) HeldBytes() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.heldLen
}
