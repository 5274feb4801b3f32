package walk

import (
	"container/list"
	"context"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

// DefaultCacheNodes bounds a Cache by default: about 200 MiB of nodes.
const DefaultCacheNodes = 1 << 20

// Cache is a Loader that keeps recently loaded trees, least recently used
// out first, up to a total number of nodes. Walking many snapshots of the
// same hosts loads each unchanged tree once. Safe for concurrent use.
type Cache struct {
	l        Loader
	maxNodes int

	mu    sync.Mutex
	nodes int
	lru   *list.List // of *cacheEntry, most recent first
	byID  map[hash.ID]*list.Element
}

type cacheEntry struct {
	id   hash.ID
	tree *snapshot.Tree
}

// NewCache wraps l. maxNodes <= 0 means DefaultCacheNodes.
func NewCache(l Loader, maxNodes int) *Cache {
	if maxNodes <= 0 {
		maxNodes = DefaultCacheNodes
	}
	return &Cache{l: l, maxNodes: maxNodes, lru: list.New(), byID: map[hash.ID]*list.Element{}}
}

// LoadTree returns the tree from the cache or loads it. Trees returned
// are shared: callers must not modify them.
func (c *Cache) LoadTree(ctx context.Context, ref hash.Ref) (*snapshot.Tree, error) {
	id := ref.ID
	c.mu.Lock()
	if e, ok := c.byID[id]; ok {
		c.lru.MoveToFront(e)
		t := e.Value.(*cacheEntry).tree
		c.mu.Unlock()
		return t, nil
	}
	c.mu.Unlock()
	t, err := c.l.LoadTree(ctx, ref)
	if err != nil {
		return nil, err
	}
	n := len(t.Nodes) + 1
	if n > c.maxNodes {
		return t, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byID[id]; ok { // loaded concurrently
		return e.Value.(*cacheEntry).tree, nil
	}
	for c.nodes+n > c.maxNodes {
		last := c.lru.Back()
		old := last.Value.(*cacheEntry)
		c.lru.Remove(last)
		delete(c.byID, old.id)
		c.nodes -= len(old.tree.Nodes) + 1
	}
	c.byID[id] = c.lru.PushFront(&cacheEntry{id: id, tree: t})
	c.nodes += n
	return t, nil
}
