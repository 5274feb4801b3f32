package local

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

// A streamed object (SaveStream) written with SetDirectIO, in pieces of
// every kind of size, comes back whole and leaves at most its last
// partial page in the page cache; unaligned large reads of it (bounced)
// read it right without bringing it into the cache.
func TestDirectStream(t *testing.T) {
	b, dir := newRepo(t)
	if !DirectSuits(dir) {
		t.Skipf("%s is not on a file system direct I/O suits", dir)
	}
	b.SetDirectIO(true)
	ctx := context.Background()
	for i, size := range []int{0, 1, directio.Align - 1, directio.Align, streamStage - 1, streamStage, streamStage + 1, (streamQueue+3)*streamStage + 4097} {
		data := pattern(size)
		pw, err := b.SaveStream(ctx, storage.Pack)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := pw.(*pendingFile); !ok || pw.(*pendingFile).direct == nil {
			t.Fatalf("size %d: the stream is not direct", size)
		}
		// pieces of 1 byte to 3 stages, cycling
		pieces := []int{1, 100, directio.Align, 64 << 10, streamStage + 3, 3 * streamStage}
		for off, k := 0, 0; off < size; k++ {
			n := min(pieces[k%len(pieces)], size-off)
			if _, err := pw.Write(data[off : off+n]); err != nil {
				t.Fatalf("size %d: write: %v", size, err)
			}
			off += n
		}
		h := storage.Handle{Type: storage.Pack, Name: storagetest.Name(fmt.Sprintf("stream%d", i))}
		if err := pw.Commit(ctx, h.Name); err != nil {
			t.Fatalf("size %d: commit: %v", size, err)
		}
		got, err := os.ReadFile(b.path(h))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: %d bytes back, equal %v, %v", size, len(got), bytes.Equal(got, data), err)
		}
		// ReadFile read it through the cache: drop it, then read
		// ranges that are not aligned, as a restore does
		if size < 2*directMinRead {
			continue
		}
		dropCache(t, b.path(h))
		o, err := b.OpenRange(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []struct{ off, n int }{{1, directMinRead}, {size - directMinRead - 5, directMinRead + 5}, {4097, size - 8000}} {
			p := make([]byte, r.n)
			if n, err := o.ReadAt(p, int64(r.off)); err != nil || n != r.n || !bytes.Equal(p, data[r.off:r.off+r.n]) {
				t.Fatalf("size %d: ReadAt(%d, %d) = %d, %v", size, r.off, r.n, n, err)
			}
		}
		o.Close()
		if in, total := resident(t, b.path(h)); in > 1 {
			t.Errorf("size %d: %d of %d pages in the page cache after direct writes and bounced reads, want at most the last", size, in, total)
		}
	}
}

// dropCache evicts path's pages from the page cache.
func dropCache(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// A direct stream whose writes fail (here: a descriptor open for reading
// only) reports the error from a later Write or from Commit, leaves no
// file behind and does not hang.
func TestDirectStreamWriteError(t *testing.T) {
	_, dir := newRepo(t)
	path := filepath.Join(dir, "ro")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := newDirectStream(f)
	if s == nil {
		t.Skip("no O_DIRECT here")
	}
	data := pattern(streamStage)
	var werr error
	for i := 0; i < 3*streamQueue && werr == nil; i++ {
		werr = s.write(data)
	}
	ferr := s.finish()
	if werr == nil && ferr == nil {
		t.Fatal("writes to a read-only descriptor succeeded")
	}
	for _, err := range []error{werr, ferr} {
		if err != nil && !errors.Is(err, unix.EBADF) {
			t.Errorf("error %v, want EBADF", err)
		}
	}
}
