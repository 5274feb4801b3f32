package prune

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/check"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/testutil"
)

// openWriteOnly adds a write-only key and opens the repository with it.
func (w *world) openWriteOnly(t *testing.T) *repo.Repository {
	t.Helper()
	return testutil.WriteOnly(t, w.open(t))
}

// forgeAll stores, as a write-only attacker can, one pack that holds
// garbage under the ID of every data blob the index lists, and an
// unsigned index file that lists it.
func forgeAll(t *testing.T, w *world, wo *repo.Repository) (hash.ID, int) {
	t.Helper()
	var body []byte
	var blobs []packfile.Blob
	wo.Index().Each(func(h repo.BlobHandle, loc repo.Location) {
		if h.Type != repo.DataBlob {
			return
		}
		blobs = append(blobs, packfile.Blob{Type: h.Type, ID: h.ID, Offset: uint32(len(body)), Length: loc.Length})
		body = append(body, bytes.Repeat([]byte{0xee}, int(loc.Length))...)
	})
	pack := packfile.AppendHeader(body, [packfile.UniqueLen]byte{7}, blobs)
	pid := hash.Sum(pack)
	if err := w.be.Save(ctx, storage.Handle{Type: storage.Pack, Name: pid.String()}, pack); err != nil {
		t.Fatal(err)
	}
	if _, err := wo.SaveIndexFile(ctx, &repo.IndexFile{Packs: []repo.PackInfo{{ID: pid, Blobs: blobs}}}); err != nil {
		t.Fatal(err)
	}
	return pid, len(blobs)
}

// A write-only host forges a copy of every data blob. check names the
// forged pack and its unsigned index file; prune verifies the packs that
// only unsigned index files vouch for, drops the forged entries, keeps the
// genuine copies, writes a signed index, and the forged pack goes.
func TestPruneKeepsGenuineCopies(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 4, 40<<10, 3)
	m := testutil.Manifest(t, src)
	wo := w.openWriteOnly(t)
	// the honest backup comes from a write-only host too: nothing vouches
	// for its index file either
	res, err := backup.Run(ctx, wo, backup.Options{Paths: []string{src}, Hostname: "web1"})
	if err != nil {
		t.Fatal(err)
	}
	forged, n := forgeAll(t, w, wo)

	// check --read-data names the forged pack and the unsigned index file
	r, _ := repo.Open(ctx, w.be, cred, repo.OpenOptions{KDF: &kdf})
	cres, err := check.Run(ctx, r, check.Options{ReadData: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range cres.Errors() {
		if strings.Contains(p.Message, forged.Short()) && strings.Contains(p.Message, "unsigned") && strings.Contains(p.Message, "do not match") {
			found = true
		}
	}
	if !found || len(cres.Affected) > 0 {
		t.Fatalf("check: forged pack not named, or snapshots reported damaged (they have genuine copies): %v", cres.Problems)
	}

	p1 := w.prune(Options{Grace: 0, MaxUnused: DefaultMaxUnused})
	if len(p1.Forged) != n {
		t.Fatalf("prune found %d forged entries, want %d: %v", len(p1.Forged), n, p1.Warnings)
	}
	if p1.Sweep.IndexWritten == "" {
		t.Fatal("prune verified entries but wrote no signed index")
	}
	w.prune(Options{Grace: 0, MaxUnused: DefaultMaxUnused})
	if _, err := w.be.Stat(ctx, storage.Handle{Type: storage.Pack, Name: forged.String()}); !storage.IsNotExist(err) {
		t.Fatalf("the forged pack is still there: %v", err)
	}
	w.check(t)
	w.restore(t, res.Snapshot.Tree, src, m)
	// every index file left is signed
	files, _, _ := w.open(t).LoadIndexFiles(ctx)
	for id, f := range files {
		if !f.Trusted && !repo.Superseded(files)[id] {
			t.Errorf("index file %s is unsigned after prune", id.Short())
		}
	}
}

// A gc mark that a write-only host forges (unsigned, backdated) deletes
// nothing, and check reports it.
func TestForgedMarkDeletesNothing(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 3, 30<<10, 5)
	m := testutil.Manifest(t, src)
	s := w.mustBackup(src)
	var packs []string
	w.be.List(ctx, storage.Pack, func(fi storage.FileInfo) error { packs = append(packs, `"`+fi.Name+`"`); return nil })
	mark := []byte(`{"time":"2001-01-01T00:00:00Z","packs":[` + strings.Join(packs, ",") + `],"supersede_index":[]}`)
	mark = append(mark, make([]byte, 64)...) // a made-up signature
	if err := w.be.Save(ctx, storage.Handle{Type: storage.GCMark, Name: hash.Sum(mark).String()}, mark); err != nil {
		t.Fatal(err)
	}
	res := w.prune(Options{Grace: time.Hour, MaxUnused: DefaultMaxUnused})
	if res.Sweep.Deleted.Packs != 0 || len(res.Marks) != 0 {
		t.Fatalf("a forged mark was honoured: %+v", res.Sweep)
	}
	warnings := w.check(t)
	found := false
	for _, p := range warnings {
		found = found || p.Kind == check.KindGCMark
	}
	if !found {
		t.Fatalf("check does not report the forged mark: %v", warnings)
	}
	w.restore(t, s.Snapshot.Tree, src, m)
}

// Dedup poisoning: before an honest host backs up files whose contents a
// write-only host can guess, it stores garbage under their IDs. The honest
// backup verifies those unvouched entries, stores its own copies, and its
// snapshot restores byte-exact, before and after prune.
func TestDedupPoisoningBeforeHonestBackup(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 4, 20<<10, 9) // each file is one chunk
	m := testutil.Manifest(t, src)
	wo := w.openWriteOnly(t)
	var body []byte
	var blobs []packfile.Blob
	for i := 0; i < 4; i++ {
		data, err := os.ReadFile(filepath.Join(src, fmt.Sprintf("f%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		ref := wo.RefOf(repo.DataBlob, data) // the attacker holds the chunk ID key
		sealedLen := 20<<10 + 16 + 4         // the stored length of an incompressible 20 KiB blob
		blobs = append(blobs, packfile.Blob{Type: repo.DataBlob, ID: ref.ID, Offset: uint32(len(body)), Length: uint32(sealedLen)})
		body = append(body, bytes.Repeat([]byte{0xee}, sealedLen)...)
	}
	pack := packfile.AppendHeader(body, [packfile.UniqueLen]byte{8}, blobs)
	pid := hash.Sum(pack)
	if err := w.be.Save(ctx, storage.Handle{Type: storage.Pack, Name: pid.String()}, pack); err != nil {
		t.Fatal(err)
	}
	if _, err := wo.SaveIndexFile(ctx, &repo.IndexFile{Packs: []repo.PackInfo{{ID: pid, Blobs: blobs}}}); err != nil {
		t.Fatal(err)
	}

	res := w.mustBackup(src)
	if res.Snapshot.Summary.DataAdded < 4*20<<10 {
		t.Fatalf("the honest backup stored %d bytes: it relied on the forged entries", res.Snapshot.Summary.DataAdded)
	}
	if len(res.Forged) != 4 {
		t.Fatalf("the backup reported %d forged copies, want 4", len(res.Forged))
	}
	w.restore(t, res.Snapshot.Tree, src, m)
	w.prune(Options{Grace: 0, MaxUnused: DefaultMaxUnused})
	w.prune(Options{Grace: 0, MaxUnused: DefaultMaxUnused})
	w.check(t)
	w.restore(t, res.Snapshot.Tree, src, m)
}
