package local

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

// resident counts the pages of path in the page cache.
func resident(t *testing.T, path string) (in, total int) {
	t.Helper()
	in, total, err := directio.CachedPages(path)
	if err != nil {
		t.Fatal(err)
	}
	return in, total
}

// An object saved with SetDirectIO does not go through the page cache
// (but its last partial page), and one saved without does: the point of
// direct I/O is the copy and the cache pages it saves.
func TestDirectIOBypassesPageCache(t *testing.T) {
	b, dir := newRepo(t)
	probe := filepath.Join(dir, "probe")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if fd, err := unix.Open(probe, unix.O_RDONLY|unix.O_DIRECT, 0); err != nil {
		t.Skipf("the file system of %s has no O_DIRECT: %v", dir, err)
	} else {
		unix.Close(fd)
	}
	ctx := context.Background()
	data := copyAligned(pattern(4<<20 + 100))
	for _, direct := range []bool{false, true} {
		b.SetDirectIO(direct)
		h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("cache" + map[bool]string{false: "buffered", true: "direct"}[direct])}
		if err := b.Save(ctx, h, data); err != nil {
			t.Fatal(err)
		}
		in, total := resident(t, b.path(h))
		switch {
		case direct && in > 1:
			t.Errorf("direct save: %d of %d pages in the page cache, want at most the last", in, total)
		case !direct && in < total-1:
			t.Errorf("buffered save: %d of %d pages in the page cache (mincore tells nothing here?)", in, total)
		}
		if !direct {
			continue
		}
		// large aligned reads go around the cache too
		o, err := b.OpenRange(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		buf := directio.Buffer(1 << 20)
		for off := int64(0); off+int64(len(buf)) <= int64(len(data)); off += int64(len(buf)) {
			if _, err := o.ReadAt(buf, off); err != nil {
				t.Fatal(err)
			}
		}
		o.Close()
		if in, total := resident(t, b.path(h)); in > 1 {
			t.Errorf("after direct reads: %d of %d pages in the page cache, want at most the last", in, total)
		}
	}
}
