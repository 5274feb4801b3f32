package mount

import (
	"container/list"
	"context"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
)

// blobCache keeps decrypted data blobs, least recently used out first, up
// to a total size. Concurrent requests for one blob share one load (the
// kernel sends many small reads of one blob at once), and prefetch loads
// blobs in the background for sequential readers. Buffers are never
// reused, so a slice handed out stays valid after eviction.
type blobCache struct {
	r   *repo.Repository
	ctx context.Context // cancelled at unmount
	max int64

	mu    sync.Mutex
	size  int64
	lru   *list.List // of *blobEntry, loaded ones only, most recent first
	byID  map[hash.Ref]*blobEntry
	slots chan struct{} // bounds background loads

	// counters for tests and tuning
	loads, hits uint64
}

type blobEntry struct {
	id   hash.Ref
	done chan struct{} // closed when data or err is set
	data []byte
	err  error
	elem *list.Element
}

func newBlobCache(ctx context.Context, r *repo.Repository, maxBytes int64, background int) *blobCache {
	return &blobCache{r: r, ctx: ctx, max: maxBytes, lru: list.New(), byID: map[hash.Ref]*blobEntry{},
		slots: make(chan struct{}, max(background, 1))}
}

// get returns the plaintext of a data blob, which must not be modified.
func (c *blobCache) get(ctx context.Context, id hash.Ref) ([]byte, error) {
	e, loader := c.entry(id)
	if loader {
		c.load(e)
	}
	select {
	case <-e.done:
		return e.data, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// entry returns the entry of id, creating it (loader true: the caller
// must load it) if it is neither cached nor being loaded.
func (c *blobCache) entry(id hash.Ref) (*blobEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[id]; ok {
		if e.elem != nil {
			c.lru.MoveToFront(e.elem)
			c.hits++
		}
		return e, false
	}
	e := &blobEntry{id: id, done: make(chan struct{})}
	c.byID[id] = e
	c.loads++
	return e, true
}

// prefetch starts loading id in the background unless it is cached, being
// loaded, or all background slots are busy (read-ahead is a hint).
func (c *blobCache) prefetch(id hash.Ref) {
	c.mu.Lock()
	_, known := c.byID[id]
	c.mu.Unlock()
	if known {
		return
	}
	select {
	case c.slots <- struct{}{}:
	default:
		return
	}
	e, loader := c.entry(id)
	if !loader {
		<-c.slots
		return
	}
	go func() {
		defer func() { <-c.slots }()
		c.load(e)
	}()
}

func (c *blobCache) load(e *blobEntry) {
	data, err := c.r.LoadBlob(c.ctx, repo.DataBlob, e.id, nil)
	c.mu.Lock()
	if err != nil {
		e.err = err
		delete(c.byID, e.id) // the next read tries again
	} else {
		e.data = data
		e.elem = c.lru.PushFront(e)
		c.size += int64(len(data))
		for c.size > c.max && c.lru.Len() > 1 {
			old := c.lru.Remove(c.lru.Back()).(*blobEntry)
			old.elem = nil
			delete(c.byID, old.id)
			c.size -= int64(len(old.data))
		}
	}
	c.mu.Unlock()
	close(e.done)
}

// stats returns the number of loads and cache hits so far.
func (c *blobCache) stats() (loads, hits uint64, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loads, c.hits, c.size
}
