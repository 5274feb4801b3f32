// Package hash names things: object names are the unkeyed BLAKE3-256 of their
// stored bytes; chunk and tree IDs are BLAKE3-256 keyed with the repository's
// chunk ID key (docs/FORMAT.md).
package hash

import (
	"encoding/hex"
	"fmt"
	"slices"
	"sync"

	"github.com/zeebo/blake3"
)

// Size is the length of an ID in bytes.
const Size = 32

// ID names an object or a blob.
type ID [Size]byte

// String returns the ID as 64 lower-case hex digits.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex digits, for display.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsNull reports whether id is all zeros (the zero value, "no ID").
func (id ID) IsNull() bool { return id == ID{} }

// MarshalText encodes the ID as hex, so IDs read well in JSON.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText decodes a hex ID.
func (id *ID) UnmarshalText(b []byte) error {
	parsed, err := Parse(string(b))
	if err != nil {
		return err
	}
	*id = parsed
	return nil
}

// Parse decodes a 64-digit hex ID.
func Parse(s string) (ID, error) {
	var id ID
	if len(s) != 2*Size {
		return id, fmt.Errorf("invalid ID %q: want %d hex digits", truncate(s), 2*Size)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("invalid ID %q: %w", truncate(s), err)
	}
	return id, nil
}

func truncate(s string) string {
	if len(s) > 70 {
		return s[:70] + "..."
	}
	return s
}

// Sum returns the unkeyed BLAKE3-256 of data: the name of a stored object.
func Sum(data []byte) ID {
	return ID(blake3.Sum256(data))
}

// Keyed computes keyed BLAKE3-256 IDs. It is safe for concurrent use.
type Keyed struct {
	key  [32]byte
	pool sync.Pool // *blake3.Hasher, reset between uses
}

// NewKeyed returns a hasher keyed with key.
func NewKeyed(key [32]byte) *Keyed { return &Keyed{key: key} }

// Sum returns the keyed BLAKE3-256 of data: the ID of a chunk or tree.
func (k *Keyed) Sum(data []byte) ID {
	h, _ := k.pool.Get().(*blake3.Hasher)
	if h == nil {
		var err error
		if h, err = blake3.NewKeyed(k.key[:]); err != nil {
			panic("blake3.NewKeyed with a 32-byte key: " + err.Error()) // cannot happen
		}
	} else {
		h.Reset()
	}
	h.Write(data)
	var id ID
	h.Sum(id[:0])
	k.pool.Put(h)
	return id
}

// SumZeros returns the keyed BLAKE3-256 of n zero bytes for each n of
// sizes (the IDs of zero chunks of those lengths). The zeros are hashed
// once, up to the longest: a hasher's Sum leaves its state as it was, so
// each shorter length's hash is read on the way. Hashing each length by
// itself cost a device restore a sixth of its CPU (an image's chunks have
// as many lengths as chunks: 1 GiB of zeros hashed for a 1.5 GiB image).
func (k *Keyed) SumZeros(sizes []uint32) map[uint32]ID {
	out := make(map[uint32]ID, len(sizes))
	sorted := slices.Clone(sizes)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	h, err := blake3.NewKeyed(k.key[:])
	if err != nil {
		panic("blake3.NewKeyed with a 32-byte key: " + err.Error()) // cannot happen
	}
	zeros := make([]byte, 64<<10)
	var at uint64
	for _, n := range sorted {
		for at < uint64(n) {
			m := min(uint64(n)-at, uint64(len(zeros)))
			h.Write(zeros[:m])
			at += m
		}
		var id ID
		h.Sum(id[:0])
		out[n] = id
	}
	return out
}

// Writer computes the unkeyed BLAKE3-256 of bytes written to it: the name
// of an object written piece by piece.
type Writer struct{ h *blake3.Hasher }

// NewWriter returns an empty Writer.
func NewWriter() *Writer { return &Writer{h: blake3.New()} }

// Reset empties w, so that one Writer (a large hasher state) can hash
// many objects in turn.
func (w *Writer) Reset() { w.h.Reset() }

// Write adds p; it never fails.
func (w *Writer) Write(p []byte) (int, error) { return w.h.Write(p) }

// Sum returns the hash of everything written.
func (w *Writer) Sum() ID {
	var id ID
	w.h.Sum(id[:0])
	return id
}

// RefSize is the encoded size of a Ref.
const RefSize = 2 * Size

// Ref refers to a blob in format v2 (docs/FORMAT.md "Blobs"): ID is the
// unkeyed hash of the blob's stored bytes (anyone can check a copy against
// it), Key is the keyed hash of its plaintext, from which the blob's
// encryption key derives. Whoever holds a Ref can decrypt the blob, so a
// Ref is only ever stored inside encrypted trees and snapshots, and its
// String shows the ID alone.
type Ref struct {
	ID  ID
	Key ID
}

// IsNull reports whether r is the zero Ref ("no blob").
func (r Ref) IsNull() bool { return r == Ref{} }

// String returns the ID only: the key must not reach logs or messages.
func (r Ref) String() string { return r.ID.String() }

// Short returns the first 8 hex digits of the ID, for display.
func (r Ref) Short() string { return r.ID.Short() }

// MarshalText encodes the Ref as 128 hex digits, ID first (snapshot
// records, which are encrypted, hold the root tree's Ref this way).
func (r Ref) MarshalText() ([]byte, error) {
	return []byte(hex.EncodeToString(r.ID[:]) + hex.EncodeToString(r.Key[:])), nil
}

// UnmarshalText decodes 128 hex digits.
func (r *Ref) UnmarshalText(b []byte) error {
	if len(b) != 2*RefSize {
		return fmt.Errorf("invalid blob reference: want %d hex digits, have %d", 2*RefSize, len(b))
	}
	var out Ref
	if _, err := hex.Decode(out.ID[:], b[:2*Size]); err != nil {
		return fmt.Errorf("invalid blob reference: %w", err)
	}
	if _, err := hex.Decode(out.Key[:], b[2*Size:]); err != nil {
		return fmt.Errorf("invalid blob reference: %w", err)
	}
	*r = out
	return nil
}

// AppendRef appends the 64-byte binary form of r (ID, then key).
func AppendRef(b []byte, r Ref) []byte {
	b = append(b, r.ID[:]...)
	return append(b, r.Key[:]...)
}

// RefFromBytes decodes the 64-byte binary form; b must hold RefSize bytes.
func RefFromBytes(b []byte) Ref {
	var r Ref
	copy(r.ID[:], b[:Size])
	copy(r.Key[:], b[Size:RefSize])
	return r
}

// SumTyped returns BLAKE3-256(t || data): the ID of a stored blob of type
// t (docs/FORMAT.md "Blobs"). The type byte keeps a data blob and a tree
// blob with the same stored bytes apart.
func SumTyped(t byte, data []byte) ID {
	h := typedPool.Get().(*blake3.Hasher)
	h.Reset()
	h.Write([]byte{t})
	h.Write(data)
	var id ID
	h.Sum(id[:0])
	typedPool.Put(h)
	return id
}

var typedPool = sync.Pool{New: func() any { return blake3.New() }}

// DeriveKey returns BLAKE3's derive_key(context, material), 32 bytes.
// Readers derive a key per blob (check --read-data: thousands a second),
// and blake3.DeriveKey allocates a hasher of several KiB and hashes the
// context each time; hashers made for a context are kept for reuse
// instead (Reset keeps their context key).
func DeriveKey(context string, material []byte) [32]byte {
	p, ok := derivePools.Load(context)
	if !ok {
		p, _ = derivePools.LoadOrStore(context, &sync.Pool{New: func() any { return blake3.NewDeriveKey(context) }})
	}
	pool := p.(*sync.Pool)
	h := pool.Get().(*blake3.Hasher)
	h.Reset()
	_, _ = h.Write(material)
	var out [32]byte
	h.Sum(out[:0])
	pool.Put(h)
	return out
}

// derivePools holds a pool of derive-key hashers per context (the
// contexts are a few constants).
var derivePools sync.Map
