package mount

import (
	"context"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/testutil"
)

// BenchmarkBlobCacheHits reads cached blobs from two goroutines, as the
// kernel's reads of an open file do: the cost of the LRU and of the
// in-flight bookkeeping on the path that does not load.
func BenchmarkBlobCacheHits(b *testing.B) {
	ctx := context.Background()
	r := newRepo(b)
	var ids []hash.Ref
	w := r.StartWriting()
	for i := range 16 {
		data := testutil.RandomBytes(uint64(i), 4<<10)
		id, _, _, err := w.SaveBlob(ctx, repo.DataBlob, r.BlobKey(data), data)
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := w.Finish(ctx); err != nil {
		b.Fatal(err)
	}
	c := newBlobCache(ctx, r, 1<<20, 2)
	for _, id := range ids {
		if _, err := c.get(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := c.get(ctx, ids[i%len(ids)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
