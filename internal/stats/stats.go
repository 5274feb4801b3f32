// Package stats measures snapshots and a repository: how much data the
// snapshots hold (logical size), how much unique data that is after
// deduplication (raw size), and what it takes in storage after
// compression and encryption (stored size).
package stats

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
	"github.com/floe-backup/floe/internal/walk"
)

// Index looks blobs up; *repo.Index is one.
type Index interface {
	Lookup(h repo.BlobHandle) (repo.Location, bool)
}

// Totals describe a set of snapshots.
type Totals struct {
	Snapshots int `json:"snapshots"`
	// Counted in every snapshot, as a restore of each would create them.
	Files       uint64 `json:"files"`
	Dirs        uint64 `json:"dirs"`
	Others      uint64 `json:"others"` // symlinks, devices, FIFOs, sockets
	LogicalSize uint64 `json:"logical_size"`

	// Unique blobs the snapshots reference, each counted once. Raw sizes
	// are plaintext; stored sizes are compressed and encrypted, as in packs.
	Blobs      uint64 `json:"blobs"`
	DataBlobs  uint64 `json:"data_blobs"`
	TreeBlobs  uint64 `json:"tree_blobs"`
	DataRaw    uint64 `json:"data_raw_size"`
	TreeRaw    uint64 `json:"tree_raw_size"`
	RawSize    uint64 `json:"raw_size"`
	StoredSize uint64 `json:"stored_size"`
	// MissingBlobs are referenced but not in the index (`floe check`).
	MissingBlobs uint64 `json:"missing_blobs"`

	// DedupRatio is LogicalSize / DataRaw; CompressionRatio is
	// RawSize / StoredSize. Zero when undefined.
	DedupRatio       float64 `json:"dedup_ratio"`
	CompressionRatio float64 `json:"compression_ratio"`
}

// Unique is the data that one snapshot references and no other does:
// what forgetting it (and pruning) would free.
type Unique struct {
	Blobs      uint64 `json:"blobs"`
	RawSize    uint64 `json:"raw_size"`
	StoredSize uint64 `json:"stored_size"`
}

// RepoTotals describe the whole repository.
type RepoTotals struct {
	Packs     uint64 `json:"packs"`      // pack files in storage
	PackBytes uint64 `json:"pack_bytes"` // their total size
	// Every blob in the index, referenced or not. Their plaintext size is
	// not known without reading them: the index does not record it.
	Blobs      uint64 `json:"blobs"`
	StoredSize uint64 `json:"stored_size"`
}

type counts struct {
	files, dirs, others, size uint64
}

func (c *counts) add(o counts) {
	c.files += o.files
	c.dirs += o.dirs
	c.others += o.others
	c.size += o.size
}

// blobSet holds blobs with their plaintext sizes (from the trees: the
// index does not record them, so that the storage does not learn them).
type blobSet map[repo.BlobHandle]uint64

// Snapshots measures the snapshots whose root trees are roots. Each
// distinct tree is loaded once: a subtree that several snapshots (or
// places) share is counted from memory.
func Snapshots(ctx context.Context, l snapshot.TreeLoader, idx Index, roots []hash.Ref) (*Totals, error) {
	c := &counter{l: l, memo: map[hash.ID]counts{}, blobs: blobSet{}}
	t := &Totals{Snapshots: len(roots)}
	var all counts
	for _, root := range roots {
		n, err := c.tree(ctx, "/", root)
		if err != nil {
			return nil, err
		}
		all.add(n)
	}
	t.Files, t.Dirs, t.Others, t.LogicalSize = all.files, all.dirs, all.others, all.size
	for h, raw := range c.blobs {
		t.Blobs++
		loc, ok := idx.Lookup(h)
		if !ok {
			t.MissingBlobs++
			continue
		}
		if h.Type == repo.TreeBlob {
			t.TreeBlobs++
			t.TreeRaw += raw
		} else {
			t.DataBlobs++
			t.DataRaw += raw
		}
		t.StoredSize += uint64(loc.Length)
	}
	t.RawSize = t.DataRaw + t.TreeRaw
	t.DedupRatio = ratio(t.LogicalSize, t.DataRaw)
	t.CompressionRatio = ratio(t.RawSize, t.StoredSize)
	return t, nil
}

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

type counter struct {
	l     snapshot.TreeLoader
	memo  map[hash.ID]counts // per tree: what is below it
	blobs blobSet
}

// tree returns the counts below the directory tree id (at path dir) and
// adds its blobs to the set.
func (c *counter) tree(ctx context.Context, dir string, ref hash.Ref) (counts, error) {
	sum, err := c.subtree(ctx, ref)
	var te *treeError
	if errors.As(err, &te) {
		return counts{}, fmt.Errorf("load tree of %s (%s): %w", walk.Join(dir, strings.TrimPrefix(te.path, "/")), te.ref.Short(), te.err)
	}
	return sum, err
}

// treeError is a tree that could not be loaded, below the tree subtree
// started from: path is built as the error goes back up, so that the walk
// down keeps no path per level (paths kept per level cost memory quadratic
// in the depth: a chain of 3,000 directories of 255-byte names, a 1 MB
// snapshot, took gigabytes).
type treeError struct {
	path string // "" for the tree itself, else "/a/b"
	ref  hash.Ref
	err  error
}

func (e *treeError) Error() string { return e.err.Error() }

// subtree counts the tree ref and everything below it (counter.tree).
func (c *counter) subtree(ctx context.Context, ref hash.Ref) (counts, error) {
	id := ref.ID
	if n, ok := c.memo[id]; ok {
		return n, nil
	}
	if err := ctx.Err(); err != nil {
		return counts{}, err
	}
	t, err := c.l.LoadTree(ctx, ref)
	if err != nil {
		return counts{}, &treeError{ref: ref, err: err}
	}
	b, err := snapshot.EncodeTree(t)
	if err != nil {
		return counts{}, err
	}
	c.blobs[repo.BlobHandle{Type: repo.TreeBlob, ID: id}] = uint64(len(b))
	var sum counts
	for _, n := range t.Nodes {
		switch n.Type {
		case snapshot.TypeDir:
			sum.dirs++
			if n.Subtree.IsNull() {
				continue
			}
			sub, err := c.subtree(ctx, n.Subtree)
			if te, ok := err.(*treeError); ok {
				te.path = "/" + n.Name + te.path
			}
			if err != nil {
				return counts{}, err
			}
			sum.add(sub)
		case snapshot.TypeFile:
			sum.files++
			sum.size += n.Size
			for i, b := range n.Content {
				c.blobs[repo.BlobHandle{Type: repo.DataBlob, ID: b.ID}] = uint64(n.ChunkSizes[i])
			}
		default:
			sum.others++
		}
	}
	c.memo[id] = sum
	return sum, nil
}

// treeSize returns the plaintext size of a tree blob (its encoding).
func treeSize(ctx context.Context, l snapshot.TreeLoader, ref hash.Ref) (uint64, error) {
	t, err := l.LoadTree(ctx, ref)
	if err != nil {
		return 0, fmt.Errorf("load tree %s: %w", ref.Short(), err)
	}
	b, err := snapshot.EncodeTree(t)
	if err != nil {
		return 0, err
	}
	return uint64(len(b)), nil
}

// blobsOf calls fn for every blob below the root trees, with its plaintext
// size, skipping trees in seen (and adding the ones it walks).
func blobsOf(ctx context.Context, l snapshot.TreeLoader, roots []hash.Ref, seen map[hash.ID]bool, fn func(repo.BlobHandle, uint64)) error {
	tree := func(ref hash.Ref) error {
		raw, err := treeSize(ctx, l, ref)
		if err != nil {
			return err
		}
		fn(repo.BlobHandle{Type: repo.TreeBlob, ID: ref.ID}, raw)
		return nil
	}
	for _, root := range roots {
		if seen[root.ID] {
			continue
		}
		seen[root.ID] = true
		if err := tree(root); err != nil {
			return err
		}
		err := walk.Walk(ctx, l, "/", root, func(p string, n *snapshot.Node) error {
			switch n.Type {
			case snapshot.TypeDir:
				if n.Subtree.IsNull() || seen[n.Subtree.ID] {
					return walk.SkipDir
				}
				seen[n.Subtree.ID] = true
				if err := tree(n.Subtree); err != nil {
					return err
				}
			case snapshot.TypeFile:
				for i, b := range n.Content {
					fn(repo.BlobHandle{Type: repo.DataBlob, ID: b.ID}, uint64(n.ChunkSizes[i]))
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// UniqueTo measures the blobs that the snapshot with root tree target
// references and none of the others do.
func UniqueTo(ctx context.Context, l snapshot.TreeLoader, idx Index, target hash.Ref, others []hash.Ref) (*Unique, error) {
	set := blobSet{}
	if err := blobsOf(ctx, l, []hash.Ref{target}, map[hash.ID]bool{}, func(h repo.BlobHandle, raw uint64) { set[h] = raw }); err != nil {
		return nil, err
	}
	seen := map[hash.ID]bool{}
	for _, o := range others {
		if len(set) == 0 {
			break
		}
		if err := blobsOf(ctx, l, []hash.Ref{o}, seen, func(h repo.BlobHandle, _ uint64) { delete(set, h) }); err != nil {
			return nil, err
		}
	}
	u := &Unique{}
	for h, raw := range set {
		u.Blobs++
		if loc, ok := idx.Lookup(h); ok {
			u.RawSize += raw
			u.StoredSize += uint64(loc.Length)
		}
	}
	return u, nil
}

// UniqueToSnapshot measures what the snapshot sn of r (index loaded)
// references and no other snapshot of r does. It fails when a snapshot
// cannot be loaded: what that one references is unknown.
func UniqueToSnapshot(ctx context.Context, l snapshot.TreeLoader, r *repo.Repository, sn *snapshot.Record) (*Unique, error) {
	all, errs, err := snapshot.List(ctx, r)
	if err != nil {
		return nil, err
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("cannot tell what is unique to %s: %s could not be loaded (first: %w)", sn.ID.Short(), ui.Count(len(errs), "snapshot"), errs[0])
	}
	var others []hash.Ref
	for _, s := range all {
		if s.ID != sn.ID {
			others = append(others, s.Tree)
		}
	}
	return UniqueTo(ctx, l, r.Index(), sn.Tree, others)
}

// Repository measures the whole repository: its pack files as stored and
// every blob in the loaded index.
func Repository(ctx context.Context, r *repo.Repository) (*RepoTotals, error) {
	t := &RepoTotals{}
	err := r.Backend().List(ctx, storage.Pack, func(fi storage.FileInfo) error {
		t.Packs++
		t.PackBytes += uint64(fi.Size)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	r.Index().Each(func(h repo.BlobHandle, loc repo.Location) {
		t.Blobs++
		t.StoredSize += uint64(loc.Length)
	})
	return t, nil
}

// HostCost is what one host's snapshots reference, and what of it no other
// host's snapshots reference: what that host alone costs (for charge-back;
// forgetting all its snapshots and pruning would free Own).
type HostCost struct {
	Host      string `json:"host"`
	Snapshots int    `json:"snapshots"`
	// Referenced: every blob the host's snapshots reference, once each.
	Referenced Unique `json:"referenced"`
	// Own: the blobs of Referenced that no other host's snapshot references.
	Own Unique `json:"own"`
}

// ByHost measures, for each host of the snapshots snaps (all of the
// repository's, for Own to mean "no other host"), what its snapshots
// reference and what only they do. Sorted by host name.
func ByHost(ctx context.Context, l snapshot.TreeLoader, idx Index, snaps []*snapshot.Record) ([]HostCost, error) {
	byHost := map[string][]hash.Ref{}
	for _, s := range snaps {
		byHost[s.Hostname] = append(byHost[s.Hostname], s.Tree)
	}
	hosts := make([]string, 0, len(byHost))
	for h := range byHost {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	const shared = -1
	owner := map[repo.BlobHandle]int{} // the one host that references it, or shared
	sets := make([]blobSet, len(hosts))
	for i, h := range hosts {
		set := blobSet{}
		if err := blobsOf(ctx, l, byHost[h], map[hash.ID]bool{}, func(b repo.BlobHandle, raw uint64) { set[b] = raw }); err != nil {
			return nil, fmt.Errorf("host %s: %w", h, err)
		}
		for b := range set {
			if o, ok := owner[b]; !ok {
				owner[b] = i
			} else if o != i {
				owner[b] = shared
			}
		}
		sets[i] = set
	}
	out := make([]HostCost, len(hosts))
	for i, h := range hosts {
		c := HostCost{Host: h, Snapshots: len(byHost[h])}
		for b, raw := range sets[i] {
			loc, ok := idx.Lookup(b)
			if !ok {
				continue // missing: `floe check` reports it
			}
			c.Referenced.Blobs++
			c.Referenced.RawSize += raw
			c.Referenced.StoredSize += uint64(loc.Length)
			if owner[b] == i {
				c.Own.Blobs++
				c.Own.RawSize += raw
				c.Own.StoredSize += uint64(loc.Length)
			}
		}
		out[i] = c
	}
	return out, nil
}
