package packfile

import (
	"bytes"
	"fmt"
	"io"
	"slices"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/ui"
)

// What a repository server needs to verify uploads without keys
// (docs/FORMAT.md "Packs", "Index files"): a server that tells clients it
// verifies uploads must refuse a pack with a blob that does not hash to
// its ID, and an index file with an entry whose bytes in the stored pack
// do not hash to its ID; otherwise clients would deduplicate against
// forged copies. Both stream: memory is bounded by the pack header and a
// copy buffer, never by the size of a pack (up to 1 GiB) or of a blob an
// entry claims (up to 4 GiB).

// copyBuf is the size of the reads that stream blobs through the hash.
const copyBuf = 1 << 20

// hashRange returns the ID of the blob of type t stored at off..off+n of r.
func hashRange(r io.ReaderAt, t Type, off, n int64, buf []byte) (hash.ID, error) {
	w := hash.NewWriter()
	w.Write([]byte{byte(t)})
	if _, err := io.CopyBuffer(w, io.NewSectionReader(r, off, n), buf); err != nil {
		return hash.ID{}, err
	}
	return w.Sum(), nil
}

// VerifyReader is Verify for a pack of size bytes read through r: it
// reads the trailer and the header, then streams every blob through the
// hash.
func VerifyReader(r io.ReaderAt, size int64) (blobs []Blob, bad []BadBlob, err error) {
	if size < int64(TrailerLen)+2+UniqueLen {
		return nil, nil, fmt.Errorf("%d bytes is too short for a pack", size)
	}
	trailer := make([]byte, TrailerLen)
	if _, err := r.ReadAt(trailer, size-int64(TrailerLen)); err != nil {
		return nil, nil, fmt.Errorf("read pack trailer: %w", err)
	}
	n, err := HeaderLen(trailer, size)
	if err != nil {
		return nil, nil, err
	}
	body := size - int64(TrailerLen) - n
	hdr := make([]byte, n)
	if _, err := r.ReadAt(hdr, body); err != nil {
		return nil, nil, fmt.Errorf("read pack header: %w", err)
	}
	if blobs, err = DecodeHeader(hdr, body); err != nil {
		return nil, nil, err
	}
	buf := make([]byte, copyBuf)
	for _, b := range blobs {
		got, err := hashRange(r, b.Type, int64(b.Offset), int64(b.Length), buf)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s blob %s: %w", b.Type, b.ID.Short(), err)
		}
		if got != b.ID {
			bad = append(bad, BadBlob{Blob: b, Actual: got})
		}
	}
	return blobs, bad, nil
}

// sumStretch is how much of a blob VerifyAndSum hashes into the blob's
// ID and then into the pack's hash before moving on: small enough to
// stay in the CPU's cache between the two, large enough for the hash's
// SIMD batches.
const sumStretch = 64 << 10

// VerifyAndSum is Verify that also returns the BLAKE3-256 of the whole
// pack (its name, docs/FORMAT.md rule 1), hashed in the same pass: each
// stretch of a blob goes into the blob's ID and into the pack's hash
// while it is in the CPU's cache, so that a server holding an upload in
// memory reads it once instead of once per hash. When the pack does not
// parse, sum is still the hash of data and err says why.
func VerifyAndSum(data []byte) (sum hash.ID, blobs []Blob, bad []BadBlob, err error) {
	name := hash.NewWriter()
	blobs, err = Parse(data)
	if err != nil {
		name.Write(data)
		return name.Sum(), nil, nil, err
	}
	bh := hash.NewWriter()
	var body int64
	for _, b := range blobs {
		// Parse checked that the blobs lie end to end from offset 0
		bh.Reset()
		bh.Write([]byte{byte(b.Type)})
		for rest := data[b.Offset : b.Offset+b.Length]; len(rest) > 0; {
			n := min(len(rest), sumStretch)
			bh.Write(rest[:n])
			name.Write(rest[:n])
			rest = rest[n:]
		}
		if got := bh.Sum(); got != b.ID {
			bad = append(bad, BadBlob{Blob: b, Actual: got})
		}
		body = int64(b.Offset) + int64(b.Length)
	}
	name.Write(data[body:])
	return name.Sum(), blobs, bad, nil
}

// CheckPack reads a pack of size bytes from r and returns an error unless
// it parses and every blob hashes to the ID its header gives.
func CheckPack(r io.ReaderAt, size int64) error {
	if size < 0 || size > 1<<40 {
		return fmt.Errorf("pack of %d bytes", size)
	}
	_, bad, err := VerifyReader(r, size)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s (first: %s blob %s)", ui.Count(len(bad), "blob does not hash to its ID", "blobs do not hash to their IDs"), bad[0].Type, bad[0].ID.Short())
	}
	return nil
}

// StoredPack is a stored pack as CheckIndex reads it.
type StoredPack struct {
	R    io.ReaderAt
	Size int64
	// Verified, if set, reports whether an entry is one the caller
	// already verified by hashing (a server remembers the blobs of the
	// packs it verified on upload): such entries are not read again.
	Verified func(Blob) bool
}

// PackOpener opens a stored pack for CheckIndex, or returns an error (a
// pack that does not exist must be an error).
type PackOpener func(pack hash.ID) (StoredPack, error)

// CheckIndex decodes an index file and checks every entry against the
// pack it names as stored: an entry past the end of the pack, whose bytes
// do not hash to its ID, or of a pack that cannot be opened (does not
// exist yet: a client uploads packs before the index file that lists
// them) is an error. The signature is not checked (a server has no keys).
//
// The entries are checked in the order of their pack and offset, each
// pack opened once and each distinct entry hashed once: the format lets
// a file list a pack more than once, and a hostile client holding only a
// backup credential once made a server hash one 64 MiB entry per 71
// bytes of index file (a 256 MiB file: days of CPU) by listing it again
// and again.
func CheckIndex(data []byte, open PackOpener) error {
	x, err := DecodeIndex(data)
	if err != nil {
		return err
	}
	// an index file is at most MaxIndexLen bytes, an entry at least 35:
	// the positions fit in int32
	type entry struct{ p, b int32 }
	n := 0
	for _, p := range x.Packs {
		n += len(p.Blobs)
	}
	order := make([]entry, 0, n)
	for i, p := range x.Packs {
		for j := range p.Blobs {
			order = append(order, entry{int32(i), int32(j)})
		}
	}
	slices.SortFunc(order, func(a, b entry) int {
		pa, pb := &x.Packs[a.p], &x.Packs[b.p]
		if c := bytes.Compare(pa.ID[:], pb.ID[:]); c != 0 {
			return c
		}
		return CompareBlobs(pa.Blobs[a.b], pb.Blobs[b.b])
	})
	buf := make([]byte, copyBuf)
	var (
		sp   StoredPack
		cur  *hash.ID
		prev Blob
	)
	for _, e := range order {
		p := &x.Packs[e.p]
		b := p.Blobs[e.b]
		if cur == nil || *cur != p.ID {
			if sp, err = open(p.ID); err != nil {
				return fmt.Errorf("pack %s: %w", p.ID.Short(), err)
			}
			cur = &p.ID
		} else if b == prev {
			continue // listed before: checked
		}
		prev = b
		if int64(b.Offset)+int64(b.Length) > sp.Size-int64(TrailerLen) {
			return fmt.Errorf("pack %s: the %s blob %s it lists at offset %d (%d bytes) lies past the end of the %d-byte pack", p.ID.Short(), b.Type, b.ID.Short(), b.Offset, b.Length, sp.Size)
		}
		if sp.Verified != nil && sp.Verified(b) {
			continue
		}
		got, err := hashRange(sp.R, b.Type, int64(b.Offset), int64(b.Length), buf)
		if err != nil {
			return fmt.Errorf("pack %s: read %s blob %s: %w", p.ID.Short(), b.Type, b.ID.Short(), err)
		}
		if got != b.ID {
			return fmt.Errorf("pack %s: the %s blob %s it lists at offset %d does not hash to its ID", p.ID.Short(), b.Type, b.ID.Short(), b.Offset)
		}
	}
	return nil
}
