package backup

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/floe-backup/floe/internal/cache"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
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
		for i := len(all) - 1; i >= 0; i-- {
			if all[i].Hostname == host && snapshot.SamePaths(all[i].Paths, abs) {
				parent = all[i]
				break
			}
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
	return parent, snapshot.RepoTrees{Repo: r}, warnings, nil
}

// fallbackTrees reads trees from the cache, else from the repository.
type fallbackTrees struct {
	cached *cache.Trees
	r      *repo.Repository
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
