package backup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/floe-backup/floe/internal/cache"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// FindParent picks the snapshot to compare with and where its trees come
// from: the local cache when it has them (the only way for write-only keys),
// else the repository.
//
// explicit, when set, names the parent (an ID prefix). Snapshots that
// cannot be read are returned as warnings. c may be nil.
// ErrParentNeedsCache: a parent given by ID with a write-only key is
// found in the local cache, which is not in use.
var ErrParentNeedsCache = errors.New("a parent snapshot given by ID with a write-only key needs the local cache")

func FindParent(ctx context.Context, r *repo.Repository, c *cache.Cache, host string, paths []string, explicit string) (*snapshot.Record, snapshot.TreeLoader, []error, error) {
	parent, trees, warnings, err := findParent(ctx, r, c, host, paths, explicit)
	if parent == nil {
		trees = nil
	}
	return parent, trees, warnings, err
}

// MaxParentSkew is how far in the future a snapshot may be dated and
// still be taken as the parent (clock adjustments of the host itself).
const MaxParentSkew = time.Hour

// FindKin picks, for a backup without a parent, this host's newest
// snapshot whose trees the local cache holds (of other paths, or the
// newest at all): the keys of its chunks let the backup recognise content
// this host stored before, such as a second copy of a tree or a tree
// backed up under a new path, without compressing and encrypting it to
// learn its ID (docs/FORMAT.md, "Deduplication"). Only the local cache is
// asked, so finding none costs nothing; nil if there is none.
func FindKin(c *cache.Cache, host string) (*snapshot.Record, snapshot.TreeLoader) {
	if c == nil {
		return nil, nil
	}
	all := c.Snapshots()
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Hostname != host {
			continue
		}
		if t := c.Trees(all[i].ID); t.Len() > 0 {
			return all[i], t
		}
	}
	return nil, nil
}

func findParent(ctx context.Context, r *repo.Repository, c *cache.Cache, host string, paths []string, explicit string) (*snapshot.Record, snapshot.TreeLoader, []error, error) {
	abs, err := CleanPaths(paths)
	if err != nil {
		return nil, nil, nil, err
	}
	var (
		parent   *snapshot.Record
		warnings []error
		denied   bool // the storage refuses to let us read snapshots
	)
	switch {
	case explicit != "":
		if r.WriteOnly() {
			if c == nil {
				return nil, nil, nil, ErrParentNeedsCache
			}
			for _, s := range c.Snapshots() {
				if strings.HasPrefix(s.ID.String(), explicit) {
					parent = s
				}
			}
			if parent == nil {
				return nil, nil, nil, fmt.Errorf("parent %s is not in the local cache (a write-only key cannot read it from the repository)", explicit)
			}
		} else if parent, err = snapshot.Find(ctx, r, explicit, snapshot.Filter{}); err != nil {
			return nil, nil, nil, err
		}
	case r.WriteOnly():
		if c != nil {
			parent = c.Latest(host, abs)
		}
	default:
		// This machine's own newest snapshot first: the local cache
		// holds only snapshots its backups wrote, while the repository
		// may hold a record another host wrote under this host's name
		// and paths (any write-only key can), whose unchanged-looking
		// files would carry that host's content into this snapshot
		// (docs/SECURITY.md, "Parent poisoning"). An older cached parent
		// than the repository's newest costs only reading more.
		if c != nil {
			if parent = c.Latest(host, abs); parent != nil {
				break
			}
		}
		all, errs, err := snapshot.List(ctx, r)
		if errors.Is(err, storage.ErrDenied) {
			// the storage lets this credential add backups but not
			// read them (a floe server backup token): as with a
			// write-only key, the parent comes from the local cache
			if c != nil {
				parent = c.Latest(host, abs)
			}
			denied = true
			break
		}
		if err != nil {
			return nil, nil, errs, err
		}
		warnings = errs
		future := time.Now().Add(MaxParentSkew)
		for i := len(all) - 1; i >= 0; i-- {
			if all[i].Hostname != host || !snapshot.SamePaths(all[i].Paths, abs) {
				continue
			}
			if all[i].Time.After(future) {
				// dated after now on this host's own clock: not
				// written by it
				warnings = append(warnings, fmt.Errorf("snapshot %s of host %s is dated %s, in the future: not used as the parent (see floe check)",
					all[i].ID.Short(), ui.Sanitize(host), all[i].Time.Format(time.RFC3339)))
				continue
			}
			parent = all[i]
			break
		}
	}
	if parent == nil {
		return nil, nil, warnings, nil
	}
	if c != nil {
		if t := c.Trees(parent.ID); t.Len() > 0 {
			return parent, fallbackTrees{t, r}, warnings, nil
		}
	}
	if r.WriteOnly() || denied {
		return nil, nil, warnings, nil // no trees to compare with: read everything
	}
	return parent, snapshot.NewReadAheadTrees(r), warnings, nil
}

// fallbackTrees reads trees from the cache, else from the repository.
type fallbackTrees struct {
	cached *cache.Trees
	r      *repo.Repository
}

// maxKinRefs bounds the chunk keys a backup learns from its kin (FindKin):
// about 100 bytes of memory each.
const maxKinRefs = 1 << 20

var errKinFull = errors.New("enough keys")

// rememberKin teaches the repository the (ID, key) pairs of the kin's
// chunks and trees, so that SaveBlob finds a chunk this host stored before
// by its key. A tree that cannot be loaded is skipped: this only saves
// work.
func (a *archiver) rememberKin(ctx context.Context) {
	kin, l := a.opts.Kin, a.opts.KinTrees
	if kin == nil || l == nil {
		return
	}
	seen := map[hash.ID]bool{}
	n := 0
	var visit func(ref hash.Ref) error
	visit = func(ref hash.Ref) error {
		if seen[ref.ID] {
			return nil
		}
		seen[ref.ID] = true
		t, err := l.LoadTree(ctx, ref)
		if err != nil {
			return nil
		}
		a.r.RememberRefs(repo.TreeBlob, ref)
		for _, node := range t.Nodes {
			switch node.Type {
			case snapshot.TypeFile:
				a.r.RememberRefs(repo.DataBlob, node.Content...)
				n += len(node.Content)
				if n >= maxKinRefs {
					return errKinFull
				}
			case snapshot.TypeDir:
				if !node.Subtree.IsNull() {
					if err := visit(node.Subtree); err != nil {
						return err
					}
				}
			}
		}
		return ctx.Err()
	}
	_ = visit(kin.Tree)
}

func (f fallbackTrees) LoadTree(ctx context.Context, id hash.Ref) (*snapshot.Tree, error) {
	if t, err := f.cached.LoadTree(ctx, id); err == nil {
		return t, nil
	}
	if f.r.WriteOnly() {
		return nil, repo.ErrWriteOnly
	}
	return snapshot.LoadTree(ctx, f.r, id)
}
