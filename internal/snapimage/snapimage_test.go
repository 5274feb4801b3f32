package snapimage

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/nbd"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/testutil/backuptest"
	"github.com/floe-backup/floe/internal/walk"
)

func TestImage(t *testing.T) {
	ctx := context.Background()
	r, _ := testutil.NewRepo(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.img")
	const size = 48 << 20
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	rng := rand.New(rand.NewSource(3))
	for _, at := range []int64{0, 20 << 20, size - 3<<20} {
		b := make([]byte, 3<<20)
		rng.Read(b)
		f.WriteAt(b, at)
	}
	f.Close()
	want, _ := os.ReadFile(path)

	sn := backuptest.Backup(t, r, backup.Options{Paths: []string{dir}})
	_, node, err := walk.Resolve(ctx, snapshot.RepoTrees{Repo: r}, sn.Tree, path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := Open(ctx, r, node, path, 8<<20) // a cache smaller than the data
	if err != nil {
		t.Fatal(err)
	}
	if img.Size() != size {
		t.Fatalf("size %d", img.Size())
	}
	// reads at odd offsets and lengths, concurrently
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for i := 0; i < 50; i++ {
				off := rng.Int63n(size)
				n := min(rng.Int63n(4<<20)+1, size-off)
				got := make([]byte, n)
				if _, err := img.ReadAt(got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, want[off:off+n]) {
					t.Errorf("read of %d at %d differs", n, off)
					return
				}
			}
		}(int64(w))
	}
	wg.Wait()
	got := make([]byte, size)
	if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("whole read: %v", err)
	}
	// the holes are holes (most of the file), the data is data
	ex, err := img.Extents(0, size)
	if err != nil {
		t.Fatal(err)
	}
	var holes, total int64
	for _, e := range ex {
		if e.Hole {
			holes += e.Length
		}
		total += e.Length
	}
	if total != size || holes < size-12<<20 || holes > size-9<<20 {
		t.Fatalf("extents %v: %d of %d bytes in holes", ex, holes, total)
	}
	if _, err := img.ReadAt(make([]byte, 10), size-5); err == nil {
		t.Fatal("read past the end")
	}
	var _ nbd.Image = img
}

func TestDamagedNode(t *testing.T) {
	r, _ := testutil.NewRepo(t)
	n := &snapshot.Node{Name: "x", Type: snapshot.TypeFile, Size: 10, ChunkSizes: []uint32{10}}
	if _, err := Open(context.Background(), r, n, "x", 0); err == nil {
		t.Fatal("a node with more sizes than blobs opened")
	}
	n = &snapshot.Node{Name: "d", Type: snapshot.TypeDir}
	if _, err := Open(context.Background(), r, n, "d", 0); err == nil {
		t.Fatal("a directory opened")
	}
}

// TestHostileChunkSize: a tree that claims a chunk of zeros (a blob that
// compresses to almost nothing) is 4 GiB long does not make Open allocate
// and hash 4 GiB of zeros to compare keys: no chunk is longer than the
// chunker's maximum, so that chunk is no hole.
func TestHostileChunkSize(t *testing.T) {
	ctx := context.Background()
	r, _ := testutil.NewRepo(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "sparse.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 20<<20); err != nil {
		t.Fatal(err)
	}
	sn := backuptest.Backup(t, r, backup.Options{Paths: []string{dir}})
	_, node, err := walk.Resolve(ctx, snapshot.RepoTrees{Repo: r}, sn.Tree, path)
	if err != nil || len(node.ChunkSizes) == 0 {
		t.Fatalf("resolve: %v (%d chunks)", err, len(node.ChunkSizes))
	}
	hostile := *node
	hostile.ChunkSizes = append([]uint32(nil), node.ChunkSizes...)
	hostile.Size += uint64(1<<32-1) - uint64(hostile.ChunkSizes[0])
	hostile.ChunkSizes[0] = 1<<32 - 1
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	img, err := Open(ctx, r, &hostile, path, 0)
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 256<<20 {
		t.Errorf("Open allocated %d MiB for a hostile chunk length", grew>>20)
	}
	if err == nil && img.hole[0] {
		t.Error("a chunk longer than any chunk taken for a hole")
	}
}

// TestCacheRecyclesUnpinned: the buffer of an evicted entry serves a later
// load only once no reader holds it.
func TestCacheRecyclesUnpinned(t *testing.T) {
	c := newCache(2 * allocGranule)
	var bufs [][]byte
	load := func(fill byte) func([]byte) ([]byte, error) {
		return func(buf []byte) ([]byte, error) {
			bufs = append(bufs, buf)
			return append(buf, bytes.Repeat([]byte{fill}, 1000)...), nil
		}
	}
	ref := func(b byte) hash.Ref { return hash.Ref{ID: hash.ID{b}} }
	a, err := c.get(ref(1), 1000, load(1))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := c.get(ref(2), 1000, load(2))
	c.release(b)
	d, _ := c.get(ref(3), 1000, load(3)) // evicts a, which is pinned
	c.release(d)
	if _, ok := c.byID[ref(1)]; ok {
		t.Fatal("a is still cached")
	}
	e, _ := c.get(ref(4), 1000, load(4)) // evicts b: free, but a is not
	if &bufs[3][:1][0] == &a.data[:1][0] {
		t.Fatal("a pinned buffer was handed to a load")
	}
	if !bytes.Equal(a.data, bytes.Repeat([]byte{1}, 1000)) {
		t.Fatal("a pinned entry's data changed")
	}
	c.release(e)
	c.release(a)
	if len(c.free) == 0 {
		t.Fatal("no buffer freed")
	}
	free := map[*byte]bool{}
	for _, f := range c.free {
		free[&f[:1][0]] = true
	}
	if !free[&a.data[:1][0]] {
		t.Fatal("a's buffer is not free once released")
	}
	c.get(ref(5), 1000, load(5))
	if !free[&bufs[4][:1][0]] {
		t.Fatal("the load got a fresh buffer, not a free one")
	}
}
