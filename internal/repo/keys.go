package repo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"sort"
	"time"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// ErrFormatV1 means the repository was made by a floe that wrote format
// version 1, which this floe no longer reads.
var ErrFormatV1 = errors.New("this repository has format version 1, which this floe does not read (it reads version 2, whose blobs anyone can verify and whose marks only full keys can sign)")

// ErrWrongKey means no key of the repository opens with the given passphrase
// or key file.
var ErrWrongKey = errors.New("wrong password or key file: no key of this repository opens with it")

// ErrWriteOnly means the operation needs to decrypt stored data, which a
// write-only key cannot.
var ErrWriteOnly = errors.New("this key is write-only: it can add backups but not read them")

// ErrNotPassphrase means a passphrase was to be changed, but the key in
// use is a key file.
var ErrNotPassphrase = errors.New("the key in use is a key file, not a passphrase")

// ErrNotAuthority means the operation needs the authority only full keys
// hold: managing keys, signing gc marks.
var ErrNotAuthority = fmt.Errorf("only a full key can do this: %w", ErrWriteOnly)

// Secrets are the master secrets of a repository (docs/FORMAT.md "Secrets").
type Secrets struct {
	ChunkIDKey       crypto.Key
	ConfigKey        crypto.Key
	DataPublic       crypto.PublicKey
	DataPrivate      *crypto.PrivateKey // nil for write-only keys
	AuthorityPublic  crypto.AuthorityPublic
	AuthorityPrivate *crypto.AuthoritySeed // nil for write-only keys
}

type secretsJSON struct {
	ChunkIDKey       []byte `json:"chunk_id_key"`
	ConfigKey        []byte `json:"config_key"`
	DataPublic       []byte `json:"data_public"`
	DataPrivate      []byte `json:"data_private,omitempty"`
	AuthorityPublic  []byte `json:"authority_public"`
	AuthorityPrivate []byte `json:"authority_private,omitempty"`
}

func newSecrets() (Secrets, error) {
	pub, priv, err := crypto.GenerateKeyPair()
	if err != nil {
		return Secrets{}, err
	}
	apub, apriv, err := crypto.GenerateAuthority()
	if err != nil {
		return Secrets{}, err
	}
	return Secrets{ChunkIDKey: crypto.RandomKey(), ConfigKey: crypto.RandomKey(), DataPublic: pub, DataPrivate: &priv,
		AuthorityPublic: apub, AuthorityPrivate: &apriv}, nil
}

// WriteOnly returns the secrets without the private keys.
func (s Secrets) WriteOnly() Secrets {
	s.DataPrivate = nil
	s.AuthorityPrivate = nil
	return s
}

func (s Secrets) marshal() []byte {
	j := secretsJSON{ChunkIDKey: s.ChunkIDKey[:], ConfigKey: s.ConfigKey[:], DataPublic: s.DataPublic[:], AuthorityPublic: s.AuthorityPublic[:]}
	if s.DataPrivate != nil {
		j.DataPrivate = s.DataPrivate[:]
	}
	if s.AuthorityPrivate != nil {
		j.AuthorityPrivate = s.AuthorityPrivate[:]
	}
	b, _ := json.Marshal(j) // cannot fail: only byte slices
	return b
}

func unmarshalSecrets(b []byte) (Secrets, error) {
	var j secretsJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return Secrets{}, fmt.Errorf("decode key secrets: %w", err)
	}
	if len(j.ChunkIDKey) != 32 || len(j.ConfigKey) != 32 || len(j.DataPublic) != 32 || len(j.AuthorityPublic) != 32 ||
		(j.DataPrivate != nil && len(j.DataPrivate) != 32) || (j.AuthorityPrivate != nil && len(j.AuthorityPrivate) != 32) ||
		(j.DataPrivate == nil) != (j.AuthorityPrivate == nil) {
		return Secrets{}, errors.New("decode key secrets: a key has the wrong length or is missing")
	}
	var s Secrets
	copy(s.ChunkIDKey[:], j.ChunkIDKey)
	copy(s.ConfigKey[:], j.ConfigKey)
	copy(s.DataPublic[:], j.DataPublic)
	copy(s.AuthorityPublic[:], j.AuthorityPublic)
	if j.DataPrivate != nil {
		var p crypto.PrivateKey
		copy(p[:], j.DataPrivate)
		pub, err := crypto.PublicFromPrivate(p)
		if err != nil || pub != s.DataPublic {
			return Secrets{}, errors.New("decode key secrets: data private key does not match the public key")
		}
		s.DataPrivate = &p
		var a crypto.AuthoritySeed
		copy(a[:], j.AuthorityPrivate)
		if a.Public() != s.AuthorityPublic {
			return Secrets{}, errors.New("decode key secrets: authority private key does not match the public key")
		}
		s.AuthorityPrivate = &a
	}
	return s, nil
}

// KeyRecord is the plaintext JSON stored under keys/<id>.
type KeyRecord struct {
	Version   int               `json:"version"`
	Created   time.Time         `json:"created"`
	Hostname  string            `json:"hostname"`
	Username  string            `json:"username"`
	WriteOnly bool              `json:"write_only"`
	KDF       string            `json:"kdf"` // "argon2id" or "keyfile"
	Argon2    *crypto.KDFParams `json:"argon2,omitempty"`
	Sealed    []byte            `json:"sealed"`
}

const (
	kdfArgon2  = "argon2id"
	kdfKeyFile = "keyfile"
	adKey      = "floe v2 key"
	// keyVersion is the version of key records (that of the format).
	keyVersion = 2
)

// KeyFile is the local file that opens a "keyfile" key (mode 0600).
type KeyFile struct {
	Version    int    `json:"version"`
	Repository string `json:"repository"`
	Key        string `json:"key"`
	Secret     []byte `json:"secret"`
}

// ReadKeyFile loads and validates a key file.
func ReadKeyFile(path string) (*KeyFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key file: %w", err)
	}
	var kf KeyFile
	if err := json.Unmarshal(b, &kf); err != nil {
		return nil, fmt.Errorf("key file %s is not a floe key file: %w", path, err)
	}
	if kf.Version != 1 || len(kf.Secret) != crypto.KeySize {
		return nil, fmt.Errorf("key file %s is not a floe v1 key file", path)
	}
	if _, err := hash.Parse(kf.Key); err != nil {
		return nil, fmt.Errorf("key file %s: bad key id: %w", path, err)
	}
	return &kf, nil
}

// WriteKeyFile writes kf to path with mode 0600, refusing to overwrite.
func WriteKeyFile(path string, kf *KeyFile) error {
	b, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create key file: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write key file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write key file %s: %w", path, err)
	}
	return f.Close()
}

// Credential is what opens (or creates) a key: a passphrase or a key file.
type Credential struct {
	Password []byte
	KeyFile  *KeyFile
}

func (c Credential) empty() bool { return c.Password == nil && c.KeyFile == nil }

// newKeyRecord seals secrets under a new passphrase key, or, when password is
// nil, under a new random key-file secret which it returns.
func newKeyRecord(secrets Secrets, password []byte, writeOnly bool, kdf crypto.KDFParams) (*KeyRecord, []byte, error) {
	rec := &KeyRecord{Version: keyVersion, Created: time.Now().UTC(), WriteOnly: writeOnly}
	rec.Hostname, _ = os.Hostname()
	if u, err := user.Current(); err == nil {
		rec.Username = u.Username
	}
	var kek crypto.Key
	var fileSecret []byte
	if password != nil {
		rec.KDF = kdfArgon2
		rec.Argon2 = &kdf
		var err error
		if kek, err = crypto.DeriveKey(password, kdf); err != nil {
			return nil, nil, err
		}
	} else {
		rec.KDF = kdfKeyFile
		kek = crypto.RandomKey()
		fileSecret = kek[:]
	}
	if writeOnly {
		secrets = secrets.WriteOnly()
	}
	rec.Sealed = crypto.NewAEAD(kek).Seal(nil, secrets.marshal(), []byte(adKey))
	return rec, fileSecret, nil
}

// ErrKDFTooCostly is wrapped by the error of a key record whose argon2
// parameters cost more than any key floe creates. Anyone who can write to
// keys/ can add such a record; honouring it would make every open of the
// repository spend its time and memory (1 GiB x 20 passes: 29 s), so
// Open skips it with a warning and tries the next key.
var ErrKDFTooCostly = errors.New("argon2 parameters cost more than any key floe creates")

// checkKDFCost bounds a stored key's argon2 parameters by those that
// `floe init` and `floe key add` create (crypto.DefaultKDFParams); cheaper
// ones (the test suite's) are fine.
func checkKDFCost(p crypto.KDFParams) error {
	most := crypto.DefaultKDFParams()
	if p.Time > most.Time || p.MemoryKiB > most.MemoryKiB || p.Threads > most.Threads {
		return fmt.Errorf("%w: time %d, memory %d KiB, threads %d; the most floe asks for is time %d, memory %d KiB, threads %d",
			ErrKDFTooCostly, p.Time, p.MemoryKiB, p.Threads, most.Time, most.MemoryKiB, most.Threads)
	}
	return nil
}

func (rec *KeyRecord) open(cred Credential) (Secrets, error) {
	var kek crypto.Key
	switch {
	case rec.KDF == kdfArgon2 && cred.Password != nil:
		if rec.Argon2 == nil {
			return Secrets{}, errors.New("key record has no argon2 parameters")
		}
		if err := checkKDFCost(*rec.Argon2); err != nil {
			return Secrets{}, err
		}
		k, err := crypto.DeriveKey(cred.Password, *rec.Argon2)
		if err != nil {
			return Secrets{}, err
		}
		kek = k
	case rec.KDF == kdfKeyFile && cred.KeyFile != nil:
		copy(kek[:], cred.KeyFile.Secret)
	default:
		return Secrets{}, ErrWrongKey
	}
	plain, err := crypto.NewAEAD(kek).Open(nil, rec.Sealed, []byte(adKey))
	if err != nil {
		return Secrets{}, ErrWrongKey
	}
	s, err := unmarshalSecrets(plain)
	if err != nil {
		return Secrets{}, err
	}
	if rec.WriteOnly {
		s = s.WriteOnly()
	}
	return s, nil
}

func saveKeyRecord(ctx context.Context, be storage.Backend, rec *KeyRecord) (hash.ID, error) {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return hash.ID{}, err
	}
	id := hash.Sum(b)
	if err := be.Save(ctx, storage.Handle{Type: storage.Key, Name: id.String()}, b); err != nil {
		return hash.ID{}, fmt.Errorf("save key: %w", err)
	}
	return id, nil
}

func loadKeyRecord(ctx context.Context, be storage.Backend, id string) (*KeyRecord, error) {
	b, err := storage.LoadAll(ctx, be, storage.Handle{Type: storage.Key, Name: id}, maxKeySize)
	if err != nil {
		return nil, err
	}
	if hash.Sum(b).String() != id {
		return nil, fmt.Errorf("key %s: content does not match its name (damaged)", shortName(id))
	}
	var rec KeyRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("key %s: %w", shortName(id), err)
	}
	if rec.Version == 1 {
		return nil, fmt.Errorf("key %s: %w", shortName(id), ErrFormatV1)
	}
	if rec.Version != keyVersion {
		return nil, fmt.Errorf("key %s: unsupported version %d", shortName(id), rec.Version)
	}
	return &rec, nil
}

func shortName(name string) string {
	if len(name) > 8 {
		return name[:8]
	}
	return name
}

// KeyInfo describes a key for `key list`.
type KeyInfo struct {
	ID        string    `json:"id"`
	Current   bool      `json:"current"`
	WriteOnly bool      `json:"write_only"`
	Kind      string    `json:"kind"`
	Hostname  string    `json:"hostname"`
	Username  string    `json:"username"`
	Created   time.Time `json:"created"`
}

func listKeyIDs(ctx context.Context, be storage.Backend) ([]string, error) {
	var ids []string
	err := be.List(ctx, storage.Key, func(fi storage.FileInfo) error {
		ids = append(ids, fi.Name)
		return nil
	})
	sort.Strings(ids)
	return ids, err
}

// Keys lists the repository's keys.
func (r *Repository) Keys(ctx context.Context) ([]KeyInfo, error) {
	ids, err := listKeyIDs(ctx, r.be)
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	var out []KeyInfo
	for _, id := range ids {
		rec, err := loadKeyRecord(ctx, r.be, id)
		if err != nil {
			return nil, err
		}
		out = append(out, KeyInfo{ID: id, Current: id == r.keyID, WriteOnly: rec.WriteOnly, Kind: rec.KDF,
			Hostname: rec.Hostname, Username: rec.Username, Created: rec.Created})
	}
	return out, nil
}

// AddKey adds a key: with a password, a passphrase key; without, a key-file
// key whose KeyFile is returned (the caller writes it, mode 0600). A
// key can only be added with a full key: a write-only key holds no
// authority (docs/FORMAT.md "Authority").
func (r *Repository) AddKey(ctx context.Context, password []byte, writeOnly bool) (string, *KeyFile, error) {
	if !r.Authority() {
		return "", nil, fmt.Errorf("add a key: %w", ErrNotAuthority)
	}
	rec, secret, err := newKeyRecord(r.secrets, password, writeOnly, r.kdf)
	if err != nil {
		return "", nil, err
	}
	id, err := saveKeyRecord(ctx, r.be, rec)
	if err != nil {
		return "", nil, err
	}
	var kf *KeyFile
	if secret != nil {
		kf = &KeyFile{Version: 1, Repository: r.cfg.ID, Key: id.String(), Secret: secret}
	}
	return id.String(), kf, nil
}

// RemoveKey removes key id (or a unique prefix). It needs a full key. The
// key in use cannot be removed, nor the last full key, so a repository
// never loses the keys that read it this way.
func (r *Repository) RemoveKey(ctx context.Context, prefix string) (string, error) {
	if !r.Authority() {
		return "", fmt.Errorf("remove a key: %w", ErrNotAuthority)
	}
	ids, err := listKeyIDs(ctx, r.be)
	if err != nil {
		return "", err
	}
	id, err := uniquePrefix(ids, prefix, "key")
	if err != nil {
		return "", err
	}
	if id == r.keyID {
		return "", errors.New("refusing to remove the key in use; open the repository with another key to remove this one")
	}
	rec, err := loadKeyRecord(ctx, r.be, id)
	if err == nil && !rec.WriteOnly {
		full := 0
		for _, other := range ids {
			if o, err := loadKeyRecord(ctx, r.be, other); err == nil && !o.WriteOnly {
				full++
			}
		}
		if full <= 1 {
			return "", errors.New("refusing to remove the last full key: without one, nobody could read the backups")
		}
	}
	if err := r.be.Remove(ctx, storage.Handle{Type: storage.Key, Name: id}); err != nil {
		return "", fmt.Errorf("remove key %s: %w", shortName(id), err)
	}
	return id, nil
}

// ChangePassword replaces the current passphrase key by one with a new
// passphrase: the new key is written before the old one is removed.
func (r *Repository) ChangePassword(ctx context.Context, newPassword []byte) (string, error) {
	if !r.Authority() {
		return "", fmt.Errorf("change a key's passphrase: %w", ErrNotAuthority)
	}
	old, err := loadKeyRecord(ctx, r.be, r.keyID)
	if err != nil {
		return "", err
	}
	if old.KDF != kdfArgon2 {
		return "", ErrNotPassphrase
	}
	rec, _, err := newKeyRecord(r.secrets, newPassword, old.WriteOnly, r.kdf)
	if err != nil {
		return "", err
	}
	id, err := saveKeyRecord(ctx, r.be, rec)
	if err != nil {
		return "", err
	}
	if err := r.be.Remove(ctx, storage.Handle{Type: storage.Key, Name: r.keyID}); err != nil {
		return "", fmt.Errorf("new key %s saved, but removing the old key failed: %w", id.Short(), err)
	}
	r.keyID = id.String()
	return r.keyID, nil
}

// ErrUnknownID means an ID (or prefix) given by the user names nothing:
// a mistake in the input rather than damage. It is also
// storage.ErrNotExist (errors.Is).
var ErrUnknownID = errors.New("no object with that ID")

type unknownIDError string

func (e unknownIDError) Error() string { return string(e) }
func (e unknownIDError) Is(target error) bool {
	return target == ErrUnknownID || target == storage.ErrNotExist
}

func uniquePrefix(ids []string, prefix, what string) (string, error) {
	if prefix == "" {
		return "", fmt.Errorf("empty %s ID", what)
	}
	var match string
	n := 0
	for _, id := range ids {
		if len(id) >= len(prefix) && id[:len(prefix)] == prefix {
			match = id
			n++
		}
	}
	switch n {
	case 0:
		return "", unknownIDError(fmt.Sprintf("no %s with ID %q in the repository", what, prefix))
	case 1:
		return match, nil
	default:
		return "", fmt.Errorf("%s ID prefix %q is ambiguous (%d matches); give more digits", what, prefix, n)
	}
}
