// Package crypto holds floe's cryptographic primitives: the AES-256-GCM
// envelope every stored object uses, X25519 sealing to the repository's data
// key (so write-only keys can add data they cannot read back), and argon2id
// key derivation from passphrases. docs/FORMAT.md is the specification.
package crypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// KeySize is the size of symmetric keys and X25519 keys.
const KeySize = 32

// NonceSize and TagSize make up the envelope overhead.
const (
	NonceSize = 12
	TagSize   = 16
	Overhead  = NonceSize + TagSize
)

// Key is a 32-byte symmetric key.
type Key [KeySize]byte

// PublicKey and PrivateKey are X25519 keys.
type (
	PublicKey  [KeySize]byte
	PrivateKey [KeySize]byte
)

// ErrAuth means an envelope failed authentication: the data was damaged or
// the key is wrong. Callers decide which to tell the user.
var ErrAuth = errors.New("authentication failed (data damaged or wrong key)")

// RandomKey returns a fresh random key.
func RandomKey() Key {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // the Go runtime never returns an error here
	}
	return k
}

// AEAD seals and opens envelopes: nonce || ciphertext || tag.
// It is safe for concurrent use.
type AEAD struct {
	gcm cipher.AEAD
}

// NewAEAD returns the AES-256-GCM envelope for key.
func NewAEAD(key Key) *AEAD {
	return &AEAD{gcm: newGCM(key)}
}

// Seal appends the envelope of plaintext, bound to ad, to dst.
func (a *AEAD) Seal(dst, plaintext, ad []byte) []byte {
	dst = growBy(dst, NonceSize+len(plaintext)+TagSize)
	nonce := dst[len(dst) : len(dst)+NonceSize]
	if _, err := rand.Read(nonce); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	dst = dst[:len(dst)+NonceSize]
	return a.gcm.Seal(dst, nonce, plaintext, ad)
}

// Open appends the plaintext of envelope to dst after verifying it against ad.
func (a *AEAD) Open(dst, envelope, ad []byte) ([]byte, error) {
	if len(envelope) < Overhead {
		return nil, fmt.Errorf("envelope of %d bytes is shorter than the %d-byte overhead: %w", len(envelope), Overhead, ErrAuth)
	}
	out, err := a.gcm.Open(dst, envelope[:NonceSize], envelope[NonceSize:], ad)
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}

func growBy(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), len(b)+n)
	copy(nb, b)
	return nb
}

// GenerateKeyPair returns a new X25519 key pair.
func GenerateKeyPair() (PublicKey, PrivateKey, error) {
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return PublicKey{}, PrivateKey{}, fmt.Errorf("generate X25519 key: %w", err)
	}
	var pub PublicKey
	var sec PrivateKey
	copy(pub[:], priv.PublicKey().Bytes())
	copy(sec[:], priv.Bytes())
	return pub, sec, nil
}

// SealTo derives the key for a new sealed object: a fresh ephemeral key pair is
// made, its public half returned to be stored, and its private half dropped.
// Only the holder of the private key for recipient can derive the key again.
func SealTo(recipient PublicKey) (ephemeral PublicKey, key Key, err error) {
	epub, epriv, err := GenerateKeyPair()
	if err != nil {
		return PublicKey{}, Key{}, err
	}
	key, err = deriveShared(epriv, recipient, epub, recipient)
	return epub, key, err
}

// Unseal derives the key of an object sealed to the public key of priv.
func Unseal(priv PrivateKey, pub PublicKey, ephemeral PublicKey) (Key, error) {
	return deriveShared(priv, ephemeral, ephemeral, pub)
}

func deriveShared(priv PrivateKey, peer PublicKey, ephemeral, recipient PublicKey) (Key, error) {
	p, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		return Key{}, fmt.Errorf("X25519 private key: %w", err)
	}
	q, err := ecdh.X25519().NewPublicKey(peer[:])
	if err != nil {
		return Key{}, fmt.Errorf("X25519 public key: %w", err)
	}
	shared, err := p.ECDH(q)
	if err != nil {
		// A low-order point: only a hostile or damaged object has one.
		return Key{}, fmt.Errorf("X25519: %w", ErrAuth)
	}
	salt := make([]byte, 0, 2*KeySize)
	salt = append(append(salt, ephemeral[:]...), recipient[:]...)
	raw, err := hkdf.Key(sha256.New, shared, salt, "floe v1 data key", KeySize)
	if err != nil {
		return Key{}, fmt.Errorf("hkdf: %w", err)
	}
	return Key(raw), nil
}

// PublicFromPrivate returns the public key of priv.
func PublicFromPrivate(priv PrivateKey) (PublicKey, error) {
	p, err := ecdh.X25519().NewPrivateKey(priv[:])
	if err != nil {
		return PublicKey{}, fmt.Errorf("X25519 private key: %w", err)
	}
	var pub PublicKey
	copy(pub[:], p.PublicKey().Bytes())
	return pub, nil
}

// KDFParams are argon2id parameters, stored with each passphrase key.
type KDFParams struct {
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
	Salt      []byte `json:"salt"`
}

// DefaultKDFParams returns the parameters for new keys with a random salt:
// OWASP's first argon2id recommendation (46 MiB, one pass), on two lanes.
// Every command pays this once, so it is a balance: about 0.1 s here, where
// restic's scrypt takes about 0.5 s and 60 MiB.
func DefaultKDFParams() KDFParams {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return KDFParams{Time: 1, MemoryKiB: 46 * 1024, Threads: 2, Salt: salt}
}

// Validate bounds parameters read from a repository, so that a hostile key
// file cannot make the client spend unbounded memory or time.
func (p KDFParams) Validate() error {
	switch {
	case p.Time < 1 || p.Time > 20:
		return fmt.Errorf("argon2 time %d outside 1..20", p.Time)
	case p.MemoryKiB < 8*1024 || p.MemoryKiB > 4*1024*1024:
		return fmt.Errorf("argon2 memory %d KiB outside 8 MiB..4 GiB", p.MemoryKiB)
	case p.Threads < 1 || p.Threads > 64:
		return fmt.Errorf("argon2 threads %d outside 1..64", p.Threads)
	case len(p.Salt) < 8 || len(p.Salt) > 64:
		return fmt.Errorf("argon2 salt of %d bytes outside 8..64", len(p.Salt))
	}
	return nil
}

// DeriveKey derives a key-encryption key from a passphrase.
func DeriveKey(passphrase []byte, p KDFParams) (Key, error) {
	if err := p.Validate(); err != nil {
		return Key{}, fmt.Errorf("key derivation parameters: %w", err)
	}
	prefaultArgon2(p.MemoryKiB, int(p.Threads)) // see prefault.go
	return Key(argon2.IDKey(passphrase, p.Salt, p.Time, p.MemoryKiB, p.Threads, KeySize)), nil
}

// Convergent encryption of blobs (docs/FORMAT.md "Blobs"): the key derives
// from the plaintext's keyed hash and is used for that one plaintext only,
// so a fixed nonce is safe, and the same plaintext always gives the same
// stored bytes, which is what lets anyone verify a copy by hashing it.

// BlobOverhead is what SealBlob adds: the GCM tag (no nonce is stored).
const BlobOverhead = TagSize

var zeroNonce [NonceSize]byte

// newGCM is AES-256-GCM with key, for the envelope and for blobs.
func newGCM(key Key) cipher.AEAD {
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic("aes.NewCipher with a 32-byte key: " + err.Error()) // cannot happen
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		panic("cipher.NewGCM: " + err.Error()) // cannot happen
	}
	return gcm
}

// SealBlob appends AES-256-GCM(key, zero nonce, plaintext, ad) to dst.
// key must be used for no other plaintext.
func SealBlob(dst []byte, key Key, plaintext, ad []byte) []byte {
	return newGCM(key).Seal(dst, zeroNonce[:], plaintext, ad)
}

// OpenBlob appends the plaintext of a SealBlob output to dst.
func OpenBlob(dst []byte, key Key, sealed, ad []byte) ([]byte, error) {
	if len(sealed) < BlobOverhead {
		return nil, fmt.Errorf("blob of %d bytes is shorter than the %d-byte tag: %w", len(sealed), BlobOverhead, ErrAuth)
	}
	out, err := newGCM(key).Open(dst, zeroNonce[:], sealed, ad)
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}

// Authority signatures (docs/FORMAT.md "Authority"): Ed25519 over a
// domain string and the message, so that a signature made for one kind of
// object (config, index file, gc mark) never verifies as another.

// SignatureSize is the size of an authority signature.
const SignatureSize = ed25519.SignatureSize

// AuthorityPublic is an Ed25519 public key; AuthoritySeed the private seed.
type (
	AuthorityPublic [ed25519.PublicKeySize]byte
	AuthoritySeed   [ed25519.SeedSize]byte
)

// GenerateAuthority returns a new Ed25519 key pair.
func GenerateAuthority() (AuthorityPublic, AuthoritySeed, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return AuthorityPublic{}, AuthoritySeed{}, fmt.Errorf("generate Ed25519 key: %w", err)
	}
	return AuthorityPublic(pub), AuthoritySeed(priv.Seed()), nil
}

// Public returns the public key of seed.
func (s AuthoritySeed) Public() AuthorityPublic {
	return AuthorityPublic(ed25519.NewKeyFromSeed(s[:]).Public().(ed25519.PublicKey))
}

func signedMessage(domain string, msg []byte) []byte {
	m := make([]byte, 0, len(domain)+1+len(msg))
	m = append(append(m, domain...), 0)
	return append(m, msg...)
}

// Sign signs msg in domain.
func (s AuthoritySeed) Sign(domain string, msg []byte) []byte {
	return ed25519.Sign(ed25519.NewKeyFromSeed(s[:]), signedMessage(domain, msg))
}

// Verify reports whether sig is a valid signature of msg in domain.
func (p AuthorityPublic) Verify(domain string, msg, sig []byte) bool {
	if len(sig) != SignatureSize {
		return false
	}
	return ed25519.Verify(ed25519.PublicKey(p[:]), signedMessage(domain, msg), sig)
}
