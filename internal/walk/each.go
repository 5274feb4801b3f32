package walk

import (
	"context"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/snapshot"
)

// eachBatch is how many trees EachTree holds in memory at once.
const eachBatch = 256

// EachTree calls fn once for every tree reachable from roots (each tree
// once, however many snapshots or directories share it), breadth first.
// Trees are loaded a batch at a time by up to workers goroutines: reading,
// decrypting and decoding a tree is a round trip and CPU work, and one at
// a time left a core idle (check --read-data, prune). fn gets the tree, or
// the error that loading it gave (its subtrees are then not visited); an
// error from fn stops the walk and is returned, as is the context's.
func EachTree(ctx context.Context, l snapshot.TreeLoader, roots []hash.Ref, workers int,
	fn func(ref hash.Ref, t *snapshot.Tree, err error) error) error {
	seen := map[hash.ID]bool{}
	var frontier []hash.Ref
	add := func(ref hash.Ref) {
		if !seen[ref.ID] {
			seen[ref.ID] = true
			frontier = append(frontier, ref)
		}
	}
	for _, ref := range roots {
		add(ref)
	}
	for len(frontier) > 0 {
		n := min(eachBatch, len(frontier))
		cur := frontier[:n]
		frontier = frontier[n:]
		trees := make([]*snapshot.Tree, n)
		errs := make([]error, n)
		par.For(ctx, n, workers, func(_, i int) {
			trees[i], errs[i] = l.LoadTree(ctx, cur[i])
		})
		if err := ctx.Err(); err != nil {
			return err
		}
		for i, t := range trees {
			if err := fn(cur[i], t, errs[i]); err != nil {
				return err
			}
			if errs[i] != nil {
				continue
			}
			for _, node := range t.Nodes {
				if !node.Subtree.IsNull() {
					add(node.Subtree)
				}
			}
		}
	}
	return nil
}
