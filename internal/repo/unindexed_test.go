package repo

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
)

// A pack sent but left unindexed (the index file could not be saved) is
// indexed by the next IndexUnindexed, and its blobs are then known; notes
// of packs that never arrived, and notes that are not notes, are dropped.
func TestIndexUnindexed(t *testing.T) {
	ctx := context.Background()
	be := &saveFails{Backend: mem.New(), typ: storage.Index} // a server gone after the packs arrived
	r, _, err := Init(ctx, be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r.SetIndexCache(dir)
	notes := filepath.Join(dir, "unindexed")

	// an honest run: the notes go once the index file is saved
	w := r.StartWriting()
	saveWith(t, w, r, bytes.Repeat([]byte("a"), 100<<10))
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(notes); len(left) != 0 {
		t.Fatalf("notes left after the index was saved: %d", len(left))
	}

	// the index cannot be saved: the pack stays noted
	be.fail.Store(true)
	data := bytes.Repeat([]byte("b"), 100<<10)
	w = r.StartWriting()
	ref := saveWith(t, w, r, data)
	if err := w.Finish(ctx); err == nil {
		t.Fatal("Finish saved an index file the storage refused")
	}
	be.fail.Store(false)
	left, _ := os.ReadDir(notes)
	if len(left) != 1 {
		t.Fatalf("%d notes after a refused index file, want 1", len(left))
	}
	// what a fresh process of the same host knows: the index files only
	r2, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r2.SetIndexCache(dir)
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if r2.HasBlob(BlobHandle{DataBlob, ref.ID}) {
		t.Fatal("the blob of the unindexed pack is indexed already")
	}
	// notes of a pack that never arrived, of another pack than their
	// name, garbage, a stray name
	noteData, _ := os.ReadFile(filepath.Join(notes, left[0].Name()))
	var never hash.ID
	never[0] = 0xee
	neverNote, err := packfile.EncodeIndex(&IndexFile{Packs: []PackInfo{{ID: never, Blobs: []PackedBlob{{Type: DataBlob, ID: ref.ID, Offset: 0, Length: 100}}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(notes, never.String()), neverNote, 0o600)
	os.WriteFile(filepath.Join(notes, "00"+left[0].Name()[2:]), noteData, 0o600)
	os.WriteFile(filepath.Join(notes, "ff"+left[0].Name()[2:]), []byte("garbage"), 0o600)
	os.WriteFile(filepath.Join(notes, ".tmp-x"), nil, 0o600)

	n, err := r2.IndexUnindexed(ctx)
	if err != nil || n != 1 {
		t.Fatalf("IndexUnindexed = %d, %v; want 1 pack", n, err)
	}
	if !r2.HasBlob(BlobHandle{DataBlob, ref.ID}) {
		t.Error("the blob of the pack that arrived is not indexed")
	}
	if left, _ := os.ReadDir(notes); len(left) != 0 {
		t.Errorf("notes left: %v", left)
	}
	if plain, err := r2.LoadBlob(ctx, DataBlob, ref, nil); err != nil || !bytes.Equal(plain, data) {
		t.Errorf("the blob through the new index entry: %v", err)
	}
}

func saveWith(t *testing.T, w *Writer, r *Repository, data []byte) hash.Ref {
	t.Helper()
	ref, _, _, err := w.SaveBlob(context.Background(), DataBlob, r.BlobKey(data), data)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}
