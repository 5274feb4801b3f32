package storage

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"testing"
)

// A spool reads back what was written, in memory below its limit and
// from its file above, across chunk boundaries; it is empty and
// unreadable once closed.
func TestSpool(t *testing.T) {
	for _, c := range []struct {
		name   string
		memMax int64
		size   int
		spills bool
	}{{"memory", 8 << 20, 3*spoolChunk + 17, false}, {"file", 2*spoolChunk + 5, 3*spoolChunk + 17, true}, {"empty", 1, 0, false}} {
		t.Run(c.name, func(t *testing.T) {
			opened := 0
			s := NewSpool(c.memMax, func() (*os.File, error) {
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
			if _, err := s.ReadAt(make([]byte, 1), 0); err == nil {
				t.Fatal("read after close")
			}
			if _, err := s.Write([]byte("x")); err == nil {
				t.Fatal("write after close")
			}
		})
	}
}
