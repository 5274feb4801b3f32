package restore

import (
	"context"
	"fmt"
	"path"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Trees are read ahead, level by level, before plan walks them: plan needs
// one tree per directory, and loading each by itself cost a request per
// directory (1,671 for GOROOT), which on a floe server or S3 was most of
// what a restore cost the storage after the file contents were read by
// ranges. Each level's trees are read by pack ranges like the contents.
//
// The trees read ahead are bounded (maxPrefetchTree bytes of plaintext);
// plan loads any other tree itself, as it does one that failed to read
// ahead (and so reports its error).
const maxPrefetchTree = 64 << 20

// treeRanges: trees of a snapshot lie together in tree packs, a level's
// scattered among the others'; reading what lies between is cheaper than
// another request.
var treeRanges = repo.RangeLimits{MaxGap: 512 << 10, MaxRange: 8 << 20}

// maxTreeBytes bounds the stored bytes of tree packs that prefetchTrees
// keeps for the levels below. A level's trees are scattered over the tree
// pack, and so are the next level's: GOROOT's 12 levels each read most of
// its 1.7 MB tree pack again (from a server or S3, 10 to 18 MB of a
// restore's 85 sent, and a request per level).
const maxTreeBytes = 32 << 20

// treeReadBelow is how far before a level's range prefetchTrees reads, for
// the levels below.
const treeReadBelow = 4 << 20

// heldRange is a stretch of a tree pack that prefetchTrees read.
type heldRange struct {
	start int64
	data  []byte
}

// prefetchTrees reads the trees below tree (the snapshot directory
// snapDir) that plan will enter, into rs.treeCache.
func (rs *restorer) prefetchTrees(ctx context.Context, tree *snapshot.Tree, snapDir string) {
	rs.treeCache = map[hash.Ref]*snapshot.Tree{}
	var total int
	held := map[hash.ID][]heldRange{}
	heldBytes := 0
	// covering returns the held stretch of rg's pack that holds rg.
	covering := func(rg repo.PackRange) (heldRange, bool) {
		for _, h := range held[rg.Pack] {
			if h.start <= rg.Start && rg.End <= h.start+int64(len(h.data)) {
				return h, true
			}
		}
		return heldRange{}, false
	}
	level := rs.subdirs(tree, snapDir, nil)
	for len(level) > 0 && ctx.Err() == nil && total < maxPrefetchTree {
		refs := make([]hash.Ref, len(level))
		paths := make([]string, len(level))
		for i, d := range level {
			refs[i], paths[i] = d.ref, d.path
		}
		ranges, _ := rs.r.PlanReads(repo.TreeBlob, refs, treeRanges)
		var next []subdir
		for _, rg := range ranges {
			if total >= maxPrefetchTree {
				break
			}
			// Errors are left to plan, which loads the tree again and
			// reports them where they belong.
			take := func(b repo.RangeBlob, plain []byte, err error) error {
				if err != nil {
					return nil
				}
				t, err := snapshot.DecodeTree(plain)
				if err != nil {
					return nil
				}
				total += len(plain)
				rs.treeCache[b.Ref] = t
				next = rs.subdirs(t, paths[b.Tag], next)
				return nil
			}
			h, ok := covering(rg)
			if !ok && heldBytes < maxTreeBytes {
				// from below the range: a backup writes a directory's
				// subtrees before its tree, so the levels below lie
				// mostly before this one
				wide := rg
				wide.Start = max(0, rg.Start-treeReadBelow)
				if data, err := rs.trees.RangeBytes(ctx, wide); err == nil {
					h, ok = heldRange{start: wide.Start, data: data}, true
					held[rg.Pack] = append(held[rg.Pack], h)
					heldBytes += len(data)
				}
			}
			if ok {
				rs.trees.LoadRangeFrom(ctx, repo.TreeBlob, rg, h.start, h.data, take)
			} else {
				rs.trees.LoadRange(ctx, repo.TreeBlob, rg, take)
			}
		}
		level = next
	}
}

// subdir is a directory whose tree plan will need.
type subdir struct {
	ref  hash.Ref
	path string // in the snapshot
}

// subdirs appends the directories of tree that plan enters (as plan
// selects them) and whose trees are not read yet.
func (rs *restorer) subdirs(tree *snapshot.Tree, snapDir string, out []subdir) []subdir {
	for _, n := range tree.Nodes {
		if n.Type != snapshot.TypeDir || snapshot.CheckName(n.Name) != nil {
			continue
		}
		sp := path.Join(snapDir, n.Name)
		if _, descend := rs.selected(sp, true); !descend {
			continue
		}
		if _, ok := rs.treeCache[n.Subtree]; ok {
			continue
		}
		out = append(out, subdir{n.Subtree, sp})
	}
	return out
}

// loadTree returns the tree ref, read ahead or loaded now through rs.trees
// (which keeps the pack it read last open).
func (rs *restorer) loadTree(ctx context.Context, ref hash.Ref) (*snapshot.Tree, error) {
	if t, ok := rs.treeCache[ref]; ok {
		// a directory's tree is entered once, unless the same tree is
		// several directories' (identical directories): keep it
		return t, nil
	}
	plain, err := rs.trees.Load(ctx, repo.TreeBlob, ref, nil)
	if err != nil {
		return nil, err
	}
	t, err := snapshot.DecodeTree(plain)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", ref.Short(), err)
	}
	return t, nil
}
