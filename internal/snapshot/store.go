package snapshot

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
)

// Record is a snapshot with its ID.
type Record struct {
	ID hash.ID
	*Snapshot
}

// Save seals and stores a snapshot record.
func Save(ctx context.Context, r *repo.Repository, sn *Snapshot) (hash.ID, error) {
	plain, err := MarshalSnapshot(sn)
	if err != nil {
		return hash.ID{}, err
	}
	return r.SaveSnapshotRecord(ctx, plain)
}

// Load reads one snapshot.
func Load(ctx context.Context, r *repo.Repository, id hash.ID) (*Record, error) {
	plain, err := r.LoadSnapshotRecord(ctx, id)
	if err != nil {
		return nil, err
	}
	sn, err := UnmarshalSnapshot(plain)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w: %w", id.Short(), repo.ErrDamagedSnapshot, err)
	}
	return &Record{ID: id, Snapshot: sn}, nil
}

// List loads every snapshot, oldest first. Snapshots that cannot be loaded
// are returned as errors beside the good ones.
func List(ctx context.Context, r *repo.Repository) ([]*Record, []error, error) {
	if r.WriteOnly() {
		return nil, nil, repo.ErrWriteOnly
	}
	ids, err := r.ListIDs(ctx, storage.Snapshot)
	if err != nil {
		return nil, nil, err
	}
	var (
		mu   sync.Mutex
		out  []*Record
		errs []error
		// a refusal of the credential (floe server role) fails the
		// listing instead of hiding every snapshot as damaged
		denied error
		wg     sync.WaitGroup
		sem    = make(chan struct{}, 8)
	)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func(id hash.ID) {
			defer wg.Done()
			defer func() { <-sem }()
			rec, err := Load(ctx, r, id)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if errors.Is(err, storage.ErrDenied) && denied == nil {
					denied = err // not this snapshot's fault: fail below
				}
				errs = append(errs, err)
				return
			}
			out = append(out, rec)
		}(id)
	}
	wg.Wait()
	if denied != nil {
		return nil, nil, denied
	}
	SortByTime(out)
	return out, errs, ctx.Err()
}

// SortByTime orders snapshots oldest first (ties by ID).
func SortByTime(s []*Record) {
	sort.Slice(s, func(i, j int) bool {
		if !s[i].Time.Equal(s[j].Time) {
			return s[i].Time.Before(s[j].Time)
		}
		return s[i].ID.String() < s[j].ID.String()
	})
}

// Filter selects snapshots; empty fields match everything.
type Filter struct {
	Hosts []string
	Tags  []TagList // a snapshot matches if it has every tag of any of these lists
	Paths []string  // a snapshot matches if it has all these paths
}

// Match reports whether sn passes the filter.
func (f Filter) Match(sn *Snapshot) bool {
	if len(f.Hosts) > 0 && !slices.Contains(f.Hosts, sn.Hostname) {
		return false
	}
	if len(f.Tags) > 0 && !slices.ContainsFunc(f.Tags, func(l TagList) bool { return l.Match(sn.Tags) }) {
		return false
	}
	for _, p := range f.Paths {
		if !slices.Contains(sn.Paths, p) {
			return false
		}
	}
	return true
}

// SamePaths reports whether two path lists are equal as sets.
func SamePaths(a, b []string) bool {
	x, y := slices.Clone(a), slices.Clone(b)
	sort.Strings(x)
	sort.Strings(y)
	return slices.Equal(x, y)
}

// ErrNoSnapshot means no snapshot matched.
var ErrNoSnapshot = errors.New("no matching snapshot")

// Find resolves a snapshot spec: "latest" (the newest that passes the
// filter), or a full or unique prefix of a snapshot ID.
func Find(ctx context.Context, r *repo.Repository, spec string, f Filter) (*Record, error) {
	if r.WriteOnly() {
		return nil, repo.ErrWriteOnly
	}
	if spec == "latest" {
		all, _, err := List(ctx, r)
		if err != nil {
			return nil, err
		}
		for i := len(all) - 1; i >= 0; i-- {
			if f.Match(all[i].Snapshot) {
				return all[i], nil
			}
		}
		return nil, fmt.Errorf("latest: %w", ErrNoSnapshot)
	}
	if strings.ContainsFunc(spec, func(c rune) bool { return !strings.ContainsRune("0123456789abcdef", c) }) {
		return nil, fmt.Errorf("%q is not a snapshot ID or \"latest\"", spec)
	}
	id, err := r.ResolveSnapshotPrefix(ctx, spec)
	if err != nil {
		if storage.IsNotExist(err) {
			return nil, fmt.Errorf("snapshot %s: %w", spec, ErrNoSnapshot)
		}
		return nil, err
	}
	return Load(ctx, r, id)
}

// LoadTree reads and decodes a tree blob.
func LoadTree(ctx context.Context, r *repo.Repository, ref hash.Ref) (*Tree, error) {
	plain, err := r.LoadBlob(ctx, repo.TreeBlob, ref, nil)
	if err != nil {
		return nil, err
	}
	t, err := DecodeTree(plain)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", ref.Short(), err)
	}
	return t, nil
}

// TreeLoader loads a tree by its ID: RepoTrees from a repository,
// walk.Cache through a bounded cache, the local cache of this host's trees.
type TreeLoader interface {
	LoadTree(ctx context.Context, ref hash.Ref) (*Tree, error)
}

// RepoTrees loads trees from a repository.
type RepoTrees struct{ Repo *repo.Repository }

// LoadTree implements TreeLoader.
func (t RepoTrees) LoadTree(ctx context.Context, ref hash.Ref) (*Tree, error) {
	return LoadTree(ctx, t.Repo, ref)
}

// ReadAheadTrees loads trees from a repository for a walk (ls, find,
// diff, stats, audit, mount, restore --dry-run): each tree it loads hints
// the trees that tree names (repo.ReadAhead), so that the walk's next
// trees are read by stretches of their packs, a few requests for a whole
// snapshot rather than one per directory. Trees are verified and decoded
// exactly as LoadTree does, and its errors are LoadTree's. The stretches
// it holds are bounded; it keeps no decoded trees (wrap it in a
// walk.Cache for that). Safe for concurrent use.
type ReadAheadTrees struct{ ra *repo.ReadAhead }

// NewReadAheadTrees returns a ReadAheadTrees for r.
func NewReadAheadTrees(r *repo.Repository) *ReadAheadTrees {
	return &ReadAheadTrees{ra: r.NewReadAhead(repo.TreeBlob)}
}

// LoadTree implements TreeLoader.
func (t *ReadAheadTrees) LoadTree(ctx context.Context, ref hash.Ref) (*Tree, error) {
	plain, err := t.ra.Load(ctx, ref, nil)
	if err != nil {
		return nil, err
	}
	tree, err := DecodeTree(plain)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", ref.Short(), err)
	}
	t.Hint(tree)
	return tree, nil
}

// Hint tells that the walk will enter the subtrees of tree, one it loaded
// otherwise (LoadTree hints those of the trees it loads).
func (t *ReadAheadTrees) Hint(tree *Tree) {
	var subs []hash.Ref
	for _, n := range tree.Nodes {
		if n.Type == TypeDir && !n.Subtree.IsNull() {
			subs = append(subs, n.Subtree)
		}
	}
	t.ra.Hint(subs)
}

// HeldBytes returns the stored bytes of tree packs held for the walk.
func (t *ReadAheadTrees) HeldBytes() int { return t.ra.HeldBytes() }
