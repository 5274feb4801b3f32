package transfer

import (
	"context"
	"errors"
	"sort"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

// verifyInto reads back the destination copies of res.Snapshots and
// records the outcome in res.
func verifyInto(ctx context.Context, r *repo.Repository, res *Result, workers int, prog *progress) error {
	var ids []hash.ID
	for _, s := range res.Snapshots {
		ids = append(ids, s.Destination)
	}
	blobs, bytes, err := Verify(ctx, r, ids, workers, prog.p)
	res.VerifiedBlobs, res.VerifiedBytes = blobs, bytes
	res.Verified = err == nil
	return err
}

// Verify reads back every tree and data blob of the snapshots ids of r
// (LoadBlob checks each against its ID), workers packs at a time, and
// returns how many data blobs and bytes it read. Problems (a snapshot,
// tree or blob missing, unreadable or not matching its ID) are returned
// together as a *VerifyError.
func Verify(ctx context.Context, r *repo.Repository, ids []hash.ID, workers int, p ui.Progress) (uint64, uint64, error) {
	if err := checkReadable(r, "verify"); err != nil {
		return 0, 0, err
	}
	prog := newProgress(p)
	prog.phase("verify")
	workers = max(workers, 1)
	var problems errorList
	var roots []hash.Ref
	for _, id := range ids {
		sn, err := snapshot.Load(ctx, r, id)
		if err != nil {
			if ctx.Err() != nil {
				return 0, 0, ctx.Err()
			}
			problems.add("snapshot %s: %v", id.Short(), err)
			continue
		}
		roots = append(roots, sn.Tree)
	}
	data := map[hash.Ref]bool{}
	err := walkTrees(ctx, r, roots, workers, func(id hash.Ref, t *snapshot.Tree) error {
		for _, n := range t.Nodes {
			for _, b := range n.Content {
				data[b] = true
			}
		}
		return nil
	}, func(id hash.Ref, err error) error {
		problems.add("tree %s: %v", id.Short(), err)
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	byPack := map[hash.ID][]repo.PackBlob{}
	for id := range data {
		h := repo.BlobHandle{Type: repo.DataBlob, ID: id.ID}
		loc, ok := r.Index().Lookup(h)
		if !ok {
			problems.add("data blob %s: %v", id.Short(), repo.ErrBlobNotFound)
			continue
		}
		byPack[loc.Pack] = append(byPack[loc.Pack], repo.PackBlob{Type: repo.DataBlob, Ref: id, Offset: loc.Offset, Length: loc.Length})
	}
	packs := make([]hash.ID, 0, len(byPack))
	for p := range byPack {
		packs = append(packs, p)
	}
	sort.Slice(packs, func(i, j int) bool { return string(packs[i][:]) < string(packs[j][:]) })
	var (
		mu           sync.Mutex
		nBlobs, nRaw uint64
	)
	par.For(ctx, len(packs), workers, func(_, i int) {
		p := packs[i]
		err := r.LoadBlobsFromPack(ctx, p, byPack[p], func(b repo.PackBlob, plain []byte, err error) error {
			if errors.Is(err, repo.ErrForged) {
				// this copy is forged or damaged: another may serve
				plain, err = r.LoadBlob(ctx, b.Type, b.Ref, nil)
			}
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				problems.add("%v", err) // names the blob and the pack
				return nil
			}
			mu.Lock()
			nBlobs++
			nRaw += uint64(len(plain))
			mu.Unlock()
			prog.verified(len(plain))
			return nil
		})
		if err != nil && ctx.Err() == nil {
			problems.add("pack %s: %v", p.Short(), err)
		}
	})
	if err := ctx.Err(); err != nil {
		return nBlobs, nRaw, err
	}
	if problems.count > 0 {
		return nBlobs, nRaw, &VerifyError{Repository: r.Backend().Location(), Problems: problems.list, Count: problems.count}
	}
	return nBlobs, nRaw, nil
}
