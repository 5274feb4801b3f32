package par

import (
	"context"
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
