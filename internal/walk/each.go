package walk

import (
	"context"
	"slices"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/snapshot"
)

// eachBatch is how many trees EachTree holds in memory at once.
const eachBatch = 256

// EachTree calls fn once for every tree reachable from roots (each tree
// once, however many snapshots or directories share it), depth first a
// batch at a time: the next batch is the subtrees of the last, so that a
// batch holds trees a backup wrote side by side, and a loader that reads
// ahead by stretches of packs (snapshot.ReadAheadTrees) reads each
// stretch about once; breadth first, each level crossed every tree pack
// of the repository again. Trees are loaded a batch at a time by up to
// workers goroutines: reading, decrypting and decoding a tree is a round
// trip and CPU work, and one at a time left a core idle (check
// --read-data, prune). fn gets the tree, or the error that loading it
// gave (its subtrees are then not visited); an error from fn stops the
// walk and is returned, as is the context's.
func EachTree(ctx context.Context, l snapshot.TreeLoader, roots []hash.Ref, workers int,
	fn func(ref hash.Ref, t *snapshot.Tree, err error) error) error {
	seen := map[hash.ID]bool{}
	// a stack: its top is the next tree to load
	var stack []hash.Ref
	push := func(refs []hash.Ref) {
		for i := len(refs) - 1; i >= 0; i-- {
			if ref := refs[i]; !seen[ref.ID] {
				seen[ref.ID] = true
				stack = append(stack, ref)
			}
		}
	}
	push(roots)
	var subs []hash.Ref
	for len(stack) > 0 {
		n := min(eachBatch, len(stack))
		// the top n, top first; copied, as pushing reuses the stack
		cur := slices.Clone(stack[len(stack)-n:])
		slices.Reverse(cur)
		stack = stack[:len(stack)-n]
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
		}
		// the last tree's subtrees first, so that the first tree's
		// come out on top, in their order
		for i := n - 1; i >= 0; i-- {
			if errs[i] != nil {
				continue
			}
			subs = subs[:0]
			for _, node := range trees[i].Nodes {
				if !node.Subtree.IsNull() {
					subs = append(subs, node.Subtree)
				}
			}
			push(subs)
		}
	}
	return nil
}
