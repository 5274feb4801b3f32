// Package snapimage reads a regular file of a snapshot at any offset: an
// nbd.Image, so that `floe nbd` can serve a backed-up disk image without
// restoring it. The file's offset table is built once from its tree's
// chunk sizes; blobs are loaded through the repository (which verifies
// them) and kept in a small cache, least recently used out first. Chunks
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
}

var _ nbd.Image = (*Image)(nil)

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

// find returns the index of the blob holding byte off (< Size()).
func (img *Image) find(off int64) int {
	return sort.Search(len(img.refs), func(i int) bool { return img.off[i+1] > off })
}

func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > img.Size() {
		return 0, fmt.Errorf("%s: read of %d bytes at %d past the end", img.name, len(p), off)
	}
	n := 0
	for i := img.find(off); n < len(p); i++ {
		pos := off + int64(n)
		start, end := img.off[i], img.off[i+1]
		if img.hole[i] {
			n += len(clear2(p[n:], end-pos))
			continue
		}
		data, err := img.blob(i)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], data[pos-start:])
		if n == len(p) && end-(off+int64(n)) <= (end-start)/4 {
			// Only a read that ends in the last quarter of its blob
			// reads the next one ahead: a sequential reader (dd, a
			// booting VM, nbdcopy) always gets there, while a random
			// reader would load a second blob for most of its reads,
			// competing with its own next read for the cores.
			img.readAhead(i + 1)
		}
	}
	return n, nil
}

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
		img.blob(i) // an error shows when the blob is read
	}()
}

func clear2(p []byte, max int64) []byte {
	if int64(len(p)) > max {
		p = p[:max]
	}
	clear(p)
	return p
}

func (img *Image) blob(i int) ([]byte, error) {
	ref := img.refs[i]
	data, err := img.cache.get(ref, func() ([]byte, error) {
		return img.r.LoadBlob(img.ctx, repo.DataBlob, ref, nil)
	})
	if err != nil {
		return nil, fmt.Errorf("%s at offset %d: %w", img.name, img.off[i], err)
	}
	if want := img.off[i+1] - img.off[i]; int64(len(data)) != want {
		return nil, fmt.Errorf("%s: blob %s has %d bytes, the tree says %d: %w", img.name, ref.Short(), len(data), want, ErrDamaged)
	}
	return data, nil
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

// cache keeps decrypted blobs up to a total size. Concurrent requests for
// one blob share one load (a client reads a blob in several requests at
// once). Buffers are never reused: a slice handed out stays valid.
type cache struct {
	mu   sync.Mutex
	max  int64
	size int64
	lru  *list.List // of *entry, loaded ones, most recent first
	byID map[hash.Ref]*entry
}

type entry struct {
	ref  hash.Ref
	done chan struct{}
	data []byte
	err  error
	elem *list.Element
}

func newCache(max int64) *cache {
	return &cache{max: max, lru: list.New(), byID: map[hash.Ref]*entry{}}
}

func (c *cache) get(ref hash.Ref, load func() ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	e, ok := c.byID[ref]
	if ok {
		if e.elem != nil {
			c.lru.MoveToFront(e.elem)
		}
		c.mu.Unlock()
		<-e.done
		return e.data, e.err
	}
	e = &entry{ref: ref, done: make(chan struct{})}
	c.byID[ref] = e
	c.mu.Unlock()

	e.data, e.err = load()
	c.mu.Lock()
	if e.err != nil {
		delete(c.byID, ref) // the next read tries again
	} else {
		e.elem = c.lru.PushFront(e)
		c.size += int64(len(e.data))
		for c.size > c.max && c.lru.Len() > 1 {
			old := c.lru.Remove(c.lru.Back()).(*entry)
			delete(c.byID, old.ref)
			c.size -= int64(len(old.data))
		}
	}
	c.mu.Unlock()
	close(e.done)
	return e.data, e.err
}
