package storage

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"testing"
)

// The budget is shared: a second spool spills once the first holds most
// of it, and gets memory again once the first is closed.
func TestSpoolBudget(t *testing.T) {
	open := func() (*os.File, error) { return os.CreateTemp(t.TempDir(), "spool") }
	a := NewSpool(true, open)
	a.Write(make([]byte, SpoolMemory-spoolChunk))
	b := NewSpool(true, open)
	b.Write(make([]byte, 2*spoolChunk))
	if !a.InMemory() || b.InMemory() {
		t.Fatalf("in memory: a %v, b %v", a.InMemory(), b.InMemory())
	}
	a.Close()
	b.Close()
	c := NewSpool(true, open)
	defer c.Close()
	c.Write(make([]byte, 2*spoolChunk))
	if !c.InMemory() {
		t.Fatal("the budget was not given back")
	}
}

// A spool reads back what was written, in memory below its limit and
// from its file above, across chunk boundaries; it is empty and
// unreadable once closed.
func TestSpool(t *testing.T) {
	for _, c := range []struct {
		name   string
		mem    bool
		size   int
		spills bool
	}{{"memory", true, 3*spoolChunk + 17, false}, {"file", false, 3*spoolChunk + 17, true},
		{"over the budget", true, SpoolMemory + 1, true}, {"empty", true, 0, false}} {
		t.Run(c.name, func(t *testing.T) {
			opened := 0
			s := NewSpool(c.mem, func() (*os.File, error) {
				opened++
				return os.CreateTemp(t.TempDir(), "spool")
			})
			want := make([]byte, c.size)
			for i := range want {
				want[i] = byte(rand.N(256))
			}
			for rest := want; len(rest) > 0; {
				k := min(len(rest), 1+rand.N(300000))
				if n, err := s.Write(rest[:k]); err != nil || n != k {
					t.Fatalf("write: %d, %v", n, err)
				}
				rest = rest[k:]
			}
			if s.Size() != int64(c.size) || s.InMemory() == c.spills || (opened == 1) != c.spills {
				t.Fatalf("size %d, in memory %v, files %d", s.Size(), s.InMemory(), opened)
			}
			got, err := io.ReadAll(io.NewSectionReader(s, 0, s.Size()))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("read back %d bytes (want %d): %v", len(got), len(want), err)
			}
			if c.size > spoolChunk+10 {
				p := make([]byte, 20)
				if _, err := s.ReadAt(p, spoolChunk-10); err != nil || !bytes.Equal(p, want[spoolChunk-10:spoolChunk+10]) {
					t.Fatalf("read across a chunk boundary: %v", err)
				}
			}
			if _, err := s.ReadAt(make([]byte, 1), int64(c.size)); err != io.EOF {
				t.Fatalf("read at the end: %v", err)
			}
			s.Close()
			if spoolUsed.Load() != 0 {
				t.Fatalf("%d bytes of the budget still booked after Close", spoolUsed.Load())
			}
			if _, err := s.ReadAt(make([]byte, 1), 0); err == nil {
				t.Fatal("read after close")
			}
			if _, err := s.Write([]byte("x")); err == nil {
				t.Fatal("write after close")
			}
		})
	}
}

// A backup through floe serve holds three packs of the default 16 MiB
// pack_size (and their headers) at once, plus a tree pack: one filling
// and one uploading on each of the two default connections. All of them
// stay in memory; a fourth data pack spills.
func TestSpoolBudgetHoldsThreePacks(t *testing.T) {
	open := func() (*os.File, error) { return os.CreateTemp(t.TempDir(), "spool") }
	const pack = 16<<20 + 256<<10 // pack_size plus the header's room
	var spools []*Spool
	defer func() {
		for _, s := range spools {
			s.Close()
		}
	}()
	for i, size := range []int{pack, pack, pack, 4 << 20} {
		s := NewSpool(true, open)
		spools = append(spools, s)
		for rest := size; rest > 0; rest -= 64 << 10 {
			s.Write(make([]byte, min(rest, 64<<10)))
		}
		if !s.InMemory() {
			t.Fatalf("spool %d of %d bytes spilled", i, size)
		}
	}
	s := NewSpool(true, open)
	spools = append(spools, s)
	s.Write(make([]byte, pack))
	if s.InMemory() {
		t.Error("a fourth pack stayed in memory: the budget is unbounded")
	}
}
