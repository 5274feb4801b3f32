package par

import (
	"context"
	"hash/fnv"
	"sync/atomic"
	"testing"
)

func TestForVisitsEachOnce(t *testing.T) {
	seen := make([]atomic.Int32, 1000)
	var maxWorker atomic.Int32
	For(context.Background(), len(seen), 4, func(w, i int) {
		seen[i].Add(1)
		if int32(w) > maxWorker.Load() {
			maxWorker.Store(int32(w))
		}
	})
	for i := range seen {
		if seen[i].Load() != 1 {
			t.Fatalf("item %d visited %d times", i, seen[i].Load())
		}
	}
	if maxWorker.Load() > 3 {
		t.Fatalf("worker index %d, want < 4", maxWorker.Load())
	}
}

func TestForStopsOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int32
	For(ctx, 1000, 2, func(w, i int) {
		if calls.Add(1) == 10 {
			cancel()
		}
	})
	if n := calls.Load(); n >= 1000 {
		t.Fatalf("%d calls after cancel", n)
	}
}

// BenchmarkFor measures the cost per item of handing out work (the items
// themselves do almost nothing): what par adds to a loop over packs or files.
func BenchmarkFor(b *testing.B) {
	var sink atomic.Int64
	for b.Loop() {
		For(context.Background(), 1000, 8, func(w, i int) { sink.Add(int64(i)) })
	}
}

// BenchmarkForSmallItems is closer to the callers: each item is a small
// piece of CPU work (hashing 16 KiB, about the least a file or pack costs).
func BenchmarkForSmallItems(b *testing.B) {
	data := make([]byte, 16<<10)
	var sink atomic.Uint64
	for b.Loop() {
		For(context.Background(), 1000, 8, func(w, i int) {
			h := fnv.New64a()
			h.Write(data)
			sink.Add(h.Sum64())
		})
	}
}
