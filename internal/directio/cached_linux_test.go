package directio

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCachedPages(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, make([]byte, 5*Align), 0o600); err != nil {
		t.Fatal(err)
	}
	in, total, err := CachedPages(p)
	if err != nil {
		t.Fatal(err)
	}
	// just written through the page cache: all of it is there
	if total != 5*Align/os.Getpagesize() || in != total {
		t.Errorf("CachedPages = %d of %d, want all of %d", in, total, 5*Align/os.Getpagesize())
	}
	if _, _, err := CachedPages(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("no error for a missing file")
	}
}
