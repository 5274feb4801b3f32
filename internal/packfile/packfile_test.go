package packfile

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
)

// makePack builds a pack of the given blob contents (as if already sealed).
func makePack(contents ...[]byte) ([]byte, []Blob) {
	var data []byte
	var blobs []Blob
	for i, c := range contents {
		t := Type(i % 2)
		blobs = append(blobs, Blob{Type: t, ID: BlobID(t, c), Offset: uint32(len(data)), Length: uint32(len(c))})
		data = append(data, c...)
	}
	return AppendHeader(data, [UniqueLen]byte{1, 2}, blobs), blobs
}

func TestPackRoundTrip(t *testing.T) {
	c1 := bytes.Repeat([]byte("a"), 40)
	c2 := bytes.Repeat([]byte("b"), 100)
	data, blobs := makePack(c1, c2)
	got, bad, err := Verify(data)
	if err != nil || len(bad) != 0 || !reflect.DeepEqual(got, blobs) {
		t.Fatalf("Verify = %v, %v, %v; want %v", got, bad, err, blobs)
	}
	if len(data) > len(c1)+len(c2)+HeaderRoom(2) {
		t.Fatalf("pack of %d bytes exceeds HeaderRoom", len(data))
	}
	// a forged blob: the header names the ID of other bytes
	data[len(c1)+3] ^= 1
	_, bad, err = Verify(data)
	if err != nil || len(bad) != 1 || bad[0].ID != blobs[1].ID {
		t.Fatalf("Verify of a flipped blob = %v, %v", bad, err)
	}
	for _, cut := range []int{1, 5, len(data) - 1} {
		if _, err := Parse(data[:len(data)-cut]); err == nil {
			t.Errorf("Parse accepted a pack cut by %d bytes", cut)
		}
	}
	if _, err := Parse(append([]byte("x"), data...)); err == nil {
		t.Error("Parse accepted a pack with a byte more in its body")
	}
}

func TestVerifyAndSum(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 30000) // several stretches
	data, blobs := makePack([]byte("small blob contents"), big, []byte("tail blob contents"))
	sum, got, bad, err := VerifyAndSum(data)
	if err != nil || len(bad) != 0 || !reflect.DeepEqual(got, blobs) || sum != hash.Sum(data) {
		t.Fatalf("good pack: sum %v (want %v), blobs %v, bad %v, err %v", sum, hash.Sum(data), got, bad, err)
	}
	forged := bytes.Clone(data)
	forged[blobs[1].Offset+70000] ^= 1
	sum, _, bad, err = VerifyAndSum(forged)
	if err != nil || len(bad) != 1 || bad[0].ID != blobs[1].ID || sum != hash.Sum(forged) {
		t.Fatalf("forged pack: sum %v, bad %v, err %v", sum, bad, err)
	}
	junk := []byte("not a pack at all, but hashed all the same")
	sum, _, _, err = VerifyAndSum(junk)
	if err == nil || sum != hash.Sum(junk) {
		t.Fatalf("junk: sum %v, err %v", sum, err)
	}
}

func TestIndexRoundTrip(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	x := &Index{Supersedes: []hash.ID{hash.Sum([]byte("old"))}, Packs: []Pack{{ID: hash.Sum([]byte("p")),
		Blobs: []Blob{{Type: Data, ID: hash.Sum([]byte("1")), Offset: 0, Length: 30}, {Type: Tree, ID: hash.Sum([]byte("2")), Offset: 30, Length: 20}}}}}
	for _, signed := range []bool{false, true} {
		var sign func([]byte) []byte
		if signed {
			sign = func(m []byte) []byte { return ed25519.Sign(priv, m) }
		}
		b, err := EncodeIndex(x, sign)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeIndex(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Packs, x.Packs) || !reflect.DeepEqual(got.Supersedes, x.Supersedes) {
			t.Fatalf("round trip: %+v", got)
		}
		if signed != (got.Signature != nil) {
			t.Fatalf("signed=%v but signature %x", signed, got.Signature)
		}
		if signed && !ed25519.Verify(pub, got.Signed, got.Signature) {
			t.Fatal("signature does not verify")
		}
		if _, err := DecodeIndex(b[:len(b)-1]); err == nil {
			t.Error("truncated index accepted")
		}
	}
	over := &Index{Packs: []Pack{{Blobs: []Blob{{Length: 30, Offset: 10}, {Length: 30, Offset: 20}}}}}
	b, _ := EncodeIndex(over, nil)
	if _, err := DecodeIndex(b); err == nil {
		t.Error("overlapping blobs accepted")
	}
}

func FuzzPackHeader(f *testing.F) {
	data, _ := makePack([]byte("0123456789abcdefghij"), []byte("klmnopqrstuvwxyz0123456789"))
	f.Add(data)
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		blobs, bad, err := Verify(data)
		// the one-pass verifier agrees with it, and its sum is the name
		sum, ob, obad, oerr := VerifyAndSum(data)
		if sum != hash.Sum(data) || (oerr == nil) != (err == nil) || !reflect.DeepEqual(ob, blobs) || !reflect.DeepEqual(obad, bad) {
			t.Fatalf("VerifyAndSum = %v, %v, %v, %v; Verify = %v, %v, %v", sum, ob, obad, oerr, blobs, bad, err)
		}
		if err != nil {
			return
		}
		// the streaming verifier agrees with the in-memory one
		sb, sbad, serr := VerifyReader(bytes.NewReader(data), int64(len(data)))
		if serr != nil || !reflect.DeepEqual(sb, blobs) || !reflect.DeepEqual(sbad, bad) {
			t.Fatalf("VerifyReader = %v, %v, %v; Verify = %v, %v", sb, sbad, serr, blobs, bad)
		}
		var end int64
		for _, b := range blobs {
			if int64(b.Offset) != end || !b.Type.Valid() {
				t.Fatalf("accepted blob %+v", b)
			}
			end += int64(b.Length)
		}
		if end > int64(len(data)) || len(bad) > len(blobs) {
			t.Fatal("blobs past the data")
		}
	})
}

func FuzzIndex(f *testing.F) {
	x := &Index{Supersedes: []hash.ID{{1}}, Packs: []Pack{{ID: hash.ID{2}, Blobs: []Blob{{Type: Tree, ID: hash.ID{3}, Offset: 5, Length: 40}}}}}
	b, _ := EncodeIndex(x, nil)
	f.Add(b)
	b, _ = EncodeIndex(x, func([]byte) []byte { return make([]byte, 64) })
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := DecodeIndex(data)
		if err != nil {
			return
		}
		// what decodes re-encodes to something that decodes the same
		var sign func([]byte) []byte
		if x.Signature != nil {
			sign = func([]byte) []byte { return x.Signature }
		}
		again, err := EncodeIndex(x, sign)
		if err != nil {
			t.Fatal(err)
		}
		y, err := DecodeIndex(again)
		if err != nil || !reflect.DeepEqual(x.Packs, y.Packs) || !reflect.DeepEqual(x.Supersedes, y.Supersedes) || !bytes.Equal(x.Signature, y.Signature) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}

func TestCheckPackAndIndex(t *testing.T) {
	data, blobs := makePack(bytes.Repeat([]byte("x"), 30), bytes.Repeat([]byte("y"), 50))
	if err := CheckPack(bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	pid := hash.Sum(data)
	load := func(p hash.ID) (StoredPack, error) {
		if p != pid {
			return StoredPack{}, errors.New("no such pack")
		}
		return StoredPack{R: bytes.NewReader(data), Size: int64(len(data))}, nil
	}
	good, _ := EncodeIndex(&Index{Packs: []Pack{{ID: pid, Blobs: blobs}}}, nil)
	if err := CheckIndex(good, load); err != nil {
		t.Fatal(err)
	}
	// an entry that names the bytes of another blob
	forged := []Blob{{Type: blobs[1].Type, ID: blobs[1].ID, Offset: blobs[0].Offset, Length: blobs[0].Length}}
	bad, _ := EncodeIndex(&Index{Packs: []Pack{{ID: pid, Blobs: forged}}}, nil)
	if err := CheckIndex(bad, load); err == nil {
		t.Fatal("a forged index entry passed")
	}
	missing, _ := EncodeIndex(&Index{Packs: []Pack{{ID: hash.ID{1}, Blobs: blobs}}}, nil)
	if err := CheckIndex(missing, load); err == nil {
		t.Fatal("an entry of a missing pack passed")
	}
	past, _ := EncodeIndex(&Index{Packs: []Pack{{ID: pid, Blobs: []Blob{{Type: Data, ID: blobs[0].ID, Offset: 30, Length: 1 << 20}}}}}, nil)
	if err := CheckIndex(past, load); err == nil || !strings.Contains(err.Error(), "past the end") {
		t.Fatalf("an entry past the end of its pack: %v", err)
	}
	// entries the caller verified are not read again; others still are
	calls := 0
	counting := func(p hash.ID) (StoredPack, error) {
		sp, err := load(p)
		sp.R = readerFunc(func(b []byte, off int64) (int, error) { calls++; return bytes.NewReader(data).ReadAt(b, off) })
		sp.Verified = func(b Blob) bool { return b == blobs[0] }
		return sp, err
	}
	if err := CheckIndex(good, counting); err != nil || calls == 0 {
		t.Fatalf("CheckIndex with one verified entry: %v, %d reads", err, calls)
	}
	calls = 0
	only0, _ := EncodeIndex(&Index{Packs: []Pack{{ID: pid, Blobs: blobs[:1]}}}, nil)
	if err := CheckIndex(only0, counting); err != nil || calls != 0 {
		t.Fatalf("CheckIndex of a verified entry: %v, %d reads", err, calls)
	}
	if err := CheckIndex(bad, counting); err == nil {
		t.Fatal("a forged entry passed next to verified ones")
	}
	data[3] ^= 1
	if err := CheckPack(bytes.NewReader(data), int64(len(data))); err == nil {
		t.Fatal("a damaged pack passed")
	}
}

// CheckIndex against a stored pack never panics on hostile entries
// (offsets and lengths past the pack, overlapping, of any type), and
// accepts only entries whose bytes hash to their IDs.
func FuzzCheckIndex(f *testing.F) {
	data, blobs := makePack(bytes.Repeat([]byte("x"), 30), bytes.Repeat([]byte("y"), 50))
	pid := hash.Sum(data)
	good, _ := EncodeIndex(&Index{Packs: []Pack{{ID: pid, Blobs: blobs}}}, nil)
	f.Add(good)
	f.Add(good[:len(good)-3])
	open := func(p hash.ID) (StoredPack, error) {
		if p != pid {
			return StoredPack{}, errors.New("no such pack")
		}
		return StoredPack{R: bytes.NewReader(data), Size: int64(len(data))}, nil
	}
	f.Fuzz(func(t *testing.T, idx []byte) {
		if CheckIndex(idx, open) != nil {
			return
		}
		x, err := DecodeIndex(idx)
		if err != nil {
			t.Fatalf("CheckIndex accepted what does not decode: %v", err)
		}
		for _, p := range x.Packs {
			for _, b := range p.Blobs {
				end := int(b.Offset) + int(b.Length)
				if p.ID != pid || end > len(data) || BlobID(b.Type, data[b.Offset:end]) != b.ID {
					t.Fatalf("accepted entry %+v of pack %s", b, p.ID.Short())
				}
			}
		}
	})
}

type readerFunc func([]byte, int64) (int, error)

func (f readerFunc) ReadAt(b []byte, off int64) (int, error) { return f(b, off) }

// An index file that lists one entry again and again (the format lets a
// file list a pack more than once) costs one open of the pack and one
// hash of the entry, not one per listing: a client with a backup
// credential could otherwise make a server hash a 64 MiB entry per 71
// bytes of index file.
func TestCheckIndexRepeatedEntries(t *testing.T) {
	data, blobs := makePack(bytes.Repeat([]byte("x"), 3000), bytes.Repeat([]byte("y"), 50))
	pid := hash.Sum(data)
	// bytes of the pack under another type: a valid entry the header
	// does not list, so a verifier that remembers headers hashes it
	other := Blob{Type: Tree, ID: BlobID(Tree, data[:3000]), Offset: 0, Length: 3000}
	var x Index
	for range 1000 {
		x.Packs = append(x.Packs, Pack{ID: pid, Blobs: []Blob{other, blobs[1]}})
	}
	idx, _ := EncodeIndex(&x, nil)
	opens, read := 0, 0
	open := func(p hash.ID) (StoredPack, error) {
		opens++
		if p != pid {
			return StoredPack{}, errors.New("no such pack")
		}
		r := readerFunc(func(b []byte, off int64) (int, error) { read += len(b); return bytes.NewReader(data).ReadAt(b, off) })
		return StoredPack{R: r, Size: int64(len(data))}, nil
	}
	if err := CheckIndex(idx, open); err != nil {
		t.Fatal(err)
	}
	if opens != 1 || read > 2*(3000+50) {
		t.Fatalf("1000 listings of 2 entries: %d opens, %d bytes read", opens, read)
	}
	// a bad listing among the repeated ones is still found
	bad := other
	bad.ID[0] ^= 1
	x.Packs = append(x.Packs, Pack{ID: pid, Blobs: []Blob{bad}})
	idx, _ = EncodeIndex(&x, nil)
	if err := CheckIndex(idx, open); err == nil || !strings.Contains(err.Error(), "does not hash") {
		t.Fatalf("a forged entry among repeated ones: %v", err)
	}
}
