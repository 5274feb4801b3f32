//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
)

// TestIndexCacheCLI: a repository of more than 100,000 index entries gets
// an index cache in the cache directory (docs/FORMAT.md "Local cache");
// the next commands use it and add the index files written since; a
// damaged cache is ignored and rewritten, and backups and restores keep
// working throughout, with --no-cache too.
func TestIndexCacheCLI(t *testing.T) {
	e := newEnv(t)
	e.init()
	r := e.openInProcess()
	// 110,000 entries of packs that are not stored: enough for a cache
	for f := 0; f < 2; f++ {
		var idx packfile.Index
		for p := 0; p < 55000/16+1; p++ {
			pk := packfile.Pack{ID: randID()}
			for b := 0; b < 16; b++ {
				pk.Blobs = append(pk.Blobs, packfile.Blob{Type: packfile.Data, ID: randID(), Offset: uint32(b * 1000), Length: 1000})
			}
			idx.Packs = append(idx.Packs, pk)
		}
		if _, err := r.SaveIndexFile(context.Background(), &idx); err != nil {
			t.Fatal(err)
		}
	}
	table := filepath.Join(e.floeCache, r.Config().ID, "index", "table")
	src := e.mkdir("src")
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(src, "f"), bytes.Repeat([]byte(s), 5000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("one ")
	e.ok("backup", src)
	first, err := os.ReadFile(table)
	if err != nil {
		t.Fatalf("no index cache after a backup: %v", err)
	}
	write("two ")
	e.ok("backup", src) // the cache and the index file of the first backup
	if again, _ := os.ReadFile(table); !bytes.Equal(again, first) {
		t.Fatal("the index cache was rewritten for one new index file")
	}
	// damage it: ignored, and rewritten
	first[len(first)/2] ^= 1
	if err := os.WriteFile(table, first, 0o600); err != nil {
		t.Fatal(err)
	}
	write("three ")
	e.ok("backup", src)
	fixed, err := os.ReadFile(table)
	if err != nil || bytes.Equal(fixed, first) || len(fixed) <= len(first) {
		t.Fatalf("the damaged index cache was not rewritten (%v)", err)
	}
	// reads through the cache: every snapshot restores
	for i, s := range e.snapshots() {
		dst := e.path("out", s.ID)
		e.ok("restore", "--verify", s.ID, "--target", dst)
		if i == 2 {
			got, err := os.ReadFile(filepath.Join(dst, src, "f"))
			if err != nil || !bytes.Equal(got, bytes.Repeat([]byte("three "), 5000)) {
				t.Fatalf("restore through the index cache: %v", err)
			}
		}
	}
	e.ok("--no-cache", "restore", "--verify", "latest", "--target", e.path("out-nocache"))
}

func randID() hash.ID {
	var id hash.ID
	rand.Read(id[:])
	return id
}
