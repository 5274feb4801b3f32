package repo

// Stored objects as they are: key records and the config read again,
// packs and their headers read raw, and blobs verified by hashing (check
// looks at the format more closely than other operations, but still only
// through this package).

import (
	"context"
	"fmt"
	"sort"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
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

// CheckConfig reads the config again and verifies that it is signed by
// the authority, authenticates and decodes to the config the repository
// was opened with.
func (r *Repository) CheckConfig(ctx context.Context) error {
	data, err := storage.LoadAll(ctx, r.be, storage.Handle{Type: storage.Config}, maxConfigSize)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cfg, err := openConfig(data, r.secrets)
	if err != nil {
		return fmt.Errorf("config is %w", err)
	}
	if cfg.ID != r.cfg.ID || cfg.Version != r.cfg.Version || cfg.Chunker != r.cfg.Chunker ||
		cfg.PackSize != r.cfg.PackSize || cfg.Compression != r.cfg.Compression ||
		cfg.CompressionLevel != r.cfg.CompressionLevel || !cfg.Created.Equal(r.cfg.Created) {
		return fmt.Errorf("config changed since the repository was opened")
	}
	return nil
}

// UseIndexFiles makes the in-memory index the union of the given index
// files minus the superseded ones, as LoadIndex does. check loads the index
// files one by one, to report damaged ones by name, and then hands over
// the good ones here instead of reading them all again.
func (r *Repository) UseIndexFiles(files map[hash.ID]*IndexFile) {
	r.UseIndex(files, nil)
}

// PackSizeFor returns the size in bytes of a pack that holds exactly blobs
// (contiguous from offset 0, as the pack writer lays them out): body,
// header and trailer. check compares it with the stored size.
func PackSizeFor(blobs []PackedBlob) int64 {
	var body int64
	for _, b := range blobs {
		if e := int64(b.Offset) + int64(b.Length); e > body {
			body = e
		}
	}
	return int64(len(packfile.AppendHeader(nil, [packfile.UniqueLen]byte{}, blobs))) + body
}

// VerifyPackBlobs checks the given blobs of a pack whose stored bytes are
// data (read whole, so that check hashes a pack with one read) against
// their IDs, by hashing: no key is needed. fn is called for each blob in
// offset order with nil or the reason it is damaged or forged; a blob that
// lies outside data (a truncated pack) is reported as damaged. fn's error
// stops the walk.
func VerifyPackBlobs(pack hash.ID, data []byte, blobs []PackedBlob, fn func(b PackedBlob, err error) error) error {
	sorted := append([]PackedBlob(nil), blobs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Offset < sorted[j].Offset })
	for _, b := range sorted {
		var err error
		end := int64(b.Offset) + int64(b.Length)
		switch {
		case end > int64(len(data)):
			err = fmt.Errorf("%s blob %s: bytes %d..%d lie past the end of the %d-byte pack %s (truncated)",
				b.Type, b.ID.Short(), b.Offset, end, len(data), pack.Short())
		case packfile.BlobID(b.Type, data[b.Offset:end]) != b.ID:
			err = fmt.Errorf("%s blob %s in pack %s: %w", b.Type, b.ID.Short(), pack.Short(), ErrForged)
		}
		if ferr := fn(b, err); ferr != nil {
			return ferr
		}
	}
	return nil
}

// PackHeader is the decoded header of a pack.
type PackHeader struct {
	Blobs []PackedBlob
}

// LoadPackHeader reads and decodes the header of a pack of the given size.
func (r *Repository) LoadPackHeader(ctx context.Context, id hash.ID, size int64) (*PackHeader, error) {
	h := storage.Handle{Type: storage.Pack, Name: id.String()}
	if size < int64(packfile.TrailerLen)+2+packfile.UniqueLen {
		return nil, fmt.Errorf("pack %s: %d bytes is too short for a pack", id.Short(), size)
	}
	trailer, err := r.be.Load(ctx, h, size-int64(packfile.TrailerLen), int64(packfile.TrailerLen))
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	n, err := packfile.HeaderLen(trailer, size)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	body := size - int64(packfile.TrailerLen) - n
	hdr, err := r.be.Load(ctx, h, body, n)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	blobs, err := packfile.DecodeHeader(hdr, body)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	return &PackHeader{Blobs: blobs}, nil
}

// StoredBlobID returns the ID of a blob of type t whose stored bytes are
// c (packfile.BlobID).
func StoredBlobID(t BlobType, c []byte) hash.ID { return packfile.BlobID(t, c) }

// LoadPack reads a whole pack.
func (r *Repository) LoadPack(ctx context.Context, id hash.ID) ([]byte, error) {
	data, err := storage.LoadAll(ctx, r.be, storage.Handle{Type: storage.Pack, Name: id.String()}, r.MaxPackSize())
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	return data, nil
}

// LoadRawBlobs reads the stored bytes of the given blobs of one pack,
// calling fn for each in offset order with them (valid only during the
// call) or with an error; bytes that do not hash to the blob's ID give an
// error wrapping ErrForged. fn's error stops the walk.
func (r *Repository) LoadRawBlobs(ctx context.Context, pack hash.ID, blobs []PackedBlob, fn func(b PackedBlob, sealed []byte, err error) error) error {
	sorted := append([]PackedBlob(nil), blobs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Offset < sorted[j].Offset })
	h := storage.Handle{Type: storage.Pack, Name: pack.String()}
	for _, b := range sorted {
		c, err := r.be.Load(ctx, h, int64(b.Offset), int64(b.Length))
		if err == nil && packfile.BlobID(b.Type, c) != b.ID {
			err = fmt.Errorf("%s blob %s in pack %s: %w", b.Type, b.ID.Short(), pack.Short(), ErrForged)
		}
		if ferr := fn(b, c, err); ferr != nil {
			return ferr
		}
	}
	return nil
}

// OpenStoredBlob decrypts and verifies the stored bytes c of a blob
// against ref (check --read-data: it read the pack already), returning the
// plaintext appended to buf[:0]. It checks the ID first.
func (r *Repository) OpenStoredBlob(t BlobType, ref hash.Ref, c, buf []byte) ([]byte, error) {
	if r.WriteOnly() {
		return nil, ErrWriteOnly
	}
	if packfile.BlobID(t, c) != ref.ID {
		return nil, fmt.Errorf("%s blob %s: %w", t, ref.Short(), ErrForged)
	}
	return r.openBlob(t, ref, c, buf)
}
