package walk

import (
	"context"
	"math"
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

// DefaultCacheNodes bounds a Cache by default: about 200 MiB of nodes.
const DefaultCacheNodes = 1 << 20

// Cache is a snapshot.TreeLoader that keeps recently loaded trees, least recently used
// out first, up to a total number of nodes. Walking many snapshots of the
// same hosts loads each unchanged tree once. Safe for concurrent use.
//
// The LRU is golang-lru's simplelru, bounded here by the nodes it holds
// rather than by its count of entries (trees differ in size by orders of
// magnitude), so it is used under a mutex of ours.
type Cache struct {
	l        snapshot.TreeLoader
	maxNodes int

	mu    sync.Mutex
	nodes int
	lru   *simplelru.LRU[hash.ID, *snapshot.Tree]
}

func treeNodes(t *snapshot.Tree) int { return len(t.Nodes) + 1 }

// NewCache wraps l. maxNodes <= 0 means DefaultCacheNodes.
func NewCache(l snapshot.TreeLoader, maxNodes int) *Cache {
	if maxNodes <= 0 {
		maxNodes = DefaultCacheNodes
	}
	c := &Cache{l: l, maxNodes: maxNodes}
	// the count bound is never reached: every tree has at least one node
	c.lru, _ = simplelru.NewLRU(math.MaxInt, func(_ hash.ID, t *snapshot.Tree) {
		c.nodes -= treeNodes(t)
	})
	return c
}

// LoadTree returns the tree from the cache or loads it. Trees returned
// are shared: callers must not modify them.
func (c *Cache) LoadTree(ctx context.Context, ref hash.Ref) (*snapshot.Tree, error) {
	id := ref.ID
	c.mu.Lock()
	t, ok := c.lru.Get(id)
	c.mu.Unlock()
	if ok {
		return t, nil
	}
	t, err := c.l.LoadTree(ctx, ref)
	if err != nil {
		return nil, err
	}
	n := treeNodes(t)
	if n > c.maxNodes {
		return t, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cached, ok := c.lru.Get(id); ok { // loaded concurrently
		return cached, nil
	}
	for c.nodes+n > c.maxNodes {
		c.lru.RemoveOldest() // the callback counts the nodes out
	}
	c.lru.Add(id, t)
	c.nodes += n
	return t, nil
}
