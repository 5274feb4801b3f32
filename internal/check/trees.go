package check

import (
	"context"
	"fmt"
	"slices"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
	"github.com/floe-backup/floe/internal/walk"
)

// damage is a damaged file or directory below a tree.
type damage struct {
	path  string // relative to the tree; "" is the tree itself
	cause *cause
}

// walkSnapshots decodes the trees of every snapshot, each tree once, and
// records which files and directories of which snapshots are damaged.
func (c *checker) walkSnapshots(ctx context.Context) error {
	if c.r.WriteOnly() {
		return nil
	}
	c.opts.Progress.Phase("checking trees", 0, 0)
	for _, sn := range c.snapshots {
		dmg, err := c.walkTree(ctx, sn.Tree)
		if err != nil {
			return err
		}
		for _, d := range dmg {
			a := Affected{Snapshot: sn.ID, Path: "/" + d.path, Cause: d.cause.text}
			c.res.Affected = append(c.res.Affected, a)
			p := d.cause.problem
			if len(p.Affected) < MaxAffectedPerProblem {
				p.Affected = append(p.Affected, a)
			} else {
				p.AffectedMore++
			}
		}
	}
	return nil
}

// walkTree returns what is damaged in tree id and below, walking it the
// first time it is asked for.
func (c *checker) walkTree(ctx context.Context, ref hash.Ref) ([]damage, error) {
	id := ref.ID
	if d, ok := c.trees[id]; ok {
		return d, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tree, cs, err := c.loadTree(ctx, ref)
	if err != nil {
		return nil, err
	}
	if cs != nil {
		d := []damage{{cause: cs}}
		c.trees[id] = d
		return d, nil
	}
	c.res.Summary.Trees++
	c.opts.Progress.Done(1, 0)
	c.walking[id] = true
	defer delete(c.walking, id)

	var out []damage
	for _, n := range tree.Nodes {
		switch n.Type {
		case snapshot.TypeDir:
			switch {
			case n.Subtree.IsNull():
				p := c.problem(Error, KindTree, "tree/"+id.String(), "tree %s: directory %s has no subtree", id.Short(), DisplayPath(n.Name))
				out = append(out, damage{n.Name, &cause{problem: p, text: "directory without contents in tree " + id.Short(), definite: true}})
				continue
			case c.walking[n.Subtree.ID]:
				p := c.problem(Error, KindTree, "tree/"+id.String(), "tree %s: directory %s contains itself (a cycle of trees)", id.Short(), DisplayPath(n.Name))
				out = append(out, damage{n.Name, &cause{problem: p, text: "directory contains itself", definite: true}})
				continue
			}
			sub, err := c.walkTree(ctx, n.Subtree)
			if err != nil {
				return nil, err
			}
			for _, d := range sub {
				p := n.Name
				if d.path != "" {
					p += "/" + d.path
				}
				out = append(out, damage{p, d.cause})
			}
		case snapshot.TypeFile:
			c.res.Summary.Files++
			// A file's size is checked against its chunk sizes when the
			// tree decodes; restore checks each chunk's length.
			out = append(out, c.fileDamage(id, n)...)
		}
	}
	c.trees[id] = out
	return out, nil
}

// loadTree loads and decodes a tree, or says why it cannot. The error is
// only for a canceled check.
func (c *checker) loadTree(ctx context.Context, ref hash.Ref) (*snapshot.Tree, *cause, error) {
	id := ref.ID
	h := repo.BlobHandle{Type: repo.TreeBlob, ID: id}
	cs := c.blobCause(h)
	if cs != nil && cs.definite {
		return nil, cs, nil
	}
	// A tree whose pack header is damaged may still be intact; loading it
	// verifies it in full.
	tree, err := c.treeLoader.LoadTree(ctx, ref)
	if err == nil {
		return tree, nil, nil
	}
	if ctx.Err() != nil {
		return nil, nil, ctx.Err()
	}
	if cs != nil {
		return nil, &cause{problem: cs.problem, text: err.Error(), definite: true}, nil
	}
	p := c.problem(Error, KindTree, "tree/"+id.String(), "%v", err)
	return nil, &cause{problem: p, text: err.Error(), definite: true}, nil
}

// collectRefs walks the trees of every snapshot (with --read-data and a
// full key) and records the refs they hold to data blobs, so that reading
// the packs decrypts every blob a snapshot needs. Trees that do not load
// are left to walkSnapshots, which reports them.
func (c *checker) collectRefs(ctx context.Context) error {
	c.refBad = map[blobRef]string{}
	if !c.opts.ReadData || c.r.WriteOnly() {
		return nil
	}
	c.refs = map[repo.BlobHandle][]blobRef{}
	roots := make([]hash.Ref, 0, len(c.snapshots))
	for _, sn := range c.snapshots {
		roots = append(roots, sn.Tree)
	}
	return walk.EachTree(ctx, c.treeLoader, roots, 4, func(_ hash.Ref, t *snapshot.Tree, err error) error {
		if err != nil {
			return nil // walkSnapshots reports it
		}
		for _, n := range t.Nodes {
			for i, cr := range n.Content {
				h := repo.BlobHandle{Type: repo.DataBlob, ID: cr.ID}
				br := blobRef{cr, n.ChunkSizes[i]}
				if !slices.Contains(c.refs[h], br) {
					c.refs[h] = append(c.refs[h], br)
				}
			}
		}
		return nil
	})
}

// fileDamage returns the damage of a file's content: one entry per
// problem that damages it.
func (c *checker) fileDamage(tree hash.ID, n *snapshot.Node) []damage {
	var out []damage
	var counts []int
	for i, ref := range n.Content {
		cs := c.blobCause(repo.BlobHandle{Type: repo.DataBlob, ID: ref.ID})
		if why, bad := c.refBad[blobRef{ref, n.ChunkSizes[i]}]; cs == nil && bad {
			p := c.problem(Error, KindTree, "tree/"+tree.String(), "tree %s: file %s: %s (the tree is damaged or hostile)", tree.Short(), DisplayPath(n.Name), why)
			cs = &cause{problem: p, text: why, definite: true}
		}
		if cs == nil {
			continue
		}
		found := false
		for i := range out {
			if out[i].cause.problem == cs.problem {
				counts[i]++
				found = true
				break
			}
		}
		if !found {
			out = append(out, damage{n.Name, cs})
			counts = append(counts, 1)
		}
	}
	for i := range out {
		if counts[i] > 1 {
			cs := *out[i].cause
			cs.text += fmt.Sprintf(" (and %s more)", ui.Count(counts[i]-1, "damaged blob"))
			out[i].cause = &cs
		}
	}
	return out
}
