package repo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
)

// Packs sent but not yet indexed. A writer indexes the packs it stored
// every packsPerIndex packs and when it ends; a backup cut off by a
// server that went away for longer than the client retries could neither
// write that index file nor, for a pack whose answer never came, know
// that it arrived. The packs were stored all the same, and the next
// backup, which finds its chunks in no index, uploaded them again
// (e2e TestServerDownMidBackup). So a writer notes each pack in the
// local index cache directory before it sends it (unindexedDir, one file
// per pack: the pack's index entry, as an unsigned index file holds it)
// and removes the note once an index file lists the pack; the next
// writer (IndexUnindexed, at the start of a backup) looks for the packs
// of the notes left, indexes those that arrived and drops the others. A
// pack's name is the hash of its bytes, so a pack of that name holds the
// blobs its note lists, unless the note itself was damaged in the cache.

// unindexedDir is where the notes live, or "" without an index cache.
func (r *Repository) unindexedDir() string {
	if r.indexCacheDir == "" {
		return ""
	}
	return filepath.Join(r.indexCacheDir, "unindexed")
}

// noteUnindexed records p before it is sent. A note that cannot be
// written costs only the reuse it would allow.
func (r *Repository) noteUnindexed(p PackInfo) {
	dir := r.unindexedDir()
	if dir == "" {
		return
	}
	data, err := packfile.EncodeIndex(&IndexFile{Packs: []PackInfo{p}}, nil)
	if err != nil {
		return
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return
	}
	tmp := filepath.Join(dir, ".tmp-"+p.ID.String())
	if os.WriteFile(tmp, data, 0o600) == nil {
		os.Rename(tmp, filepath.Join(dir, p.ID.String()))
	}
}

// dropUnindexed removes the notes of packs an index file now lists.
func (r *Repository) dropUnindexed(packs []PackInfo) {
	dir := r.unindexedDir()
	if dir == "" {
		return
	}
	for _, p := range packs {
		os.Remove(filepath.Join(dir, p.ID.String()))
	}
}

// IndexUnindexed indexes the packs that an earlier writer noted as sent
// but could not index, if they arrived, and forgets the others. It
// returns how many packs it indexed. A backup calls it before it starts
// writing; errors of the notes themselves are not errors (a note that
// does not decode is dropped).
func (r *Repository) IndexUnindexed(ctx context.Context) (int, error) {
	dir := r.unindexedDir()
	if dir == "" {
		return 0, nil
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("unindexed packs: %w", err)
	}
	var found []PackInfo
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		id, err := hash.Parse(e.Name())
		if err != nil {
			os.Remove(path) // a temporary file left by a kill, or a stray
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		f, err := packfile.DecodeIndex(data)
		if err != nil || len(f.Packs) != 1 || f.Packs[0].ID != id || len(f.Supersedes) != 0 {
			os.Remove(path)
			continue
		}
		if r.idx.hasPack(id) {
			os.Remove(path) // indexed after all
			continue
		}
		_, err = r.be.Stat(ctx, storage.Handle{Type: storage.Pack, Name: id.String()})
		switch {
		case err == nil:
			found = append(found, f.Packs[0])
		case storage.IsNotExist(err):
			os.Remove(path) // never arrived: its blobs are stored again
		default:
			return 0, fmt.Errorf("unindexed packs: %w", err)
		}
	}
	if len(found) == 0 {
		return 0, nil
	}
	if err := r.indexPacks(ctx, found); err != nil {
		return 0, fmt.Errorf("index the packs an earlier backup sent: %w", err)
	}
	// trusted only where the storage checked the index file against the
	// packs (a floe server): a note is a file in the cache, and one
	// damaged there must not make a backup rely on a copy it has not
	// seen; elsewhere a backup reads such a copy once before relying on
	// it, as it does another host's
	r.idx.addPacks(found, r.verifiesUploads, true)
	return len(found), nil
}
