// Package hash names things: object names are the unkeyed BLAKE3-256 of their
// stored bytes; chunk and tree IDs are BLAKE3-256 keyed with the repository's
// chunk ID key (docs/FORMAT.md).
package hash

import (
	"encoding/hex"
	"fmt"
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

// Writer computes the unkeyed BLAKE3-256 of bytes written to it: the name
// of an object written piece by piece.
type Writer struct{ h *blake3.Hasher }

// NewWriter returns an empty Writer.
func NewWriter() *Writer { return &Writer{h: blake3.New()} }

// Write adds p; it never fails.
func (w *Writer) Write(p []byte) (int, error) { return w.h.Write(p) }

// Sum returns the hash of everything written.
func (w *Writer) Sum() ID {
	var id ID
	w.h.Sum(id[:0])
	return id
}
