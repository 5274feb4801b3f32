package walk

import (
	"context"
	"fmt"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/snapshot"
)

// findMemoMax bounds the directories whose matches Find remembers, and
// findMemoPath the paths it remembers them by: a chain of directories
// would otherwise be remembered by paths of every length up to its depth,
// memory quadratic in the depth.
const (
	findMemoMax  = 1 << 20
	findMemoPath = 4096
)

type match struct {
	path string
	node *snapshot.Node
}

// Find walks the snapshots sel in turn and calls fn for every path that m
// matches, in each snapshot in walk order; it returns the number of
// matches. A directory seen before at the same path with the same subtree
// (the usual case between snapshots of one host) is not walked again:
// its matches are remembered.
func Find(ctx context.Context, l snapshot.TreeLoader, m *pathmatch.Matcher, sel []*snapshot.Record,
	fn func(sn *snapshot.Record, p string, n *snapshot.Node) error) (int, error) {
	type key struct {
		path string
		id   hash.ID
	}
	memo := map[key][]match{}
	total := 0
	for _, sn := range sel {
		var cur []match
		var stack []int
		err := Visit(ctx, l, "/", sn.Tree, Visitor{
			Node: func(p string, n *snapshot.Node) error {
				if m.MatchSelf(p, n.Type == snapshot.TypeDir) {
					cur = append(cur, match{p, n})
				}
				if n.Type == snapshot.TypeDir {
					if ms, ok := memo[key{p, n.Subtree.ID}]; ok {
						cur = append(cur, ms...)
						return SkipDir
					}
					stack = append(stack, len(cur))
				}
				return nil
			},
			Leave: func(p string, n *snapshot.Node) error {
				start := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				if len(memo) < findMemoMax && len(p) <= findMemoPath {
					memo[key{p, n.Subtree.ID}] = cur[start:len(cur):len(cur)]
				}
				return nil
			},
		})
		if err != nil {
			return total, fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
		}
		for _, fm := range cur {
			if err := fn(sn, fm.path, fm.node); err != nil {
				return total, err
			}
		}
		total += len(cur)
	}
	return total, nil
}
