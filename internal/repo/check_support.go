package repo

// Helpers for `floe check` (internal/check): it needs to look at the format
// more closely than the other operations, but still only through this package.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// CheckKeyRecords loads every key record of the repository on be and
// returns the key IDs (sorted) and, for each key that cannot be loaded (its
// name does not match its content, or it does not decode), the reason. It
// needs no password, so it can explain why a repository cannot be opened.
func CheckKeyRecords(ctx context.Context, be storage.Backend) (ids []string, damaged map[string]error, err error) {
	ids, err = listKeyIDs(ctx, be)
	if err != nil {
		return nil, nil, fmt.Errorf("list keys: %w", err)
	}
	damaged = map[string]error{}
	for _, id := range ids {
		rec, err := loadKeyRecord(ctx, be, id)
		if err == nil {
			switch {
			case rec.KDF != kdfArgon2 && rec.KDF != kdfKeyFile:
				err = fmt.Errorf("key %s: unknown kdf %q", shortName(id), rec.KDF)
			case rec.KDF == kdfArgon2 && rec.Argon2 == nil:
				err = fmt.Errorf("key %s: no argon2 parameters", shortName(id))
			case rec.KDF == kdfArgon2 && checkKDFCost(*rec.Argon2) != nil:
				// Open skips it: nobody can use this key
				err = fmt.Errorf("key %s: %w", shortName(id), checkKDFCost(*rec.Argon2))
			case len(rec.Sealed) < crypto.Overhead:
				err = fmt.Errorf("key %s: sealed secrets too short", shortName(id))
			}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			damaged[id] = err
		}
	}
	return ids, damaged, nil
}

// CheckConfig reads the config again and verifies that it authenticates and
// decodes to the config the repository was opened with.
func (r *Repository) CheckConfig(ctx context.Context) error {
	data, err := storage.LoadAll(ctx, r.be, storage.Handle{Type: storage.Config}, maxConfigSize)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	plain, err := r.meta.Open(nil, data, []byte(adConfig))
	if err != nil {
		return fmt.Errorf("config is damaged: %w", err)
	}
	var cfg Config
	if err := json.Unmarshal(plain, &cfg); err != nil {
		return fmt.Errorf("config is damaged: %w", err)
	}
	if cfg.ID != r.cfg.ID || cfg.Version != r.cfg.Version || cfg.Chunker != r.cfg.Chunker ||
		cfg.PackSize != r.cfg.PackSize || cfg.Compression != r.cfg.Compression || !cfg.Created.Equal(r.cfg.Created) {
		return fmt.Errorf("config changed since the repository was opened")
	}
	return nil
}

// UseIndexFiles makes the in-memory index the union of the given index
// files minus the superseded ones, as LoadIndex does. check loads the index
// files one by one, to report damaged ones by name, and then hands over
// the good ones here instead of reading them all again.
func (r *Repository) UseIndexFiles(files map[hash.ID]*IndexFile) {
	idx := newIndex()
	ids := make([]hash.ID, 0, len(files))
	for id, f := range files {
		ids = append(ids, id)
		idx.files[id] = true
		for _, s := range f.Supersedes {
			idx.replaced[s] = true
		}
	}
	// a fixed order, so that which copy of a duplicated blob serves does not vary
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	for _, id := range ids {
		if !idx.replaced[id] {
			idx.add(files[id].Packs)
		}
	}
	r.idx = idx
}

// PackSizeFor returns the size in bytes of a pack that holds exactly blobs
// (contiguous from offset 0, as the pack writer lays them out): body,
// sealed header and trailer. check compares it with the stored size.
func PackSizeFor(blobs []PackedBlob) int64 {
	var body int64
	for _, b := range blobs {
		if e := int64(b.Offset) + int64(b.Length); e > body {
			body = e
		}
	}
	hdr := encodePackHeader(&PackHeader{Blobs: blobs})
	return body + int64(crypto.Overhead+len(hdr)+packTrailerLen)
}

// VerifyPackBlobs decrypts, decompresses and verifies the given blobs of a
// pack whose stored bytes are data (read whole, so that check hashes and
// verifies a pack with one read). ephemeral is the pack's public key from
// the index. fn is called for each blob in offset order with its plaintext
// (valid only during the call) or the reason it is damaged; a blob that
// lies outside data (a truncated pack) is reported as damaged. fn's error
// stops the walk.
func (r *Repository) VerifyPackBlobs(pack hash.ID, ephemeral crypto.PublicKey, data []byte, blobs []PackBlob, fn func(b PackBlob, plain []byte, err error) error) error {
	if r.WriteOnly() {
		return ErrWriteOnly
	}
	sortPackBlobs(blobs)
	var buf []byte
	for _, b := range blobs {
		var plain []byte
		var err error
		end := int64(b.Offset) + int64(b.Length)
		if end > int64(len(data)) {
			err = fmt.Errorf("%s blob %s: bytes %d..%d lie past the end of the %d-byte pack %s (truncated)",
				b.Handle.Type, b.Handle.ID.Short(), b.Offset, end, len(data), pack.Short())
		} else {
			plain, err = r.openBlob(b.Handle, pack, &ephemeral, data[b.Offset:end], b.RawLength, buf)
			if err == nil {
				buf = plain
			}
		}
		if ferr := fn(b, plain, err); ferr != nil {
			return ferr
		}
	}
	return nil
}
