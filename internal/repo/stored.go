package repo

// Stored objects as they are: key records and the config read again,
// packs and their headers read raw, and blobs verified by hashing (check
// looks at the format more closely than other operations, but still only
// through this package).

import (
	"context"
	"errors"
	"fmt"

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

// PackHeader is the decoded header of a pack.
type PackHeader struct {
	Blobs []PackedBlob
}

// ErrDamagedPackHeader is matched (errors.Is) by the errors of
// LoadPackHeader that say the stored pack itself is bad (too short, no
// trailer, a header that does not decode), as opposed to a storage that
// could not be read: repair leaves such a pack unindexed for good, but
// retries one it could not read.
var ErrDamagedPackHeader = errors.New("pack header is damaged")

// headerError keeps the message of a header that does not decode and
// makes it match ErrDamagedPackHeader.
type headerError struct{ err error }

func (e headerError) Error() string        { return e.err.Error() }
func (e headerError) Unwrap() error        { return e.err }
func (e headerError) Is(target error) bool { return target == ErrDamagedPackHeader }

// LoadPackHeader reads and decodes the header of a pack of the given size.
func (r *Repository) LoadPackHeader(ctx context.Context, id hash.ID, size int64) (*PackHeader, error) {
	h := storage.Handle{Type: storage.Pack, Name: id.String()}
	if size < int64(packfile.TrailerLen)+2+packfile.UniqueLen {
		return nil, headerError{fmt.Errorf("pack %s: %d bytes is too short for a pack", id.Short(), size)}
	}
	trailer, err := r.be.Load(ctx, h, size-int64(packfile.TrailerLen), int64(packfile.TrailerLen))
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	n, err := packfile.HeaderLen(trailer, size)
	if err != nil {
		return nil, headerError{fmt.Errorf("pack %s: %w", id.Short(), err)}
	}
	body := size - int64(packfile.TrailerLen) - n
	hdr, err := r.be.Load(ctx, h, body, n)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	blobs, err := packfile.DecodeHeader(hdr, body)
	if err != nil {
		return nil, headerError{fmt.Errorf("pack %s: %w", id.Short(), err)}
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
