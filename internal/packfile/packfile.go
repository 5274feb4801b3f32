// Package packfile holds the binary layouts of packs and index files of
// repository format v2 (docs/FORMAT.md "Packs" and "Index files"): encode,
// decode, and verify each blob of a pack by hashing. It holds no keys and
// imports nothing that does, so that a repository server, which must never
// see keys, can check every blob of an uploaded pack with it.
package packfile

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/floe-backup/floe/internal/hash"
)

// Type is the kind of a blob.
type Type uint8

// Blob types (docs/FORMAT.md "Blobs").
const (
	Data Type = 0
	Tree Type = 1
)

func (t Type) String() string {
	switch t {
	case Data:
		return "data"
	case Tree:
		return "tree"
	}
	return fmt.Sprintf("blobtype(%d)", uint8(t))
}

// Valid reports whether t is a known type.
func (t Type) Valid() bool { return t == Data || t == Tree }

// BlobID returns the ID of a blob of type t with stored bytes c:
// BLAKE3-256(t || c). Anyone can compute it; no key is involved.
func BlobID(t Type, c []byte) hash.ID { return hash.SumTyped(byte(t), c) }

// MinBlobLength is the shortest stored blob: a payload of at least a flag
// and a length byte, and the 16-byte GCM tag.
const MinBlobLength = 2 + 16

// The largest plaintexts blobs hold (docs/FORMAT.md "Size limits"): a data
// blob is one chunk, and the chunker's maximum is at most 64 MiB in any
// valid config; a tree blob is one directory, which floe encodes to at
// most 256 MiB.
const (
	MaxDataPlain = 64 << 20
	MaxTreePlain = 256 << 20
	// blobOverhead is what a stored blob adds to its plaintext at most:
	// the compression flag, the raw length (a varint) and the GCM tag
	// (compressed data is stored only when it is smaller).
	blobOverhead = 1 + binary.MaxVarintLen64 + 16
)

// MaxStoredLength returns the most bytes a stored blob of a plaintext of at
// most plain bytes can take.
func MaxStoredLength(plain int) uint32 { return uint32(plain + blobOverhead) }

// MaxBlobLength is the longest stored blob of type t. Index entries and
// pack headers come from storage that may be hostile: a longer entry is
// refused at decode, so that no reader allocates what it names.
func MaxBlobLength(t Type) uint32 {
	if t == Tree {
		return MaxStoredLength(MaxTreePlain)
	}
	return MaxStoredLength(MaxDataPlain)
}

// Blob is one blob's entry in a pack header or index file. Offset is
// implied in a pack header (blobs are contiguous) and explicit in an index.
type Blob struct {
	Type   Type    `json:"type"`
	ID     hash.ID `json:"id"`
	Offset uint32  `json:"offset"`
	Length uint32  `json:"length"`
}

// CompareBlobs orders the blobs of one pack by where they lie (offset,
// then length), then by type and ID, so that equal entries sort together.
func CompareBlobs(a, b Blob) int {
	if c := cmp.Compare(a.Offset, b.Offset); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Length, b.Length); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Type, b.Type); c != 0 {
		return c
	}
	return bytes.Compare(a.ID[:], b.ID[:])
}

const (
	// Magic ends every v2 pack.
	Magic = "FLOEPAK2"
	// TrailerLen is the header length field and the magic.
	TrailerLen = 4 + len(Magic)
	// Version is the pack header and index file version.
	Version = 2
	// MaxHeaderLen bounds what a hostile pack can make a reader read: a
	// 1 GiB pack of 1 KiB blobs has a ~40 MiB header.
	MaxHeaderLen = 128 << 20
	// blobEntryMax is the largest encoding of one header entry.
	blobEntryMax = 1 + hash.Size + binary.MaxVarintLen32
	// UniqueLen is the size of the random bytes every header holds. Blobs
	// are convergent, so two packs of the same blobs would otherwise be
	// the same object under the same name; but a gc mark names packs, and
	// a blob stored again because its pack is marked must land in a new
	// pack, not in the marked one.
	UniqueLen = 16
)

// HeaderRoom is the most space the header and trailer of a pack of n
// blobs can take.
func HeaderRoom(n int) int {
	return 1 + UniqueLen + binary.MaxVarintLen64 + n*blobEntryMax + TrailerLen
}

// AppendHeader appends the header of a pack holding blobs (in order,
// contiguous from offset 0) and the trailer to b. unique are the header's
// UniqueLen random bytes (see UniqueLen).
func AppendHeader(b []byte, unique [UniqueLen]byte, blobs []Blob) []byte {
	start := len(b)
	b = append(b, Version)
	b = append(b, unique[:]...)
	b = binary.AppendUvarint(b, uint64(len(blobs)))
	for _, bl := range blobs {
		b = append(b, byte(bl.Type))
		b = append(b, bl.ID[:]...)
		b = binary.AppendUvarint(b, uint64(bl.Length))
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(b)-start))
	return append(b, Magic...)
}

// HeaderLen returns the length of the header from a pack's trailer (its
// last TrailerLen bytes), checking it against the pack's size.
func HeaderLen(trailer []byte, size int64) (int64, error) {
	if len(trailer) != TrailerLen || string(trailer[4:]) != Magic {
		return 0, errors.New("not a floe v2 pack (bad trailer)")
	}
	n := int64(binary.LittleEndian.Uint32(trailer[:4]))
	if n < 2+UniqueLen || n > MaxHeaderLen || n > size-int64(TrailerLen) {
		return 0, fmt.Errorf("header length %d is impossible for a %d-byte pack", n, size)
	}
	return n, nil
}

// DecodeHeader decodes a pack header and returns its blobs with their
// offsets; they must cover exactly bodyLen bytes.
func DecodeHeader(hdr []byte, bodyLen int64) ([]Blob, error) {
	d := &decoder{b: hdr}
	if v := d.byte(); d.err == nil && v != Version {
		return nil, fmt.Errorf("pack header version %d not supported (this floe reads version %d)", v, Version)
	}
	d.bytes(UniqueLen)
	n := d.count(1 + hash.Size + 1)
	blobs := make([]Blob, 0, n)
	var off int64
	for i := 0; i < n && d.err == nil; i++ {
		b := Blob{Type: Type(d.byte()), ID: d.id(), Length: d.u32()}
		if d.err != nil {
			break
		}
		if err := b.check(); err != nil {
			d.err = err
			break
		}
		b.Offset = uint32(off)
		off += int64(b.Length)
		if off > bodyLen || off > 1<<32-1 {
			d.err = fmt.Errorf("blob %d ends at %d, past the %d-byte pack body", i, off, bodyLen)
			break
		}
		blobs = append(blobs, b)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d bytes of trailing garbage", len(d.b))
	}
	if d.err == nil && off != bodyLen {
		d.err = fmt.Errorf("blobs cover %d bytes, pack body has %d", off, bodyLen)
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode pack header: %w", d.err)
	}
	return blobs, nil
}

func (b Blob) check() error {
	if !b.Type.Valid() {
		return fmt.Errorf("unknown blob type %d", b.Type)
	}
	if b.Length < MinBlobLength {
		return fmt.Errorf("blob length %d is shorter than any blob", b.Length)
	}
	if b.Length > MaxBlobLength(b.Type) {
		return fmt.Errorf("%s blob length %d is more than the limit of %d bytes for a stored %s blob", b.Type, b.Length, MaxBlobLength(b.Type), b.Type)
	}
	return nil
}

// Parse decodes the header of a whole pack held in data. It does not
// verify the blobs (Verify does).
func Parse(data []byte) ([]Blob, error) {
	size := int64(len(data))
	if size < int64(TrailerLen)+2+UniqueLen {
		return nil, fmt.Errorf("%d bytes is too short for a pack", size)
	}
	n, err := HeaderLen(data[size-int64(TrailerLen):], size)
	if err != nil {
		return nil, err
	}
	body := size - int64(TrailerLen) - n
	return DecodeHeader(data[body:body+n], body)
}

// BadBlob is a blob whose stored bytes do not hash to its ID.
type BadBlob struct {
	Blob
	Actual hash.ID
}

// Verify parses a whole pack and hashes every blob: bad lists those whose
// bytes do not match their ID (a damaged or forged pack). err is set when
// the pack does not parse at all.
func Verify(data []byte) (blobs []Blob, bad []BadBlob, err error) {
	blobs, err = Parse(data)
	if err != nil {
		return nil, nil, err
	}
	for _, b := range blobs {
		if got := BlobID(b.Type, data[b.Offset:b.Offset+b.Length]); got != b.ID {
			bad = append(bad, BadBlob{Blob: b, Actual: got})
		}
	}
	return blobs, bad, nil
}

// decoder reads the binary formats defensively: every count is checked
// against the bytes left, so hostile input cannot force huge allocations.
type decoder struct {
	b   []byte
	err error
}

var errTruncated = errors.New("truncated")

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) u32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 && d.err == nil {
		d.err = errors.New("value out of range")
	}
	return uint32(v)
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.err = errTruncated
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	b := d.bytes(1)
	if d.err != nil {
		return 0
	}
	return b[0]
}

func (d *decoder) id() (id hash.ID) {
	copy(id[:], d.bytes(hash.Size))
	return id
}

// count reads a count of items at least minSize bytes each.
func (d *decoder) count(minSize int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)/minSize) {
		d.err = fmt.Errorf("count %d exceeds the data left", n)
		return 0
	}
	return int(n)
}
