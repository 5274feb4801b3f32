package repo

import (
	"context"
	"errors"
	"fmt"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

const adSnapshot = "floe v2 snapshot"

// maxSnapshotSize bounds a snapshot record read from storage (a record is
// a few KiB of JSON; its largest part, the files that changed while they
// were read, is capped by the backup).
const maxSnapshotSize = 64 << 20

// ErrDamagedSnapshot is wrapped by the errors of a snapshot record that was
// read but does not decode: damaged, over the size limit, or sealed to a
// key this repository does not have (a forgery by a write-only key). Such a
// record references nothing anyone can read, so prune and forget may skip
// it, and `floe repair` removes it. A record that could not be read at all
// (a storage error) does not wrap it: that one may well be fine.
var ErrDamagedSnapshot = errors.New("snapshot record does not decode")

// SaveSnapshotRecord seals a snapshot record (JSON from the snapshot
// package) to the data key and stores it. Write-only keys can do this.
func (r *Repository) SaveSnapshotRecord(ctx context.Context, plain []byte) (hash.ID, error) {
	eph, key, err := crypto.SealTo(r.secrets.DataPublic)
	if err != nil {
		return hash.ID{}, err
	}
	data := crypto.NewAEAD(key).Seal(append([]byte(nil), eph[:]...), plain, []byte(adSnapshot))
	id := hash.Sum(data)
	if err := r.be.Save(ctx, storage.Handle{Type: storage.Snapshot, Name: id.String()}, data); err != nil {
		return id, fmt.Errorf("save snapshot: %w", err)
	}
	return id, nil
}

// LoadSnapshotRecord reads and opens a snapshot record.
func (r *Repository) LoadSnapshotRecord(ctx context.Context, id hash.ID) ([]byte, error) {
	if r.WriteOnly() {
		return nil, ErrWriteOnly
	}
	h := storage.Handle{Type: storage.Snapshot, Name: id.String()}
	data, err := storage.LoadAll(ctx, r.be, h, maxSnapshotSize)
	if errors.Is(err, storage.ErrTooLarge) {
		return nil, fmt.Errorf("snapshot %s: %w: %w", id.Short(), ErrDamagedSnapshot, err)
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", id.Short(), err)
	}
	if hash.Sum(data) != id {
		return nil, fmt.Errorf("snapshot %s: %w: content does not match its name", id.Short(), ErrDamagedSnapshot)
	}
	if len(data) < 32+crypto.Overhead {
		return nil, fmt.Errorf("snapshot %s: %w: too short", id.Short(), ErrDamagedSnapshot)
	}
	var eph crypto.PublicKey
	copy(eph[:], data[:32])
	key, err := crypto.Unseal(*r.secrets.DataPrivate, r.secrets.DataPublic, eph)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w: %v", id.Short(), ErrDamagedSnapshot, err)
	}
	plain, err := crypto.NewAEAD(key).Open(nil, data[32:], []byte(adSnapshot))
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w: %v", id.Short(), ErrDamagedSnapshot, err)
	}
	return plain, nil
}

// RemoveSnapshot deletes a snapshot record (forget). Its data stays until
// prune collects it.
func (r *Repository) RemoveSnapshot(ctx context.Context, id hash.ID) error {
	if err := r.be.Remove(ctx, storage.Handle{Type: storage.Snapshot, Name: id.String()}); err != nil {
		return fmt.Errorf("remove snapshot %s: %w", id.Short(), err)
	}
	return nil
}

// ResolveSnapshotPrefix returns the snapshot whose ID starts with prefix.
func (r *Repository) ResolveSnapshotPrefix(ctx context.Context, prefix string) (hash.ID, error) {
	return r.resolveName(ctx, storage.Snapshot, prefix)
}
