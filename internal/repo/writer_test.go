package repo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
)

// A Writer's blobs count as present while it runs; Abort indexes the
// packs that reached storage and drops the open one (what an interrupted
// backup or copy leaves), Finish stores everything, and neither Writer
// takes blobs afterwards.
func TestWriterLifetime(t *testing.T) {
	for _, streamed := range []bool{true, false} {
		t.Run(fmt.Sprintf("streamed=%v", streamed), func(t *testing.T) {
			ctx := context.Background()
			r, be := newSmallPackRepo(t, streamed)
			w := r.StartWriting()
			var refs []hash.Ref
			// the first two are stored (in one pack when streamed, else
			// rotated before the buffer would grow: two), the third
			// stays in the open pack
			for range 3 {
				data := randomBytes(600 << 10)
				ref, isNew, _, err := w.SaveBlob(ctx, DataBlob, r.BlobKey(data), data)
				if err != nil || !isNew {
					t.Fatalf("SaveBlob: new=%v %v", isNew, err)
				}
				if !r.HasBlob(BlobHandle{DataBlob, ref.ID}) {
					t.Fatal("a blob pending in a Writer is not reported by HasBlob")
				}
				refs = append(refs, ref)
			}
			if err := w.Abort(ctx); err != nil {
				t.Fatal(err)
			}
			wantPacks := uint64(1)
			if !streamed {
				wantPacks = 2
			}
			if st := w.Stats(); st.Blobs != 2 || st.Packs != wantPacks {
				t.Fatalf("after Abort: %+v, want the 2 blobs of the %d stored pack(s)", st, wantPacks)
			}
			if r.HasBlob(BlobHandle{DataBlob, refs[2].ID}) {
				t.Fatal("a blob of the dropped open pack is still reported present")
			}
			if _, _, _, err := w.SaveBlob(ctx, DataBlob, hash.ID{}, []byte("late")); !errors.Is(err, ErrWriterEnded) {
				t.Fatalf("SaveBlob after Abort: %v, want ErrWriterEnded", err)
			}
			r2 := reopen(t, be)
			for i, ref := range refs {
				if has := r2.HasBlob(BlobHandle{DataBlob, ref.ID}); has != (i < 2) {
					t.Fatalf("blob %d in the index after Abort: %v", i, has)
				}
			}

			w2 := r2.StartWriting()
			data := randomBytes(1000)
			if _, isNew, _, err := w2.SaveBlob(ctx, DataBlob, r2.BlobKey(data), data); err != nil || !isNew {
				t.Fatalf("SaveBlob: new=%v %v", isNew, err)
			}
			if err := w2.Finish(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := w2.SaveRawBlob(ctx, DataBlob, StoredBlobID(DataBlob, nil), nil, 0, true); !errors.Is(err, ErrWriterEnded) {
				t.Fatalf("SaveRawBlob after Finish: %v, want ErrWriterEnded", err)
			}
			if err := w2.Finish(ctx); err != nil {
				t.Fatalf("a second Finish: %v", err)
			}
			if got := r2.SavedStats(); got.Blobs != 1 || got.Packs != 1 {
				t.Fatalf("SavedStats = %+v", got)
			}
			n := 0
			be.List(ctx, storage.Pack, func(storage.FileInfo) error { n++; return nil })
			if uint64(n) != wantPacks+1 {
				t.Fatalf("%d packs stored, want %d", n, wantPacks+1)
			}
		})
	}
}

// parallelBackend is a streaming memory backend that spreads saves over
// conns connections (storage.ParallelSaver) and records how many pack
// commits run at once. The first commit waits, up to two seconds, for
// another to join it, so that a writer uploading one pack at a time shows
// as a peak of 1.
type parallelBackend struct {
	*mem.Backend
	conns int

	mu       sync.Mutex
	inFlight int
	peak     int
	joined   chan struct{} // closed when two commits ran at once, or one waited in vain
	once     sync.Once
}

func (b *parallelBackend) ParallelSaves() int { return b.conns }

func (b *parallelBackend) SaveStream(ctx context.Context, t storage.FileType) (storage.PendingObject, error) {
	p, err := b.Backend.SaveStream(ctx, t)
	if err != nil || t != storage.Pack {
		return p, err
	}
	return &gatedObject{PendingObject: p, b: b}, nil
}

type gatedObject struct {
	storage.PendingObject
	b *parallelBackend
}

func (g *gatedObject) Commit(ctx context.Context, name string) error {
	b := g.b
	b.mu.Lock()
	b.inFlight++
	b.peak = max(b.peak, b.inFlight)
	if b.inFlight >= 2 {
		b.once.Do(func() { close(b.joined) })
	}
	b.mu.Unlock()
	select {
	case <-b.joined:
	case <-time.After(2 * time.Second):
		b.once.Do(func() { close(b.joined) }) // alone: no use waiting again
	}
	err := g.PendingObject.Commit(ctx, name)
	b.mu.Lock()
	b.inFlight--
	b.mu.Unlock()
	return err
}

// A backend with several connections gets several pack uploads at once
// (one TCP connection cannot fill a far link; bench/REMOTE.md), and every
// blob is stored and indexed; one connection keeps one upload at a time.
func TestWriterUploadsPerConnection(t *testing.T) {
	for _, conns := range []int{1, 4} {
		t.Run(fmt.Sprintf("connections=%d", conns), func(t *testing.T) {
			ctx := context.Background()
			be := &parallelBackend{Backend: mem.New(), conns: conns, joined: make(chan struct{})}
			if conns == 1 {
				be.once.Do(func() { close(be.joined) }) // nothing to wait for
			}
			r, _, err := Init(ctx, be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
			if err != nil {
				t.Fatal(err)
			}
			r.cfg.PackSize = 1 << 20
			w := r.StartWriting()
			var refs []hash.Ref
			for range 12 { // 12 MiB: a dozen packs
				data := randomBytes(1 << 20)
				ref, _, _, err := w.SaveBlob(ctx, DataBlob, r.BlobKey(data), data)
				if err != nil {
					t.Fatal(err)
				}
				refs = append(refs, ref)
			}
			if err := w.Finish(ctx); err != nil {
				t.Fatal(err)
			}
			wantPeak := min(conns, 2) // the gate lets the second one go
			if be.peak < wantPeak || (conns == 1 && be.peak != 1) {
				t.Errorf("%d connections: at most %d packs uploaded at once, want %d", conns, be.peak, wantPeak)
			}
			r2, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := r2.LoadIndex(ctx); err != nil {
				t.Fatal(err)
			}
			for i, ref := range refs {
				if _, err := r2.LoadBlob(ctx, DataBlob, ref, nil); err != nil {
					t.Errorf("blob %d after reopening: %v", i, err)
				}
			}
		})
	}
}

// countingBackend is a streaming memory backend that counts the writes
// to pending packs, and fails them from the failAt-th on (0: never).
type countingBackend struct {
	*mem.Backend
	mu     sync.Mutex
	writes int
	failAt int
}

func (b *countingBackend) SaveStream(ctx context.Context, t storage.FileType) (storage.PendingObject, error) {
	p, err := b.Backend.SaveStream(ctx, t)
	if err != nil || t != storage.Pack {
		return p, err
	}
	return &countedObject{PendingObject: p, b: b}, nil
}

type countedObject struct {
	storage.PendingObject
	b *countingBackend
}

func (o *countedObject) Write(p []byte) (int, error) {
	o.b.mu.Lock()
	o.b.writes++
	fail := o.b.failAt > 0 && o.b.writes >= o.b.failAt
	o.b.mu.Unlock()
	if fail {
		return 0, errors.New("disk full")
	}
	return o.PendingObject.Write(p)
}

// Small blobs (trees) reach a streamed pack a batch at a time, not one
// write call each, in their order among large ones, and every one reads
// back; a write that fails still fails the Writer.
func TestWriterGathersSmallBlobs(t *testing.T) {
	ctx := context.Background()
	be := &countingBackend{Backend: mem.New()}
	r, _, err := Init(ctx, be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	w := r.StartWriting()
	type saved struct {
		t   BlobType
		ref hash.Ref
		n   int
	}
	var all []saved
	for i := range 1000 {
		typ, n := TreeBlob, 300+i%200
		if i%400 == 399 {
			typ, n = DataBlob, 200<<10 // larger than what is gathered
		}
		data := randomBytes(n)
		ref, _, _, err := w.SaveBlob(ctx, typ, r.BlobKey(data), data)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, saved{typ, ref, n})
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	// ~500 KB of small blobs: about 8 gathered writes, 2 large blobs, 2
	// trailers
	t.Logf("%d writes", be.writes)
	if be.writes > 30 {
		t.Errorf("%d writes for 1000 blobs", be.writes)
	}
	r2, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	for i, s := range all {
		b, err := r2.LoadBlob(ctx, s.t, s.ref, nil)
		if err != nil || len(b) != s.n {
			t.Fatalf("blob %d: %d bytes, %v", i, len(b), err)
		}
	}

	bad := &countingBackend{Backend: mem.New(), failAt: 1}
	r3, _, err := Init(ctx, bad, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	w3 := r3.StartWriting()
	data := randomBytes(300)
	if _, _, _, err := w3.SaveBlob(ctx, TreeBlob, r3.BlobKey(data), data); err != nil {
		t.Fatal(err)
	}
	if err := w3.Finish(ctx); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Finish after a failed write: %v", err)
	}
}

// countMap is a ui.Counters for tests.
type countMap struct {
	mu sync.Mutex
	m  map[string]int64
}

func (c *countMap) Count(name string, n int64) {
	c.mu.Lock()
	c.m[name] += n
	c.mu.Unlock()
}

func (c *countMap) get(name string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[name]
}

// CountUploads counts the stored bytes of new blobs as they are queued and
// again as their pack reaches the storage: what lies between is what a
// backup still waits for once it has read everything.
func TestWriterCountsUploads(t *testing.T) {
	for _, streamed := range []bool{true, false} {
		t.Run(fmt.Sprintf("streamed=%v", streamed), func(t *testing.T) {
			ctx := context.Background()
			r, _ := newSmallPackRepo(t, streamed)
			w := r.StartWriting()
			c := &countMap{m: map[string]int64{}}
			w.CountUploads(c)
			var stored int64
			for range 3 {
				data := randomBytes(600 << 10)
				_, _, n, err := w.SaveBlob(ctx, DataBlob, r.BlobKey(data), data)
				if err != nil {
					t.Fatal(err)
				}
				stored += int64(n)
			}
			// a blob it has is neither queued nor uploaded again
			data := randomBytes(1 << 10)
			_, _, n, err := w.SaveBlob(ctx, DataBlob, r.BlobKey(data), data)
			if err != nil {
				t.Fatal(err)
			}
			stored += int64(n)
			if _, isNew, _, err := w.SaveBlob(ctx, DataBlob, r.BlobKey(data), data); err != nil || isNew {
				t.Fatalf("saved again: new=%v %v", isNew, err)
			}
			if q := c.get(CountQueued); q != stored {
				t.Fatalf("queued %d, want the %d stored bytes of the new blobs", q, stored)
			}
			if u := c.get(CountUploaded); u >= stored {
				t.Fatalf("uploaded %d of %d before Finish, with a pack still open", u, stored)
			}
			if err := w.Finish(ctx); err != nil {
				t.Fatal(err)
			}
			if u, st := c.get(CountUploaded), w.Stats(); u != stored || uint64(u) != st.StoredBytes {
				t.Fatalf("uploaded %d after Finish, want %d (stats %d)", u, stored, st.StoredBytes)
			}
		})
	}
}
