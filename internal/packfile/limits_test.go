package packfile

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
)

// An index entry or a pack header entry naming a blob longer than any
// stored blob of its type can be is refused at decode, with the limit in
// the error: a reader never allocates what a hostile entry names.
func TestBlobLengthBound(t *testing.T) {
	for _, typ := range []Type{Data, Tree} {
		max := MaxBlobLength(typ)
		ok := &Index{Packs: []Pack{{ID: hash.ID{1}, Blobs: []Blob{{Type: typ, ID: hash.ID{2}, Length: max}}}}}
		b, _ := EncodeIndex(ok, nil)
		if _, err := DecodeIndex(b); err != nil {
			t.Errorf("%s blob of the largest length: %v", typ, err)
		}
		for _, length := range []uint32{max + 1, 1<<32 - 1} {
			huge := &Index{Packs: []Pack{{ID: hash.ID{1}, Blobs: []Blob{{Type: typ, ID: hash.ID{2}, Length: length}}}}}
			b, _ := EncodeIndex(huge, nil)
			_, err := DecodeIndex(b)
			if err == nil || !strings.Contains(err.Error(), "more than the limit") {
				t.Errorf("index entry of a %s blob of %d bytes: %v", typ, length, err)
			}
			// the same entry in a pack header, with a body that claims to
			// be that long
			hdr := AppendHeader(nil, [UniqueLen]byte{}, []Blob{{Type: typ, ID: hash.ID{2}, Length: length}})
			hdr = hdr[:len(hdr)-TrailerLen]
			_, err = DecodeHeader(hdr, int64(length))
			if err == nil || !strings.Contains(err.Error(), "more than the limit") {
				t.Errorf("pack header entry of a %s blob of %d bytes: %v", typ, length, err)
			}
		}
	}
	// the bounds are what the largest plaintexts seal to
	if MaxBlobLength(Data) != 64<<20+1+binary.MaxVarintLen64+16 || MaxBlobLength(Tree) != 256<<20+1+binary.MaxVarintLen64+16 {
		t.Errorf("bounds %d, %d", MaxBlobLength(Data), MaxBlobLength(Tree))
	}
}

// An index file over MaxIndexLen is refused without decoding, and a file
// of MaxIndexEntries entries of the longest encoding stays well under it.
func TestIndexLenBound(t *testing.T) {
	big := make([]byte, MaxIndexLen+1)
	copy(big, IndexMagic)
	if _, err := DecodeIndex(big); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("index file over the limit: %v", err)
	}
	// the longest entry: a blob (type, ID, offset, length); a pack (ID,
	// count) and a superseded file (ID) are shorter
	entry := 1 + hash.Size + 2*binary.MaxVarintLen32
	head := len(IndexMagic) + 1 + 2*binary.MaxVarintLen64 + 1 + SignatureSize
	if worst := head + MaxIndexEntries*entry; worst > 64<<20 {
		t.Errorf("a full index file can take %d bytes, more than 64 MiB", worst)
	}
	// a file of one pack with the most blobs a pack header can hold
	blobs := MaxHeaderLen / (1 + hash.Size + 1)
	if worst := head + hash.Size + binary.MaxVarintLen64 + blobs*entry; worst > MaxIndexLen {
		t.Errorf("the index file of the largest pack can take %d bytes, more than the limit %d", worst, MaxIndexLen)
	}
}
