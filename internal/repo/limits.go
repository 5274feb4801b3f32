package repo

import (
	"context"
	"fmt"

	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
)

// Size limits of the objects that are read whole (storage.LoadAll checks
// them before reading). No valid object comes near them; they exist so that
// a hostile or damaged storage (a 200 GB sparse file costs it nothing)
// cannot make the client allocate what it names.
const (
	// maxKeySize bounds keys/<id>: a key record is a few hundred bytes
	// of JSON.
	maxKeySize = 64 << 10
	// maxConfigSize bounds the config: a few hundred bytes of JSON.
	maxConfigSize = 64 << 10
	// maxIndexSize bounds index/<id>; writers split index files at
	// packfile.MaxIndexEntries entries, under 45 MiB.
	maxIndexSize = packfile.MaxIndexLen
)

// maxPackSize is the hard cap of a whole pack for any config: the cap of
// the largest pack_size (1 GiB), about 4.4 GiB.
var maxPackSize = packMaxFor(1 << 30)

// packMaxFor returns the most bytes a pack of a repository whose pack_size
// is packSize may have. pack_size is a target: a writer closes a pack once
// it reaches it, so a pack is at most pack_size plus one blob (the largest
// a tree blob, stored) plus its header; the cap allows four times pack_size
// so that a future writer that packs more loosely stays readable, and no
// reader ever allocates more than that for one pack.
func packMaxFor(packSize int) int64 {
	return 4*int64(packSize) + int64(packfile.MaxBlobLength(packfile.Tree)) + packfile.MaxHeaderLen + int64(packfile.TrailerLen)
}

// MaxPackSize returns the most bytes a whole pack of r may have: loads of
// whole packs (check --read-data, repair, prune's repack, import) refuse a
// larger one before reading it.
func (r *Repository) MaxPackSize() int64 { return packMaxFor(r.cfg.PackSize) }

// MaxSize returns the limit of a whole object of type t, for code that
// copies objects without decoding them (export, import); packs are
// bounded by the cap for any config (Repository.MaxPackSize is the
// repository's own).
func MaxSize(t storage.FileType) (int64, bool) {
	switch t {
	case storage.Key:
		return maxKeySize, true
	case storage.Config:
		return maxConfigSize, true
	case storage.Snapshot:
		return maxSnapshotSize, true
	case storage.GCMark:
		return maxGCMarkSize, true
	case storage.Index:
		return maxIndexSize, true
	case storage.Pack:
		// without the repository's config: the cap for any config
		return maxPackSize, true
	}
	return 0, false
}

// LoadWhole loads object h of be, bounded by MaxSize when its type has a
// limit (export and import copy objects of any type from storage they do
// not trust).
func LoadWhole(ctx context.Context, be storage.Backend, h storage.Handle) ([]byte, error) {
	limit, ok := MaxSize(h.Type)
	if !ok {
		return nil, fmt.Errorf("load %s: no size limit for %s", h, h.Type)
	}
	return storage.LoadAll(ctx, be, h, limit)
}
