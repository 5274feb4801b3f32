package prune

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/testutil"
)

// indexKill fails every index file save after the first n: a sweep killed
// between two of the index files it writes.
type indexKill struct {
	storage.Backend
	mu    sync.Mutex
	n     int
	saved []hash.ID
}

func (k *indexKill) Save(ctx context.Context, h storage.Handle, data []byte) error {
	if h.Type == storage.Index {
		k.mu.Lock()
		defer k.mu.Unlock()
		if len(k.saved) >= k.n {
			return errKilled
		}
		id, _ := hash.Parse(h.Name)
		k.saved = append(k.saved, id)
	}
	return k.Backend.Save(ctx, h, data)
}

// The sweep splits its new index into files of at most the configured
// entries (a pack of more blobs alone in its file), every one signed, the
// superseding ones after every pack is listed; a sweep stopped between two of them leaves a
// repository that check passes and restores from, and the next prune
// finishes the job.
func TestSweepSplitsIndex(t *testing.T) {
	w := newWorld(t)
	a := t.TempDir()
	files(t, a, "f", 8, 40<<10, 1)
	s1 := w.mustBackup(a)
	for _, n := range []string{"f0", "f1", "f2"} {
		os.Remove(filepath.Join(a, n))
	}
	files(t, a, "g", 3, 40<<10, 50)
	ma := testutil.Manifest(t, a)
	s2 := w.mustBackup(a)
	w.forget(s1.ID)
	w.prune(Options{MaxUnused: 0.1}) // marks: due in the run below
	base := w.be
	const split = 4
	opts := Options{MaxUnused: 0.1, indexEntries: split}

	full := &indexKill{Backend: cloneMem(t, base), n: 1 << 30}
	res, err := Run(ctx, openOn(t, full), opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sweep.Deleted.Packs == 0 || res.Sweep.IndexFilesWritten < 3 || len(full.saved) < res.Sweep.IndexFilesWritten {
		t.Fatalf("the sweep deleted %d packs and wrote %d index files (%d saved); want several", res.Sweep.Deleted.Packs, res.Sweep.IndexFilesWritten, len(full.saved))
	}
	t.Logf("the sweep wrote %d index files", res.Sweep.IndexFilesWritten)
	r := openOn(t, full)
	sweepFiles := full.saved[:res.Sweep.IndexFilesWritten]
	superseding := false
	for i, id := range sweepFiles {
		f, err := r.LoadIndexFile(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		n := len(f.Supersedes) + len(f.Packs)
		for _, p := range f.Packs {
			n += len(p.Blobs)
		}
		if !f.Trusted || n > split && len(f.Packs) != 1 {
			t.Errorf("index file %d: signed %v, %d entries", i, f.Trusted, n)
		}
		// supersedes only once every pack is listed: no file after one
		// that supersedes lists packs
		if superseding && len(f.Packs) > 0 {
			t.Errorf("index file %d lists packs after a file that supersedes", i)
		}
		superseding = superseding || len(f.Supersedes) > 0
	}
	if res.Sweep.IndexWritten != sweepFiles[len(sweepFiles)-1].String() {
		t.Errorf("IndexWritten %s is not the last file written", res.Sweep.IndexWritten)
	}
	if warn := checkOn(t, full); len(warn) > 0 {
		t.Fatalf("warnings after a split sweep: %v", warn)
	}
	restoreOn(t, full, s2.Snapshot.Tree, a, ma)

	for n := 1; n < res.Sweep.IndexFilesWritten; n++ {
		be := cloneMem(t, base)
		k := &indexKill{Backend: be, n: n}
		if _, err := Run(ctx, openOn(t, k), opts); !errors.Is(err, errKilled) {
			t.Fatalf("stopped after %d index files: %v", n, err)
		}
		checkOn(t, be)
		restoreOn(t, be, s2.Snapshot.Tree, a, ma)
		if _, err := openOn(t, be).BreakLeases(ctx); err != nil {
			t.Fatal(err)
		}
		res, err := Run(ctx, openOn(t, be), opts)
		if err != nil {
			t.Fatalf("stopped after %d index files, next prune: %v", n, err)
		}
		if res.Sweep.Deleted.Packs == 0 {
			t.Errorf("stopped after %d index files: the next prune deleted no pack", n)
		}
		if warn := checkOn(t, be); len(warn) > 0 {
			t.Fatalf("stopped after %d index files: warnings after the next prune: %v", n, warn)
		}
		restoreOn(t, be, s2.Snapshot.Tree, a, ma)
	}
}
