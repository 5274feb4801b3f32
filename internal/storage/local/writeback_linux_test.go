package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

// dirtyPages counts the pages of f that wait to be written back, with
// cachestat(2) (Linux 6.5); ok is false where the kernel lacks it.
func dirtyPages(t *testing.T, f *os.File) (n uint64, ok bool) {
	t.Helper()
	var st unix.Cachestat_t
	err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &st, 0)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		return 0, false
	}
	if err != nil {
		t.Fatalf("cachestat: %v", err)
	}
	return st.Dirty, true
}

// A streamed object written through the page cache has its write-back
// started as it grows, so that Commit's fsync waits for a little of it,
// not all: at most one step (and the piece that crossed it) stays dirty.
func TestStreamStartsWriteBack(t *testing.T) {
	b, dir := newRepo(t)
	const size, piece = 6*writeBackStep + writeBackStep/2, 64 << 10
	data := pattern(size)

	// a file written without it shows whether this file system keeps
	// dirty pages at all (tmpfs does not write back)
	control, err := os.CreateTemp(filepath.Join(dir, string(storage.Pack)), "control")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	if _, err := control.Write(data); err != nil {
		t.Fatal(err)
	}
	if n, ok := dirtyPages(t, control); !ok || n < size/2/4096 {
		t.Skipf("no dirty pages to see here (cachestat available %v, %d dirty)", ok, n)
	}

	ctx := context.Background()
	pw, err := b.SaveStream(ctx, storage.Pack)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < size; off += piece {
		if _, err := pw.Write(data[off:min(off+piece, size)]); err != nil {
			t.Fatal(err)
		}
	}
	n, _ := dirtyPages(t, pw.(*pendingFile).f)
	if limit := uint64(writeBackStep+piece) / 4096; n > limit {
		t.Errorf("%d pages dirty after %d bytes written, want at most %d: write-back was not started as the object grew", n, size, limit)
	}
	if err := pw.Commit(ctx, storagetest.Name("grown")); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(b.path(storage.Handle{Type: storage.Pack, Name: storagetest.Name("grown")}))
	if err != nil || len(got) != size || string(got) != string(data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
}
