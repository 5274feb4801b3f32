package backup

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/slab"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/testutil"
)

var errDiskFull = errors.New("no space left on device (simulated)")

// fullDisk fails every pack saved after the first okPacks, like a disk
// that fills up during a backup; full reset, it takes everything again.
type fullDisk struct {
	storage.Backend
	mu      sync.Mutex
	okPacks int
	packs   int // packs saved
	full    bool
}

func (d *fullDisk) Save(ctx context.Context, h storage.Handle, data []byte) error {
	if h.Type == storage.Pack {
		d.mu.Lock()
		if d.full && d.packs >= d.okPacks {
			d.mu.Unlock()
			return errDiskFull
		}
		d.packs++
		d.mu.Unlock()
	}
	return d.Backend.Save(ctx, h, data)
}

// A backup stopped by a storage error still indexes every pack that
// reached storage, so that the retry does not upload them again.
func TestBackupStoppedIndexesStoredPacks(t *testing.T) {
	ctx := context.Background()
	mb := mem.New()
	disk := &fullDisk{Backend: mb, okPacks: 2, full: true}
	r, _, err := repo.Init(ctx, disk, repo.Credential{Password: []byte(testutil.Password)}, repo.InitOptions{KDF: testutil.CheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	// incompressible: 3 files of 16 MiB fill more than 2 packs
	for i := 0; i < 3; i++ {
		testutil.WriteRandom(t, filepath.Join(src, string(rune('a'+i))), repo.DefaultPackSize, uint64(i))
	}
	if _, err := Run(ctx, r, Options{Paths: []string{src}}); err == nil {
		t.Fatal("backup on a full disk succeeded")
	}
	if n := slab.Lent(); n != 0 {
		t.Errorf("%d chunk or seal buffers not given back by the stopped backup", n)
	}
	if disk.packs != 2 {
		t.Fatalf("%d packs stored before the disk filled up, want 2", disk.packs)
	}

	disk.mu.Lock()
	disk.full, disk.packs = false, 0
	disk.mu.Unlock()
	r2, err := repo.Open(ctx, disk, repo.Credential{Password: []byte(testutil.Password)}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, r2, Options{Paths: []string{src}}); err != nil {
		t.Fatal(err)
	}
	if n := slab.Lent(); n != 0 {
		t.Errorf("%d chunk or seal buffers not given back by the backup", n)
	}
	// 48 MiB in 16 MiB packs: the retry stores the third pack's worth (and
	// a tree pack), not the two packs that reached storage.
	if saved := r2.SavedStats(); saved.StoredBytes > 20<<20 {
		t.Errorf("the retry stored %d MiB in %d packs: the packs of the stopped backup were not indexed",
			saved.StoredBytes>>20, saved.Packs)
	}
}
