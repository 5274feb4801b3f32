// Package snapimage reads a regular file of a snapshot at any offset: an
// nbd.Image, so that `floe nbd` can serve a backed-up disk image without
// restoring it. The file's offset table is built once from its tree's
// chunk sizes; blobs are loaded through the repository (BlobLoader.LoadInto,
// which verifies each by its key) and kept in a small cache, least
// recently used out first, whose buffers serve the next loads. Chunks
// of zeros (how sparse files store their holes) are holes: clients skip
// them and nothing is loaded for them.
package snapimage

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/nbd"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

// DefaultCacheBytes is the memory kept for decrypted blobs.
const DefaultCacheBytes = 128 << 20

// Image is a regular file of a snapshot. Safe for concurrent use.
type Image struct {
	ctx  context.Context
	r    *repo.Repository
	name string // for messages
	refs []hash.Ref
	off  []int64 // blob i holds bytes off[i] to off[i+1]
	hole []bool  // blob i is all zeros

	cache *cache
	ahead chan struct{} // bounds background loads

	// Idle loaders, each with its buffers and the pack it read last kept
	// open (the last one given back is taken first: its pack is the
	// likeliest to hold the next blob of a sequential reader).
	lmu     sync.Mutex
	loaders []*repo.BlobLoader
	closed  bool // loaders given back are closed
}

// maxIdleLoaders is how many idle loaders an Image keeps; more loads at
// once get a fresh one (a client's requests run in parallel).
const maxIdleLoaders = 8

var (
	_ nbd.Image       = (*Image)(nil)
	_ nbd.SliceReader = (*Image)(nil)
)

// ErrDamaged is wrapped by errors about a file node whose content does not
// add up.
var ErrDamaged = errors.New("damaged file node")

// Open prepares n, a regular file named name, for reading. Loads stop when
// ctx ends.
func Open(ctx context.Context, r *repo.Repository, n *snapshot.Node, name string, cacheBytes int64) (*Image, error) {
	if n.Type != snapshot.TypeFile {
		return nil, fmt.Errorf("%s is a %s, not a regular file", name, n.Type)
	}
	if len(n.ChunkSizes) != len(n.Content) {
		return nil, fmt.Errorf("%s: %s and %s: %w", name, ui.Count(len(n.Content), "blob"), ui.Count(len(n.ChunkSizes), "chunk size"), ErrDamaged)
	}
	if cacheBytes <= 0 {
		cacheBytes = DefaultCacheBytes
	}
	img := &Image{ctx: ctx, r: r, name: name, refs: n.Content, off: make([]int64, len(n.Content)+1),
		hole: make([]bool, len(n.Content)), cache: newCache(cacheBytes), ahead: make(chan struct{}, 4)}
	idx := r.Index()
	// A chunk of zeros compresses to almost nothing: only such blobs are
	// worth comparing with the key of as many zeros, whose keys for all
	// their lengths come from one pass over zeros (repo.ZeroKeys, which
	// leaves out lengths no chunk can have).
	maybeHole := make([]bool, len(n.Content))
	var sizes []uint32
	for i, ref := range n.Content {
		size := n.ChunkSizes[i]
		img.off[i+1] = img.off[i] + int64(size)
		loc, ok := idx.Lookup(repo.BlobHandle{Type: repo.DataBlob, ID: ref.ID})
		if !ok {
			return nil, fmt.Errorf("%s: data blob %s: %w", name, ref.Short(), repo.ErrBlobNotFound)
		}
		if int64(loc.Length)*64 < int64(size) {
			maybeHole[i] = true
			sizes = append(sizes, size)
		}
	}
	zeroKeys := r.ZeroKeys(sizes)
	for i, ref := range n.Content {
		if k, ok := zeroKeys[n.ChunkSizes[i]]; ok && maybeHole[i] {
			img.hole[i] = ref.Key == k
		}
	}
	if uint64(img.off[len(n.Content)]) != n.Size {
		return nil, fmt.Errorf("%s: chunks of %d bytes for a file of %d: %w", name, img.off[len(n.Content)], n.Size, ErrDamaged)
	}
	return img, nil
}

func (img *Image) Size() int64 { return img.off[len(img.refs)] }

// Close releases the idle loaders' packs. Reads after Close still work
// (with loaders of their own, closed when they finish).
func (img *Image) Close() error {
	img.lmu.Lock()
	idle := img.loaders
	img.loaders, img.closed = nil, true
	img.lmu.Unlock()
	var first error
	for _, l := range idle {
		if err := l.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// find returns the index of the blob holding byte off (< Size()).
func (img *Image) find(off int64) int {
	return sort.Search(len(img.refs), func(i int) bool { return img.off[i+1] > off })
}

func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	data, release, err := img.ReadSlices(off, int64(len(p)))
	defer release()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range data {
		n += copy(p[n:], d)
	}
	return n, nil
}

// ReadSlices is ReadAt without the copy (nbd.SliceReader): the bytes come
// as slices of the cached blobs, pinned until release, and holes as
// slices of zeros. A copy served this way is written to the client's
// socket straight from the cache.
func (img *Image) ReadSlices(off, length int64) (data [][]byte, release func(), err error) {
	var pinned []*entry
	release = func() {
		for _, e := range pinned {
			img.cache.release(e)
		}
		pinned = nil
	}
	if off < 0 || length < 0 || off+length > img.Size() {
		return nil, release, fmt.Errorf("%s: read of %d bytes at %d past the end", img.name, length, off)
	}
	end := off + length
	for i := img.find(off); off < end; i++ {
		start, stop := img.off[i], min(img.off[i+1], end)
		if img.hole[i] {
			for off < stop {
				n := min(stop-off, int64(len(zeros)))
				data = append(data, zeros[:n])
				off += n
			}
			continue
		}
		e, err := img.blob(i)
		if err != nil {
			return nil, release, err
		}
		pinned = append(pinned, e)
		data = append(data, e.data[off-start:stop-start])
		if stop == end && img.off[i+1]-end <= (img.off[i+1]-start)/4 {
			// Only a read that ends in the last quarter of its blob
			// reads the next one ahead: a sequential reader (dd, a
			// booting VM, nbdcopy) always gets there, while a random
			// reader would load a second blob for most of its reads,
			// competing with its own next read for the cores.
			img.readAhead(i + 1)
		}
		off = stop
	}
	return data, release, nil
}

// zeros is what ReadSlices hands out for holes; it is only read.
var zeros = make([]byte, 1<<20)

// readAhead loads blob i in the background, if there is one and a slot:
// a client reading in order (a booting VM, dd) finds the next blob loaded.
func (img *Image) readAhead(i int) {
	if i >= len(img.refs) || img.hole[i] {
		return
	}
	select {
	case img.ahead <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-img.ahead }()
		if e, err := img.blob(i); err == nil { // an error shows when the blob is read
			img.cache.release(e)
		}
	}()
}

// blob returns the cache entry of blob i, pinned: its data stays valid
// until the caller releases it.
func (img *Image) blob(i int) (*entry, error) {
	ref := img.refs[i]
	want := img.off[i+1] - img.off[i]
	// The buffer is sized by the tree's chunk length, which a hostile tree
	// may inflate: no more than a chunk can be (the load itself refuses a
	// longer plaintext).
	hint := int(min(want, int64(img.r.ChunkerParams().Max)))
	e, err := img.cache.get(ref, hint, func(buf []byte) ([]byte, error) {
		l := img.loader()
		defer img.putLoader(l)
		return l.LoadInto(img.ctx, repo.DataBlob, ref, buf)
	})
	if err != nil {
		return nil, fmt.Errorf("%s at offset %d: %w", img.name, img.off[i], err)
	}
	if int64(len(e.data)) != want {
		img.cache.release(e)
		return nil, fmt.Errorf("%s: blob %s has %d bytes, the tree says %d: %w", img.name, ref.Short(), len(e.data), want, ErrDamaged)
	}
	return e, nil
}

func (img *Image) loader() *repo.BlobLoader {
	img.lmu.Lock()
	defer img.lmu.Unlock()
	if n := len(img.loaders); n > 0 {
		l := img.loaders[n-1]
		img.loaders = img.loaders[:n-1]
		return l
	}
	return img.r.NewBlobLoader()
}

func (img *Image) putLoader(l *repo.BlobLoader) {
	img.lmu.Lock()
	if !img.closed && len(img.loaders) < maxIdleLoaders {
		img.loaders = append(img.loaders, l)
		l = nil
	}
	img.lmu.Unlock()
	if l != nil {
		l.Close()
	}
}

func (img *Image) Extents(off, length int64) ([]nbd.Extent, error) {
	end := min(off+length, img.Size())
	var out []nbd.Extent
	for i := img.find(off); off < end; i++ {
		n := min(img.off[i+1], end) - off
		if len(out) > 0 && out[len(out)-1].Hole == img.hole[i] {
			out[len(out)-1].Length += n
		} else {
			out = append(out, nbd.Extent{Length: n, Hole: img.hole[i]})
		}
		off += n
	}
	return out, nil
}

// cache keeps decrypted blobs up to a total size (of their buffers).
// Concurrent requests for one blob share one load (a client reads a blob
// in several requests at once). An entry is pinned while a reader copies
// from it; the buffer of an evicted entry goes, once no reader holds it,
// to a short list of free buffers that the next loads decompress into:
// serving an image allocated a fresh buffer of a blob's size per blob,
// and the page faults on that memory cost a copy a third of its CPU.
type cache struct {
	mu        sync.Mutex
	max       int64
	size      int64      // capacity of the cached entries' buffers
	lru       *list.List // of *entry, loaded ones, most recent first
	byID      map[hash.Ref]*entry
	free      [][]byte // buffers for the next loads, no reader holds them
	freeBytes int64
}

type entry struct {
	ref  hash.Ref
	done chan struct{}
	data []byte
	err  error
	elem *list.Element
	pins int  // readers holding data
	gone bool // evicted: data goes to the free list when the last pin goes
}

// allocGranule is what a new buffer's capacity is rounded up to, so that
// it can serve later blobs a little longer than its first (chunks vary
// in length from the chunker's minimum to its maximum).
const allocGranule = 256 << 10

func newCache(max int64) *cache {
	return &cache{max: max, lru: list.New(), byID: map[hash.Ref]*entry{}}
}

// get returns the entry of ref, loaded by load if it is not cached (size is
// the plaintext length expected, for the buffer load is given), pinned:
// the caller releases it when done with its data.
func (c *cache) get(ref hash.Ref, size int, load func(buf []byte) ([]byte, error)) (*entry, error) {
	c.mu.Lock()
	e, ok := c.byID[ref]
	if ok {
		if e.elem != nil {
			c.lru.MoveToFront(e.elem)
		}
		e.pins++
		c.mu.Unlock()
		<-e.done
		if e.err != nil {
			return nil, e.err // a failed entry is no one's to recycle
		}
		return e, nil
	}
	e = &entry{ref: ref, done: make(chan struct{}), pins: 1}
	c.byID[ref] = e
	buf := c.takeFree(size)
	c.mu.Unlock()

	if buf == nil {
		buf = make([]byte, 0, (size+allocGranule-1)/allocGranule*allocGranule)
	}
	e.data, e.err = load(buf[:0])
	c.mu.Lock()
	if e.err != nil {
		delete(c.byID, ref) // the next read tries again
		c.putFree(buf)
	} else {
		if cap(e.data) != cap(buf) {
			c.putFree(buf) // load needed more room than buf had
		}
		e.elem = c.lru.PushFront(e)
		c.size += int64(cap(e.data))
		for c.size > c.max && c.lru.Len() > 1 {
			old := c.lru.Remove(c.lru.Back()).(*entry)
			old.elem = nil
			delete(c.byID, old.ref)
			c.size -= int64(cap(old.data))
			old.gone = true
			if old.pins == 0 {
				c.putFree(old.data)
			}
		}
	}
	c.mu.Unlock()
	close(e.done)
	if e.err != nil {
		return nil, e.err
	}
	return e, nil
}

// release unpins e; the buffer of an evicted entry is free once no reader
// holds it.
func (c *cache) release(e *entry) {
	c.mu.Lock()
	e.pins--
	if e.pins == 0 && e.gone {
		c.putFree(e.data)
	}
	c.mu.Unlock()
}

// maxFreeBuffers bounds the free list; a quarter of the cache's size
// bounds its bytes.
const maxFreeBuffers = 8

// takeFree returns the smallest free buffer that holds size bytes, or nil.
// c.mu is held.
func (c *cache) takeFree(size int) []byte {
	best := -1
	for i, b := range c.free {
		if cap(b) >= size && (best < 0 || cap(b) < cap(c.free[best])) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	b := c.free[best]
	c.free[best] = c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	c.freeBytes -= int64(cap(b))
	return b
}

// putFree keeps b for a later load, giving up the smallest buffers when
// the list is full: a larger one serves any blob a smaller one does.
// c.mu is held.
func (c *cache) putFree(b []byte) {
	if cap(b) == 0 {
		return
	}
	c.free = append(c.free, b[:0])
	c.freeBytes += int64(cap(b))
	for len(c.free) > maxFreeBuffers || (c.freeBytes > c.max/4 && len(c.free) > 1) {
		small := 0
		for i, f := range c.free {
			if cap(f) < cap(c.free[small]) {
				small = i
			}
		}
		c.freeBytes -= int64(cap(c.free[small]))
		c.free[small] = c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
	}
}
