package walk_test

import (
	"context"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
)

// mapLoader serves prebuilt trees without cost, so that the benchmark
// measures the cache alone.
type mapLoader map[hash.ID]*snapshot.Tree

func (m mapLoader) LoadTree(_ context.Context, ref hash.Ref) (*snapshot.Tree, error) {
	return m[ref.ID], nil
}

// BenchmarkCache loads 2,000 trees of 10 nodes, in a pattern where most
// loads hit, through a cache that holds half of them: the LRU's cost per
// hit, miss and eviction.
func BenchmarkCache(b *testing.B) {
	const trees = 2000
	m := mapLoader{}
	ids := make([]hash.Ref, trees)
	for i := range ids {
		ids[i].ID[0], ids[i].ID[1] = byte(i), byte(i>>8)
		m[ids[i].ID] = &snapshot.Tree{Nodes: make([]*snapshot.Node, 10)}
	}
	c := walk.NewCache(m, trees/2*11)
	ctx := context.Background()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		// 7 of 8 loads among 500 hot trees, 1 of 8 anywhere
		k := (i * 7919) % 500
		if i%8 == 0 {
			k = (i * 104729) % trees
		}
		i++
		if _, err := c.LoadTree(ctx, ids[k]); err != nil {
			b.Fatal(err)
		}
	}
}
