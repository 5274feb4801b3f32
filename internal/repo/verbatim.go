package repo

// Moving packs, index files and snapshot records between repositories as
// they are (copy, export and import), still only through this package.

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
)

// SameSecrets reports whether r and o hold the same master secrets (chunk
// ID key, config key, data key pair and authority): then every stored
// object of one is readable by the other, and packs, index files and
// snapshot records can be copied verbatim. A repository exported with
// `floe export` shares the secrets of its source.
func (r *Repository) SameSecrets(o *Repository) bool {
	return subtle.ConstantTimeCompare(r.secrets.ChunkIDKey[:], o.secrets.ChunkIDKey[:]) == 1 &&
		subtle.ConstantTimeCompare(r.secrets.ConfigKey[:], o.secrets.ConfigKey[:]) == 1 &&
		r.secrets.DataPublic == o.secrets.DataPublic && r.secrets.AuthorityPublic == o.secrets.AuthorityPublic
}

// SameChunkIDKey reports whether r and o name plaintexts alike: then a
// blob's stored bytes, and so its Ref, are the same in both, and copy can
// move blobs verbatim.
func (r *Repository) SameChunkIDKey(o *Repository) bool {
	return subtle.ConstantTimeCompare(r.secrets.ChunkIDKey[:], o.secrets.ChunkIDKey[:]) == 1
}

// PackInfoFromBytes checks that data, the whole stored bytes of pack id,
// hash to its name and that every blob hashes to its ID, and returns the
// pack's blob list from its header. Export and import use it to index the
// packs they copy without a second read.
func PackInfoFromBytes(id hash.ID, data []byte) (PackInfo, error) {
	if hash.Sum(data) != id {
		return PackInfo{}, fmt.Errorf("pack %s: content does not match its name (damaged)", id.Short())
	}
	blobs, bad, err := packfile.Verify(data)
	if err != nil {
		return PackInfo{}, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	if len(bad) > 0 {
		return PackInfo{}, fmt.Errorf("pack %s: %s blob %s: %w", id.Short(), bad[0].Type, bad[0].ID.Short(), ErrForged)
	}
	return PackInfo{ID: id, Blobs: blobs}, nil
}

// SaveIndexFileTo stores an index file on be (r's backend, or another
// repository with the same secrets: an export), signed when r's key is a
// full key. An index file that exists already (the same content) is not
// an error.
func (r *Repository) SaveIndexFileTo(ctx context.Context, be storage.Backend, f *IndexFile) (hash.ID, error) {
	data, err := r.encodeIndexFile(f)
	if err != nil {
		return hash.ID{}, err
	}
	if len(data) > maxIndexSize {
		// readers would refuse it: a writer must split (SaveIndexFiles)
		return hash.ID{}, fmt.Errorf("save index: %d bytes is more than the limit of %d bytes for an index file", len(data), maxIndexSize)
	}
	id := hash.Sum(data)
	if err := be.Save(ctx, storage.Handle{Type: storage.Index, Name: id.String()}, data); err != nil && !isExist(err) {
		return id, fmt.Errorf("save index %s: %w", id.Short(), err)
	}
	return id, nil
}

// AddIndexFile adds the packs of an index file that was stored directly
// (SaveIndexFile after copying packs verbatim) to the in-memory index.
func (r *Repository) AddIndexFile(id hash.ID, f *IndexFile) {
	r.idx.mu.Lock()
	r.idx.files[id] = true
	r.idx.mu.Unlock()
	r.idx.addPacks(f.Packs, f.EntriesTrusted(), false)
}

func isExist(err error) bool { return errors.Is(err, storage.ErrExist) }

// Sibling opens the repository on be whose config was sealed and signed
// with r's secrets (an export being written), with r's secrets and key,
// so that it can be written through the ordinary write path (SaveBlob,
// Flush, signed index files). Its index is not loaded.
func (r *Repository) Sibling(ctx context.Context, be storage.Backend) (*Repository, error) {
	data, err := storage.LoadAll(ctx, be, storage.Handle{Type: storage.Config}, maxConfigSize)
	if err != nil {
		return nil, fmt.Errorf("read config of %s: %w", be.Location(), err)
	}
	cfg, err := openConfig(data, r.secrets)
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", be.Location(), err)
	}
	if cfg.ID != r.cfg.ID {
		return nil, fmt.Errorf("%s holds repository %s, not %s", be.Location(), cfg.ID, r.cfg.ID)
	}
	return newRepository(be, cfg, r.secrets, r.keyID, r.kdf)
}
