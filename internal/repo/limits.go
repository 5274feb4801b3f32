package repo

import (
	"context"

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
)

// MaxSize returns the limit of a whole object of type t, for code that
// copies objects without decoding them (export, import), and false for
// the types whose readers bound them otherwise (packs, index files).
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
	}
	return 0, false
}

// LoadWhole loads object h of be, bounded by MaxSize when its type has a
// limit (export and import copy objects of any type from storage they do
// not trust).
func LoadWhole(ctx context.Context, be storage.Backend, h storage.Handle) ([]byte, error) {
	if limit, ok := MaxSize(h.Type); ok {
		return storage.LoadAll(ctx, be, h, limit)
	}
	return be.Load(ctx, h, 0, 0)
}
