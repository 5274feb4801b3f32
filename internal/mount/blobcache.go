package mount

import (
	"context"
	"math"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"golang.org/x/sync/singleflight"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
)

// blobCache keeps decrypted data blobs, least recently used out first, up
// to a total size. Concurrent requests for one blob share one load (the
// kernel sends many small reads of one blob at once: singleflight), and
// prefetch loads blobs in the background for sequential readers. Buffers
// are never reused, so a slice handed out stays valid after eviction.
//
// The LRU is golang-lru's simplelru, bounded here by bytes rather than by
// its count of entries, so it is used under a mutex of ours.
type blobCache struct {
	r   *repo.Repository
	ctx context.Context // cancelled at unmount
	max int64

	flight singleflight.Group // loads in progress, by blob ID
	slots  chan struct{}      // bounds background loads

	mu   sync.Mutex
	size int64
	lru  *simplelru.LRU[hash.Ref, []byte]

	// counters for tests and tuning
	loads, hits uint64
}

func newBlobCache(ctx context.Context, r *repo.Repository, maxBytes int64, background int) *blobCache {
	c := &blobCache{r: r, ctx: ctx, max: maxBytes, slots: make(chan struct{}, max(background, 1))}
	// the count bound is never reached: the byte bound evicts first
	c.lru, _ = simplelru.NewLRU(math.MaxInt, func(_ hash.Ref, data []byte) {
		c.size -= int64(len(data))
	})
	return c
}

// get returns the plaintext of a data blob, which must not be modified.
func (c *blobCache) get(ctx context.Context, id hash.Ref) ([]byte, error) {
	c.mu.Lock()
	data, ok := c.lru.Get(id)
	if ok {
		c.hits++
	}
	c.mu.Unlock()
	if ok {
		return data, nil
	}
	// The load runs under the unmount context, not this request's: other
	// readers may be waiting for it. A failed load is not kept, so the
	// next read tries again.
	ch := c.flight.DoChan(flightKey(id), func() (any, error) { return c.load(id) })
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.([]byte), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// prefetch starts loading id in the background unless it is cached or all
// background slots are busy (read-ahead is a hint). A prefetch of a blob
// being loaded joins that load.
func (c *blobCache) prefetch(id hash.Ref) {
	c.mu.Lock()
	known := c.lru.Contains(id)
	c.mu.Unlock()
	if known {
		return
	}
	select {
	case c.slots <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-c.slots }()
		_, _, _ = c.flight.Do(flightKey(id), func() (any, error) { return c.load(id) })
	}()
}

// flightKey names a blob's load in the singleflight group (never shown).
func flightKey(id hash.Ref) string { return string(id.ID[:]) + string(id.Key[:]) }

// load loads id into the cache; only one runs per blob at a time.
func (c *blobCache) load(id hash.Ref) ([]byte, error) {
	c.mu.Lock()
	if data, ok := c.lru.Peek(id); ok { // a load finished since get looked
		c.mu.Unlock()
		return data, nil
	}
	c.loads++
	c.mu.Unlock()
	data, err := c.r.LoadBlob(c.ctx, repo.DataBlob, id, nil)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Add(id, data)
	c.size += int64(len(data))
	for c.size > c.max && c.lru.Len() > 1 {
		c.lru.RemoveOldest() // the callback counts the bytes out
	}
	return data, nil
}

// stats returns the number of loads and cache hits so far.
func (c *blobCache) stats() (loads, hits uint64, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loads, c.hits, c.size
}
