package limit

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

// The machine is shared: these tests assert lower bounds on time only.

func TestConformance(t *testing.T) {
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		// fast limits: the suite moves little data
		return Wrap(mem.New(), NewLimiter(1<<30), NewLimiter(1<<30))
	})
}

func TestNoLimitIsTheBackendItself(t *testing.T) {
	be := mem.New()
	if got := Wrap(be, nil, NewLimiter(0)); got != storage.Backend(be) {
		t.Fatalf("Wrap without limits returned %T, want the backend itself", got)
	}
}

func TestSaveIsLimited(t *testing.T) {
	ctx := context.Background()
	be := Wrap(mem.New(), NewLimiter(4096<<10), nil)
	start := time.Now()
	if err := be.Save(ctx, storage.Handle{Type: storage.Pack, Name: storagetest.Name("a")}, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("1 MiB at 4096 KiB/s took %v, want about 250ms", d)
	}
	// loads are not limited by the upload limit
	start = time.Now()
	if _, err := be.Load(ctx, storage.Handle{Type: storage.Pack, Name: storagetest.Name("a")}, 0, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("unlimited load took %v", time.Since(start))
}

func TestLoadIsLimitedAndShared(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("b")}
	inner.Set(h, make([]byte, 256<<10))
	down := NewLimiter(2048 << 10) // 2 MiB/s shared by two backends
	a, b := Wrap(inner, nil, down), Wrap(inner, nil, down)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 { // 8 x 256 KiB = 2 MiB: about a second
		be := a
		if i%2 == 1 {
			be = b
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			length := int64(0) // whole object: paid after reading
			if i%4 == 0 {
				length = 256 << 10 // known length: paid before
			}
			_, err := be.Load(ctx, h, 0, length)
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 800*time.Millisecond {
		t.Fatalf("2 MiB at 2 MiB/s over two backends took %v, want about 1s", d)
	}
}

func TestWaitHonoursCancel(t *testing.T) {
	be := Wrap(mem.New(), NewLimiter(1024), nil) // 1 KiB/s: a 1 MiB save would take 17 minutes
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("c")}
	err := be.Save(ctx, h, make([]byte, 1<<20))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Save: %v, want the context's error", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("Save returned after %v, not when the context ended", d)
	}
	if _, err := be.Stat(context.Background(), h); !storage.IsNotExist(err) {
		t.Fatalf("the canceled save stored the object: %v", err)
	}
}

func TestLeftoversStayVisible(t *testing.T) {
	lb, err := local.Create(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	be := Wrap(lb, NewLimiter(1<<20), nil)
	if _, ok := storage.As[storage.TempFiles](be); !ok {
		t.Fatal("the limited local backend hides LeftoverTempFiles")
	}
	if _, ok := storage.As[storage.TempFiles](Wrap(mem.New(), NewLimiter(1<<20), nil)); ok {
		t.Fatal("the limited mem backend claims LeftoverTempFiles")
	}
}

// noStream hides the StreamSaver of the backend it wraps.
type noStream struct{ storage.Backend }

func TestStreamedSaveIsLimited(t *testing.T) {
	ctx := context.Background()
	if _, ok := Wrap(noStream{mem.New()}, NewLimiter(1<<20), nil).(storage.StreamSaver); ok {
		t.Fatal("a limited backend that cannot stream claims StreamSaver")
	}
	be := Wrap(mem.New(), NewLimiter(4096<<10), nil)
	// the type assertion, not storage.As: that is how repo looks for it
	ss, ok := be.(storage.StreamSaver)
	if !ok {
		t.Fatal("the limited mem backend hides StreamSaver: packs would be held in memory")
	}
	p, err := ss.SaveStream(ctx, storage.Pack)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 4 {
		if _, err := p.Write(make([]byte, 256<<10)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Commit(ctx, storagetest.Name("s")); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("1 MiB streamed at 4096 KiB/s took %v, want about 250ms", d)
	}
	// a canceled context stops a commit that would wait, and stores nothing
	cctx, cancel := context.WithCancel(ctx)
	p, err = ss.SaveStream(cctx, storage.Pack)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	cancel()
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("c")}
	if err := p.Commit(cctx, h.Name); !errors.Is(err, context.Canceled) {
		t.Fatalf("Commit after cancel: %v, want context.Canceled", err)
	}
	if _, err := be.Stat(ctx, h); !storage.IsNotExist(err) {
		t.Fatalf("the canceled commit stored the object: %v", err)
	}
}

// BenchmarkWait measures what a limiter costs per call when it does not
// make the caller wait (a high limit): the overhead on every save and load.
func BenchmarkWait(b *testing.B) {
	l := NewLimiter(1 << 50)
	ctx := context.Background()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Wait(ctx, 64<<10); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// rangeBackend has the two read paths that repo looks for on the backend
// itself (storage.RangeOpener, storage.RangeStreamer).
type rangeBackend struct{ *mem.Backend }

func (rangeBackend) OpenRange(context.Context, storage.Handle) (storage.ObjectReader, error) {
	return nil, errors.New("not used")
}

func (rangeBackend) OpenStream(context.Context, storage.Handle, int64, int64) (io.ReadCloser, error) {
	return nil, errors.New("not used")
}

// A limited backend has neither of the read paths that bypass Load: its
// readers then load through Load, which pays the download limit. (They are
// found by type assertion on the backend, not by storage.As, which would
// find the unmetered ones beneath.)
func TestLimitedHidesUnmeteredReads(t *testing.T) {
	be := Wrap(rangeBackend{mem.New()}, nil, NewLimiter(1<<20))
	if _, ok := be.(storage.RangeOpener); ok {
		t.Error("a limited backend opens ranges around its limit")
	}
	if _, ok := be.(storage.RangeStreamer); ok {
		t.Error("a limited backend streams ranges around its limit")
	}
}

// Passed counts what was let through part by part, so that a progress
// line sees a large load arrive in steps rather than all at its end.
func TestPassedCountsParts(t *testing.T) {
	var none *Limiter
	if none.Passed() != 0 {
		t.Fatal("a nil limiter passed bytes")
	}
	l := NewLimiter(4096 << 10) // 4 MiB/s: parts of 1 MiB
	done := make(chan error, 1)
	go func() { done <- l.Wait(context.Background(), 3<<20) }()
	var seen []int64
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if got := l.Passed(); got != 3<<20 {
				t.Fatalf("Passed %d after a 3 MiB wait, want %d", got, 3<<20)
			}
			// the last part may show before the wait returns
			for _, n := range seen {
				if n%(1<<20) != 0 || n > 3<<20 {
					t.Fatalf("Passed %d while waiting: want whole parts of 1 MiB, up to 3 MiB", n)
				}
			}
			return
		default:
			if n := l.Passed(); len(seen) == 0 || seen[len(seen)-1] != n {
				seen = append(seen, n)
			}
			time.Sleep(time.Millisecond)
		}
	}
}
