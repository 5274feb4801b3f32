// Package repo is the only package that knows the repository format
// (docs/FORMAT.md): config, keys, packs, index files, blobs, snapshot
// records. Everything above it asks for blobs by ID and hands it blobs to
// store.
package repo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/chunker"
	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// FormatVersion is the repository format this code reads and writes.
const FormatVersion = 2

// DefaultPackSize is the target pack size: large enough for object stores,
// small enough to hold a few in memory.
const DefaultPackSize = 16 << 20

// ErrNoRepository means there is no repository at the location.
var ErrNoRepository = errors.New("no repository there")

// NoRepository returns err as an ErrNoRepository (errors.Is), saying only
// what err says: err names the location and why it holds no repository,
// in one sentence rather than a chain of the same fact in three wordings.
func NoRepository(err error) error { return noRepositoryError{err} }

type noRepositoryError struct{ err error }

func (e noRepositoryError) Error() string        { return e.err.Error() }
func (e noRepositoryError) Unwrap() error        { return e.err }
func (e noRepositoryError) Is(target error) bool { return target == ErrNoRepository }

// ErrDamagedConfig is wrapped by errors about a config that does not
// verify or decrypt: nothing in the repository can be read then, whatever
// the credential.
var ErrDamagedConfig = errors.New("damaged")

// ChunkerConfig is the chunker block of the config.
type ChunkerConfig struct {
	Min  uint32 `json:"min"`
	Avg  uint32 `json:"avg"`
	Max  uint32 `json:"max"`
	Seed string `json:"seed"`
}

// Params converts to the chunker's parameters.
func (c ChunkerConfig) Params() (chunker.Params, error) {
	p := chunker.Params{Min: c.Min, Avg: c.Avg, Max: c.Max}
	seed, err := hex.DecodeString(c.Seed)
	if err != nil || len(seed) != 32 {
		return p, errors.New("config: chunker seed is not 32 hex-encoded bytes")
	}
	copy(p.Seed[:], seed)
	return p, p.Validate()
}

// Config is the repository config (docs/FORMAT.md "config").
type Config struct {
	Version     int           `json:"version"`
	ID          string        `json:"id"`
	Created     time.Time     `json:"created"`
	Chunker     ChunkerConfig `json:"chunker"`
	PackSize    int           `json:"pack_size"`
	Compression string        `json:"compression"`
	// CompressionLevel names the compress.Level every writer uses
	// (docs/FORMAT.md "config"); absent (written before levels existed)
	// means auto. Fixed at init: blob IDs depend on it.
	CompressionLevel string `json:"compression_level,omitempty"`
	// Authority is the hex Ed25519 public key that signs the config, gc
	// marks and the index files of full keys (docs/FORMAT.md "Authority").
	Authority string `json:"authority"`
}

const (
	adConfig     = "floe v2 config"
	domainConfig = "floe v2 config"
)

// InitOptions shape a new repository.
type InitOptions struct {
	// Chunker, if set, is copied (init --copy-chunker-params-from).
	Chunker *ChunkerConfig
	// ChunkIDKey, if set, is copied with the chunker parameters: chunk IDs
	// are keyed, so two repositories name the same content alike, and
	// copy deduplicates between them, only if they share this key.
	ChunkIDKey *crypto.Key
	// KDF overrides the argon2 parameters of passphrase keys (tests use cheap ones).
	KDF *crypto.KDFParams
	// Compression is the level every writer of the repository compresses
	// blobs at (the zero value is compress.Auto).
	Compression compress.Level
}

// Repository is an open repository.
type Repository struct {
	be      storage.Backend
	cfg     Config
	secrets Secrets
	keyID   string
	kdf     crypto.KDFParams

	ids     *hash.Keyed
	chunker chunker.Params
	// level is the config's compression level: every blob this process
	// stores is compressed at it, so that it gets the ID that every other
	// writer of the repository gives the same plaintext.
	level compress.Level

	idx *Index
	// indexCacheDir holds the index cache (SetIndexCache); "": none.
	indexCacheDir string
	indexSource   string // IndexSource
	// verifiesUploads: the backend checks uploaded blobs against their IDs
	// (storage.VerifiesUploads), so every index entry is trusted.
	verifiesUploads bool

	// runKeys maps a blob's type and key (K) to its ID, for the blobs this
	// process stored or was told of (RememberRefs): deduplication by K,
	// without compressing and encrypting to find the ID.
	runMu   sync.Mutex
	runKeys map[BlobHandle]hash.ID

	forgedMu sync.Mutex
	forged   []ForgedCopy

	wmu     sync.Mutex
	writers map[*Writer]struct{} // started and not yet ended
	saved   SaveStats            // of ended writers
}

// Init creates a new repository on be and its first key. With
// cred.Password nil it makes a key-file key and returns the KeyFile, which
// the caller must write (mode 0600).
func Init(ctx context.Context, be storage.Backend, cred Credential, opts InitOptions) (*Repository, *KeyFile, error) {
	secrets, err := newSecrets()
	if err != nil {
		return nil, nil, err
	}
	if opts.ChunkIDKey != nil {
		secrets.ChunkIDKey = *opts.ChunkIDKey
	}
	var idBytes [32]byte
	if _, err := rand.Read(idBytes[:]); err != nil {
		return nil, nil, err
	}
	cfg := Config{Version: FormatVersion, ID: hex.EncodeToString(idBytes[:]), Created: time.Now().UTC(),
		PackSize: DefaultPackSize, Compression: "zstd", CompressionLevel: opts.Compression.String(),
		Authority: hex.EncodeToString(secrets.AuthorityPublic[:])}
	if _, err := compress.ParseLevel(cfg.CompressionLevel); err != nil {
		return nil, nil, err
	}
	if opts.Chunker != nil {
		cfg.Chunker = *opts.Chunker
	} else {
		seed := crypto.RandomKey()
		p := chunker.DefaultParams(seed)
		cfg.Chunker = ChunkerConfig{Min: p.Min, Avg: p.Avg, Max: p.Max, Seed: hex.EncodeToString(seed[:])}
	}
	if _, err := cfg.Chunker.Params(); err != nil {
		return nil, nil, err
	}
	kdf := crypto.DefaultKDFParams()
	if opts.KDF != nil {
		kdf = *opts.KDF
	}
	// The key first, then the config: a repository whose config exists is
	// complete, and a crash in between leaves only an orphan key.
	rec, secret, err := newKeyRecord(secrets, cred.Password, false, kdf)
	if err != nil {
		return nil, nil, err
	}
	keyID, err := saveKeyRecord(ctx, be, rec)
	if err != nil {
		return nil, nil, err
	}
	plain, err := json.Marshal(cfg)
	if err != nil {
		return nil, nil, err
	}
	env := crypto.NewAEAD(secrets.ConfigKey).Seal(nil, plain, []byte(adConfig))
	env = append(env, secrets.AuthorityPrivate.Sign(domainConfig, env)...)
	if err := be.Save(ctx, storage.Handle{Type: storage.Config}, env); err != nil {
		return nil, nil, fmt.Errorf("save config: %w", err)
	}
	r, err := newRepository(be, cfg, secrets, keyID.String(), kdf)
	if err != nil {
		return nil, nil, err
	}
	r.idx = newIndex()
	var kf *KeyFile
	if secret != nil {
		kf = &KeyFile{Version: 1, Repository: cfg.ID, Key: keyID.String(), Secret: secret}
	}
	return r, kf, nil
}

func newRepository(be storage.Backend, cfg Config, secrets Secrets, keyID string, kdf crypto.KDFParams) (*Repository, error) {
	params, err := cfg.Chunker.Params()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if cfg.PackSize < 1<<20 || cfg.PackSize > 1<<30 {
		return nil, fmt.Errorf("config: pack size %d outside 1 MiB..1 GiB", cfg.PackSize)
	}
	// An unknown level is refused, not taken for auto: a writer that
	// compressed otherwise than the others would silently stop
	// deduplicating against them (a newer floe may know more levels).
	level, err := compress.ParseLevel(cfg.CompressionLevel)
	if err != nil {
		return nil, fmt.Errorf("config: %w; a newer floe may know it", err)
	}
	return &Repository{
		be: be, cfg: cfg, secrets: secrets, keyID: keyID, kdf: kdf,
		ids:             hash.NewKeyed(secrets.ChunkIDKey),
		chunker:         params,
		level:           level,
		runKeys:         map[BlobHandle]hash.ID{},
		verifiesUploads: storage.VerifiesUploads(be),
	}, nil
}

// OpenOptions tune Open.
type OpenOptions struct {
	// KDF is used for keys added later (tests use cheap parameters).
	KDF *crypto.KDFParams
	// Warn, if set, is told about keys that were skipped although they
	// might have matched (a key asking for too costly argon2 parameters)
	// when another key opened the repository.
	Warn func(error)
}

// Open opens the repository on be with cred. It does not load the index;
// call LoadIndex before working with blobs.
func Open(ctx context.Context, be storage.Backend, cred Credential, opts OpenOptions) (*Repository, error) {
	if cred.empty() {
		return nil, errors.New("no password or key file given")
	}
	cfgBytes, err := storage.LoadAll(ctx, be, storage.Handle{Type: storage.Config}, maxConfigSize)
	if err != nil {
		if storage.IsNotExist(err) {
			return nil, NoRepository(fmt.Errorf("no repository at %s: it has no config object", be.Location()))
		}
		return nil, fmt.Errorf("read config of %s: %w", be.Location(), err)
	}
	var ids []string
	if cred.KeyFile != nil {
		ids = []string{cred.KeyFile.Key}
	} else if ids, err = listKeyIDs(ctx, be); err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	var (
		secrets Secrets
		keyID   string
		found   bool
		sawV1   bool // a key record of format version 1
		errs    []error
	)
	for _, id := range ids {
		rec, err := loadKeyRecord(ctx, be, id)
		if errors.Is(err, ErrFormatV1) {
			// said only if no key opens: anyone who can write to keys/
			// could otherwise make a v2 repository unopenable
			sawV1 = true
			continue
		}
		if err != nil {
			if cred.KeyFile != nil && storage.IsNotExist(err) {
				return nil, fmt.Errorf("key %s of the key file is not in this repository (removed, or another repository): %w", shortName(id), ErrWrongKey)
			}
			errs = append(errs, err)
			continue
		}
		s, err := rec.open(cred)
		if err == nil {
			secrets, keyID, found = s, id, true
			break
		}
		if errors.Is(err, ErrKDFTooCostly) && opts.Warn != nil {
			opts.Warn(fmt.Errorf("key %s skipped: %w", shortName(id), err))
			continue
		}
		if !errors.Is(err, ErrWrongKey) {
			errs = append(errs, fmt.Errorf("key %s: %w", shortName(id), err))
		}
	}
	if !found {
		if sawV1 {
			return nil, fmt.Errorf("%s: %w", be.Location(), ErrFormatV1)
		}
		if len(errs) > 0 {
			return nil, fmt.Errorf("%w (also: %v)", ErrWrongKey, errors.Join(errs...))
		}
		return nil, ErrWrongKey
	}
	cfg, err := openConfig(cfgBytes, secrets)
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", be.Location(), err)
	}
	kdf := crypto.DefaultKDFParams()
	if opts.KDF != nil {
		kdf = *opts.KDF
	}
	return newRepository(be, cfg, secrets, keyID, kdf)
}

// openConfig verifies the authority's signature over the config (with the
// public key every key holds, so that a write-only key, which could make
// a new config of its own, cannot make one that others accept), then
// decrypts and decodes it.
func openConfig(data []byte, secrets Secrets) (Config, error) {
	var cfg Config
	if len(data) < crypto.Overhead+crypto.SignatureSize {
		return cfg, fmt.Errorf("%w (too short)", ErrDamagedConfig)
	}
	env, sig := data[:len(data)-crypto.SignatureSize], data[len(data)-crypto.SignatureSize:]
	if !secrets.AuthorityPublic.Verify(domainConfig, env, sig) {
		return cfg, fmt.Errorf("%w or forged (its signature does not verify)", ErrDamagedConfig)
	}
	plain, err := crypto.NewAEAD(secrets.ConfigKey).Open(nil, env, []byte(adConfig))
	if err != nil {
		return cfg, fmt.Errorf("%w (authentication failed)", ErrDamagedConfig)
	}
	if err := json.Unmarshal(plain, &cfg); err != nil {
		return cfg, fmt.Errorf("decode: %w", err)
	}
	if cfg.Version != FormatVersion {
		return cfg, fmt.Errorf("repository format version %d is not supported by this floe (it reads version %d)", cfg.Version, FormatVersion)
	}
	if cfg.Authority != hex.EncodeToString(secrets.AuthorityPublic[:]) {
		return cfg, errors.New("its authority key differs from the key's")
	}
	return cfg, nil
}

// Config returns the repository config.
func (r *Repository) Config() Config { return r.cfg }

// CompressionLevel returns the level every blob is stored at (the
// config's compression_level; auto when the config has none).
func (r *Repository) CompressionLevel() compress.Level { return r.level }

// Backend returns the storage the repository lives on.
func (r *Repository) Backend() storage.Backend { return r.be }

// KeyID returns the ID of the key in use.
func (r *Repository) KeyID() string { return r.keyID }

// WriteOnly reports whether the key in use is write-only.
func (r *Repository) WriteOnly() bool { return r.secrets.DataPrivate == nil }

// ChunkIDKey returns the key of chunk and tree IDs, for
// init --copy-chunker-params-from; it reveals no data.
func (r *Repository) ChunkIDKey() crypto.Key { return r.secrets.ChunkIDKey }

// ChunkerParams returns the repository's chunker parameters.
func (r *Repository) ChunkerParams() chunker.Params { return r.chunker }

// Authority reports whether the key in use holds the authority (a full
// key): it may manage keys, sign index files and gc marks.
func (r *Repository) Authority() bool { return r.secrets.AuthorityPrivate != nil }

// Index returns the in-memory index (loaded by LoadIndex).
func (r *Repository) Index() *Index { return r.idx }

// Close ends no Writer: call Finish or Abort first.
func (r *Repository) Close() error { return r.be.Close() }
