package hash

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/zeebo/blake3"
)

func TestParseAndText(t *testing.T) {
	id := Sum([]byte("floe"))
	back, err := Parse(id.String())
	if err != nil || back != id {
		t.Fatalf("Parse(String()) = %v, %v", back, err)
	}
	for _, bad := range []string{"", "abc", id.String()[:63] + "g", id.String() + "00"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	b, _ := json.Marshal(id)
	var j ID
	if err := json.Unmarshal(b, &j); err != nil || j != id {
		t.Fatalf("JSON round trip: %v", err)
	}
	if !(ID{}).IsNull() || id.IsNull() {
		t.Fatal("IsNull wrong")
	}
}

func TestKeyed(t *testing.T) {
	data := []byte("same content")
	a := NewKeyed([32]byte{1})
	b := NewKeyed([32]byte{2})
	if a.Sum(data) != a.Sum(data) {
		t.Fatal("keyed hash not deterministic")
	}
	if a.Sum(data) == b.Sum(data) || a.Sum(data) == Sum(data) {
		t.Fatal("keyed hash does not depend on the key")
	}
}

func benchmarkKeyed(b *testing.B, size int) {
	k := NewKeyed([32]byte{1})
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	for i := 0; i < b.N; i++ {
		k.Sum(buf)
	}
}

// Chunk IDs: one keyed hash per chunk (average 1 MiB).
func BenchmarkKeyed1MiB(b *testing.B) { benchmarkKeyed(b, 1<<20) }

// Trees and small files.
func BenchmarkKeyed4KiB(b *testing.B) { benchmarkKeyed(b, 4<<10) }

// Object names: one unkeyed hash per stored pack (16 MiB).
func BenchmarkSum16MiB(b *testing.B) {
	buf := make([]byte, 16<<20)
	b.SetBytes(int64(len(buf)))
	for i := 0; i < b.N; i++ {
		Sum(buf)
	}
}

func TestRef(t *testing.T) {
	r := Ref{ID: Sum([]byte("a")), Key: Sum([]byte("b"))}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Ref
	if err := json.Unmarshal(b, &back); err != nil || back != r {
		t.Fatalf("JSON round trip: %v %v", back, err)
	}
	if r.String() != r.ID.String() {
		t.Fatal("String must show the ID only")
	}
	if RefFromBytes(AppendRef(nil, r)) != r {
		t.Fatal("binary round trip")
	}
	for _, bad := range []string{`""`, `"` + r.ID.String() + `"`, `"` + r.ID.String() + r.Key.String()[:63] + `g"`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
	if SumTyped(0, []byte("x")) == SumTyped(1, []byte("x")) || SumTyped(0, []byte("x")) != Sum([]byte("\x00x")) {
		t.Fatal("SumTyped")
	}
}

// TestDeriveKeyReuse: the pooled hashers give blake3.DeriveKey's result,
// for several contexts and materials in turn (a reused hasher keeps its
// context and forgets the previous material).
func TestDeriveKeyReuse(t *testing.T) {
	for round := range 3 {
		for _, ctx := range []string{"floe v2 blob key", "floe test other context"} {
			for _, m := range [][]byte{nil, []byte("a"), bytes.Repeat([]byte("material"), 1000)} {
				var want [32]byte
				blake3.DeriveKey(ctx, m, want[:])
				if got := DeriveKey(ctx, m); got != want {
					t.Fatalf("round %d, context %q, %d bytes: got %x, want %x", round, ctx, len(m), got, want)
				}
			}
		}
	}
}

// SumZeros: the hash of each length of zeros, read on the way to the
// longest, is Sum of that many zeros, for lengths around BLAKE3's 1 KiB
// chunks and 64 KiB steps, given unsorted and twice.
func TestSumZeros(t *testing.T) {
	k := NewKeyed([32]byte{7, 1})
	sizes := []uint32{1 << 20, 0, 1, 1023, 1024, 1025, 64 << 10, 64<<10 + 1, 3<<20 + 511, 1024, 200000}
	got := k.SumZeros(sizes)
	if len(got) != len(sizes)-1 {
		t.Fatalf("%d hashes for %d distinct sizes", len(got), len(sizes)-1)
	}
	for _, n := range sizes {
		if want := k.Sum(make([]byte, n)); got[n] != want {
			t.Errorf("SumZeros %d = %s, want %s", n, got[n].Short(), want.Short())
		}
	}
}
