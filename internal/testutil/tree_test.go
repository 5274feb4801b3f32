//go:build linux

package testutil

import (
	"path/filepath"
	"slices"
	"testing"
)

// DataRegions shows the regions WriteSparse wrote and nothing of its
// holes (block-aligned regions, so that every file system with holes
// keeps them exactly).
func TestDataRegions(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse")
	want := []Region{{0, 8192}, {1 << 20, 4096}, {3 << 20, 64 << 10}}
	WriteSparse(t, p, 4<<20, 1, want...)
	got := DataRegions(t, p)
	if len(got) == 1 && got[0] == (Region{0, 4 << 20}) {
		t.Skip("the file system keeps no holes")
	}
	if !slices.Equal(got, want) {
		t.Fatalf("data regions %v, want %v", got, want)
	}
	WriteSparse(t, p, 1<<20, 1)
	if got := DataRegions(t, p); len(got) != 0 {
		t.Fatalf("a file of holes shows data regions %v", got)
	}
}
