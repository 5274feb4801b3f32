package packfile

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/floe-backup/floe/internal/hash"
)

// IndexMagic starts every index file.
const IndexMagic = "FLIX"

// MaxIndexLen bounds an index file (docs/FORMAT.md "Size limits"): readers
// refuse a larger one before reading it. Writers split their index files
// at MaxIndexEntries entries, under 45 MiB; a file holding one pack of
// more blobs than that is still under 155 MiB, since the pack's header
// is at most MaxHeaderLen.
const MaxIndexLen = 256 << 20

// MaxIndexEntries is the most entries (superseded files, packs and blobs)
// floe writes to one index file but for a single pack of more blobs: an
// entry encodes to at most 43 bytes, so a file stays under 45 MiB.
const MaxIndexEntries = 1 << 20

// SignatureSize is the size of the optional Ed25519 signature.
const SignatureSize = 64

// Pack lists the blobs of one pack in an index file.
type Pack struct {
	ID    hash.ID `json:"id"`
	Blobs []Blob  `json:"blobs"`
}

// Index is the content of one index file.
type Index struct {
	Supersedes []hash.ID `json:"supersedes,omitempty"`
	Packs      []Pack    `json:"packs"`
	// Signature is the authority's signature over Signed (DecodeIndex
	// sets both; nil when the file is unsigned). The caller verifies it.
	Signature []byte `json:"-"`
	Signed    []byte `json:"-"`
	// Trusted is set by a caller that verified the signature: only then
	// is Supersedes honoured.
	Trusted bool `json:"-"`
	// Verified is set by a caller whose storage verified every entry on
	// upload (a floe server): the entries are vouched for, but an
	// unsigned file's Supersedes still counts for nothing (a write-only
	// host could otherwise hide every other index file).
	Verified bool `json:"-"`
}

// EntriesTrusted reports whether the entries are vouched for: signed by
// the authority, or verified by the storage.
func (x *Index) EntriesTrusted() bool { return x.Trusted || x.Verified }

// AppendIndex appends the body of an index file (everything a signature
// covers) to b. Finish it with FinishIndex.
func AppendIndex(b []byte, x *Index) []byte {
	b = append(b, IndexMagic...)
	b = append(b, Version)
	b = binary.AppendUvarint(b, uint64(len(x.Supersedes)))
	for _, id := range x.Supersedes {
		b = append(b, id[:]...)
	}
	b = binary.AppendUvarint(b, uint64(len(x.Packs)))
	for _, p := range x.Packs {
		b = append(b, p.ID[:]...)
		b = binary.AppendUvarint(b, uint64(len(p.Blobs)))
		for _, bl := range p.Blobs {
			b = append(b, byte(bl.Type))
			b = append(b, bl.ID[:]...)
			b = binary.AppendUvarint(b, uint64(bl.Offset))
			b = binary.AppendUvarint(b, uint64(bl.Length))
		}
	}
	return b
}

// FinishIndex ends an index body with its signature (sig nil: unsigned).
// The marker byte is part of what is signed, so a signed file cannot be
// turned into an unsigned one that reads differently (and vice versa).
func FinishIndex(body, sig []byte) ([]byte, error) {
	if sig == nil {
		return append(body, 0), nil
	}
	if len(sig) != SignatureSize {
		return nil, fmt.Errorf("signature of %d bytes, want %d", len(sig), SignatureSize)
	}
	return append(body, sig...), nil
}

// SignedPart returns what a signature of an index body covers: the body
// and the marker byte 1.
func SignedPart(body []byte) []byte { return append(body[:len(body):len(body)], 1) }

// EncodeIndex returns an index file; sign, if not nil, returns the
// signature of the bytes it is given.
func EncodeIndex(x *Index, sign func(msg []byte) []byte) ([]byte, error) {
	body := AppendIndex(nil, x)
	if sign == nil {
		return FinishIndex(body, nil)
	}
	msg := SignedPart(body)
	return append(msg, sign(msg)...), nil
}

// DecodeIndex decodes an index file. It checks the structure (counts,
// types, that the blobs of a pack do not overlap) but not the signature:
// the caller verifies Signature over Signed with the authority's key.
func DecodeIndex(data []byte) (*Index, error) {
	if len(data) > MaxIndexLen {
		return nil, fmt.Errorf("decode index: %d bytes is more than the limit of %d bytes for an index file", len(data), MaxIndexLen)
	}
	if len(data) < len(IndexMagic) || string(data[:len(IndexMagic)]) != IndexMagic {
		return nil, errors.New("decode index: not a floe v2 index file (bad magic)")
	}
	d := &decoder{b: data[len(IndexMagic):]}
	if v := d.byte(); d.err == nil && v != Version {
		return nil, fmt.Errorf("decode index: version %d not supported (this floe reads version %d)", v, Version)
	}
	x := &Index{}
	n := d.count(hash.Size)
	for i := 0; i < n && d.err == nil; i++ {
		x.Supersedes = append(x.Supersedes, d.id())
	}
	n = d.count(hash.Size + 1)
	x.Packs = make([]Pack, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		p := Pack{ID: d.id()}
		m := d.count(1 + hash.Size + 2)
		p.Blobs = make([]Blob, 0, m)
		var end uint64
		for j := 0; j < m && d.err == nil; j++ {
			b := Blob{Type: Type(d.byte()), ID: d.id(), Offset: d.u32(), Length: d.u32()}
			if d.err != nil {
				break
			}
			if err := b.check(); err != nil {
				d.err = err
				break
			}
			if uint64(b.Offset) < end {
				d.err = fmt.Errorf("pack %s: blob %d at offset %d overlaps the one before", p.ID.Short(), j, b.Offset)
				break
			}
			end = uint64(b.Offset) + uint64(b.Length)
			p.Blobs = append(p.Blobs, b)
		}
		x.Packs = append(x.Packs, p)
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode index: %w", d.err)
	}
	switch {
	case len(d.b) == 1 && d.b[0] == 0:
	case len(d.b) == 1+SignatureSize && d.b[0] == 1:
		x.Signature = d.b[1:]
		x.Signed = data[:len(data)-SignatureSize]
	default:
		return nil, fmt.Errorf("decode index: %d bytes after the packs are neither an end marker nor a signature", len(d.b))
	}
	return x, nil
}
