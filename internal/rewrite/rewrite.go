// Package rewrite removes paths from existing snapshots (floe rewrite,
// restic's semantics): each snapshot gets a new record whose trees lack
// the excluded paths. Data blobs are not touched (the kept files keep
// their Refs), so only changed trees are stored; the old record is
// removed only when asked, and prune then reclaims what nothing else
// references.
package rewrite

import (
	"context"
	"fmt"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
)

// Options tune Run.
type Options struct {
	// Excludes are backup's exclude patterns, matched against the paths in
	// the snapshots ("/home/a/.ssh/id_ed25519", "*.key", "cache/").
	Excludes []string
	// Forget removes each rewritten snapshot's old record once the new one
	// is saved.
	Forget bool
	// DryRun finds what would be removed and writes nothing.
	DryRun bool
}

// Result is one snapshot's rewrite.
type Result struct {
	Old hash.ID `json:"old"`
	// New is the new record's ID; null when nothing matched (no new record).
	New hash.ID `json:"new"`
	// Removed counts the entries excluded (a directory counts once, with
	// what is below it), RemovedBytes the size of the files among them.
	Removed      uint64   `json:"removed"`
	RemovedBytes uint64   `json:"removed_bytes"`
	Paths        []string `json:"paths,omitempty"` // the excluded paths, the first 1000
	Forgotten    bool     `json:"forgotten"`       // the old record was removed
}

// Run rewrites snaps. It needs a full key (it reads trees and removes
// records): repo.ErrWriteOnly otherwise. Each new record is written after
// its trees are stored and indexed; it keeps the old one's time, host,
// paths, tags and parent, with Original naming the snapshot first made
// (the old one, or the one it is a copy of) and the summary's total size
// less what was removed.
func Run(ctx context.Context, r *repo.Repository, snaps []*snapshot.Record, opts Options) ([]Result, error) {
	if r.WriteOnly() {
		return nil, repo.ErrWriteOnly
	}
	excl, err := pathmatch.New(opts.Excludes)
	if err != nil {
		return nil, err
	}
	if excl.Empty() {
		return nil, fmt.Errorf("no exclude patterns: nothing to rewrite")
	}
	var out []Result
	// Every tree of every snapshot is walked: read ahead by stretches of
	// their packs, not one request each (through a server or S3).
	trees := snapshot.NewReadAheadTrees(r)
	for _, rec := range snaps {
		w := &writer{ctx: ctx, r: r, trees: trees, excl: excl, dry: opts.DryRun}
		if !opts.DryRun {
			w.out = r.StartWriting()
		}
		res := Result{Old: rec.ID}
		w.buf = append(w.buf[:0], '/')
		root, changed, err := w.tree(rec.Tree)
		if err != nil {
			if w.out != nil {
				_ = w.out.Abort(context.WithoutCancel(ctx)) // index what was stored, for the next run
			}
			return out, fmt.Errorf("rewrite snapshot %s: %w", rec.ID.Short(), err)
		}
		res.Removed, res.RemovedBytes, res.Paths = w.removed, w.bytes, w.paths
		if !changed || opts.DryRun {
			if w.out != nil {
				_ = w.out.Abort(ctx) // nothing was written
			}
			out = append(out, res)
			continue
		}
		if err := w.out.Finish(ctx); err != nil {
			return out, fmt.Errorf("rewrite snapshot %s: store its trees: %w", rec.ID.Short(), err)
		}
		sn := *rec.Snapshot
		sn.Tree = root
		if sn.Original.IsNull() {
			sn.Original = rec.ID
		}
		if sn.Summary.TotalBytes >= w.bytes {
			sn.Summary.TotalBytes -= w.bytes
		}
		id, err := snapshot.Save(ctx, r, &sn)
		if err != nil {
			return out, fmt.Errorf("rewrite snapshot %s: save the new record: %w", rec.ID.Short(), err)
		}
		res.New = id
		if opts.Forget {
			if err := r.RemoveSnapshot(ctx, rec.ID); err != nil {
				out = append(out, res)
				return out, fmt.Errorf("snapshot %s rewritten as %s, but the old record stays: %w", rec.ID.Short(), id.Short(), err)
			}
			res.Forgotten = true
		}
		out = append(out, res)
	}
	return out, nil
}

type writer struct {
	ctx     context.Context
	r       *repo.Repository
	trees   snapshot.TreeLoader
	out     *repo.Writer // nil in a dry run
	excl    *pathmatch.Matcher
	dry     bool
	removed uint64
	bytes   uint64
	paths   []string
	// buf holds the path of the directory tree and count are in: each
	// level keeps its length, not a string of its own (paths kept per
	// level cost memory quadratic in the depth: a chain of 3,000
	// directories of 255-byte names, a 1 MB snapshot, took gigabytes)
	buf []byte
}

// tree returns the Ref of the tree at the path w.buf holds without the
// excluded entries, storing it when it changed, and whether it changed.
func (w *writer) tree(ref hash.Ref) (hash.Ref, bool, error) {
	dirLen := len(w.buf)
	defer func() { w.buf = w.buf[:dirLen] }()
	dir := func() string { return string(w.buf[:dirLen]) } // for errors
	t, err := w.trees.LoadTree(w.ctx, ref)
	if err != nil {
		return hash.Ref{}, false, fmt.Errorf("load tree of %s: %w", dir(), err)
	}
	nt := &snapshot.Tree{Nodes: make([]*snapshot.Node, 0, len(t.Nodes))}
	changed := false
	for _, n := range t.Nodes {
		w.buf = walk.AppendJoin(w.buf[:dirLen], n.Name)
		p := string(w.buf)
		isDir := n.Type == snapshot.TypeDir
		if w.excl.Match(p, isDir) {
			changed = true
			w.removed++
			if len(w.paths) < 1000 {
				w.paths = append(w.paths, p)
			}
			if err := w.count(n); err != nil {
				return hash.Ref{}, false, err
			}
			continue
		}
		if isDir && !n.Subtree.IsNull() {
			sub, subChanged, err := w.tree(n.Subtree)
			if err != nil {
				return hash.Ref{}, false, err
			}
			if subChanged {
				m := *n
				m.Subtree = sub
				n = &m
				changed = true
			}
		}
		nt.Nodes = append(nt.Nodes, n)
	}
	if !changed || w.dry {
		return ref, changed, nil
	}
	raw, err := snapshot.EncodeTree(nt)
	if err != nil {
		return hash.Ref{}, false, fmt.Errorf("tree of %s: %w", dir(), err)
	}
	id, _, _, err := w.out.SaveBlob(w.ctx, repo.TreeBlob, w.r.BlobKey(raw), raw)
	if err != nil {
		return hash.Ref{}, false, fmt.Errorf("save tree of %s: %w", dir(), err)
	}
	return id, true, nil
}

// count adds the size of the files at and below an excluded node, whose
// path w.buf holds.
func (w *writer) count(n *snapshot.Node) error {
	if n.Type == snapshot.TypeFile {
		w.bytes += n.Size
		return nil
	}
	if n.Type != snapshot.TypeDir || n.Subtree.IsNull() {
		return nil
	}
	t, err := w.trees.LoadTree(w.ctx, n.Subtree)
	if err != nil {
		return fmt.Errorf("load tree of %s: %w", w.buf, err)
	}
	dirLen := len(w.buf)
	defer func() { w.buf = w.buf[:dirLen] }()
	for _, c := range t.Nodes {
		w.buf = walk.AppendJoin(w.buf[:dirLen], c.Name)
		if err := w.count(c); err != nil {
			return err
		}
	}
	return nil
}
