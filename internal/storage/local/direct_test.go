package local

import (
	"bytes"
	"context"
	"testing"

	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

func TestConformanceDirect(t *testing.T) {
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		b, _ := newRepo(t)
		b.SetDirectIO(true)
		return b
	})
}

func pattern(n int) []byte {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// With SetDirectIO, objects of every size around the block alignment,
// from aligned and unaligned buffers, come back whole, by Load and by
// the aligned and unaligned reads of an ObjectReader.
func TestDirectIORoundTrip(t *testing.T) {
	b, _ := newRepo(t)
	b.SetDirectIO(true)
	ctx := context.Background()
	for i, size := range []int{directMinWrite - 1, directMinWrite, directMinWrite + 1, 3<<20 + 4095, 4 << 20, 5<<20 + 17} {
		want := pattern(size + 1)
		for _, data := range [][]byte{copyAligned(want[:size]), want[1:]} {
			h := storage.Handle{Type: storage.Pack, Name: storagetest.Name(string(rune('a'+i)) + string(data[:8]))}
			if err := b.Save(ctx, h, data); err != nil {
				t.Fatalf("save %d bytes: %v", size, err)
			}
			got, err := b.Load(ctx, h, 0, 0)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("load %d bytes: %d bytes back, equal %v, %v", size, len(got), bytes.Equal(got, data), err)
			}
			o, err := b.OpenRange(ctx, h)
			if err != nil {
				t.Fatal(err)
			}
			buf := directio.Buffer(directio.RoundUp(size))
			tail := int64(size) &^ (directio.Align - 1)
			if tail == int64(size) {
				tail -= directio.Align
			}
			for _, r := range []struct{ off, n int64 }{
				{0, directMinRead},                                         // aligned, direct
				{0, int64(size)},                                           // whole, to the end
				{directio.Align, 2 * directMinRead},                        // aligned in the middle
				{tail, int64(size) - tail},                                 // the last block, short
				{1, directMinRead},                                         // unaligned offset
				{directio.Align, directMinRead + 1},                        // unaligned length, not at the end
				{tail - directMinRead, int64(size) - tail + directMinRead}, // large, to the end
			} {
				p := buf[:r.n]
				n, err := o.ReadAt(p, r.off)
				if err != nil || n != len(p) || !bytes.Equal(p, data[r.off:r.off+r.n]) {
					t.Fatalf("size %d: ReadAt(%d, %d): %d, %v, equal %v", size, r.off, r.n, n, err, bytes.Equal(p, data[r.off:r.off+r.n]))
				}
			}
			if _, err := o.ReadAt(buf[:directMinRead], int64(directio.RoundUp(size))); err == nil {
				t.Errorf("size %d: a read past the end succeeded", size)
			}
			o.Close()
		}
	}
}

func copyAligned(p []byte) []byte {
	b := directio.Buffer(directio.RoundUp(len(p)))[:len(p)]
	copy(b, p)
	return b
}
