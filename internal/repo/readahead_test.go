package repo

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// packLoadCounter counts Loads of packs (a plain Backend: every read is a
// Load, one request).
type packLoadCounter struct {
	storage.Backend
	mu    sync.Mutex
	loads int
	bytes int64
}

func (c *packLoadCounter) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	b, err := c.Backend.Load(ctx, h, offset, length)
	if h.Type == storage.Pack {
		c.mu.Lock()
		c.loads++
		c.bytes += int64(len(b))
		c.mu.Unlock()
	}
	return b, err
}

func (c *packLoadCounter) count() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.loads, c.bytes
}

// aheadRepo stores n random blobs of size bytes as tree blobs, in order,
// and reopens the repository over a counting backend.
func aheadRepo(t *testing.T, n, size int) (*Repository, *packLoadCounter, []hash.Ref, [][]byte) {
	t.Helper()
	ctx := context.Background()
	r, be := newRepo(t)
	datas := make([][]byte, n)
	refs := make([]hash.Ref, n)
	for i := range datas {
		datas[i] = randomBytes(size)
		ref, _, _, err := writerOf(r).SaveBlob(ctx, TreeBlob, r.BlobKey(datas[i]), datas[i])
		if err != nil {
			t.Fatal(err)
		}
		refs[i] = ref
	}
	if err := flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	c := &packLoadCounter{Backend: be}
	return reopen(t, c), c, refs, datas
}

// Groups hinted and loaded in order are read by a few stretches; the
// stretches held stay within their bound however many are read; every
// blob is byte-exact.
func TestReadAheadGroupsAndBound(t *testing.T) {
	ctx := context.Background()
	const n, size, group = 400, 2 << 10, 20
	r, c, refs, datas := aheadRepo(t, n, size)
	a := r.NewReadAhead(TreeBlob)
	a.maxHeld, a.maxFetch = 64<<10, 32<<10
	peak := 0
	for g := 0; g < n; g += group {
		a.Hint(refs[g : g+group])
		for i := g; i < g+group; i++ {
			got, err := a.Load(ctx, refs[i], nil)
			if err != nil || !bytes.Equal(got, datas[i]) {
				t.Fatalf("blob %d: %v", i, err)
			}
			peak = max(peak, a.HeldBytes())
		}
	}
	loads, read := c.count()
	if loads*5 > n {
		t.Fatalf("%d loads for %d blobs", loads, n)
	}
	// at most the bound and the one stretch that pushed the others out
	// (a group's range and a little below it: under 64 KiB here)
	if peak > 64<<10+64<<10 {
		t.Fatalf("held %d bytes at most, bound 64 KiB", peak)
	}
	if read > 2*int64(n*size) {
		t.Fatalf("read %d bytes for %d of blobs", read, n*size)
	}
	t.Logf("%d blobs in groups of %d: %d loads, %d bytes read, at most %d held", n, group, loads, read, peak)
}

// A blob loaded out of its group's order (a path being resolved) is read
// by itself, exactly: nothing of its siblings. A second one of the group
// reads the rest of it.
func TestReadAheadLookupReadsOneBlob(t *testing.T) {
	ctx := context.Background()
	r, c, refs, datas := aheadRepo(t, 40, 2<<10)
	a := r.NewReadAhead(TreeBlob)
	a.Hint(refs[:20])
	if got, err := a.Load(ctx, refs[10], nil); err != nil || !bytes.Equal(got, datas[10]) {
		t.Fatal(err)
	}
	loads, read := c.count()
	loc, _ := r.Index().Lookup(BlobHandle{TreeBlob, refs[10].ID})
	if loads != 1 || read != int64(loc.Length) || a.HeldBytes() != 0 {
		t.Fatalf("a lookup: %d loads of %d bytes, %d held; want one load of %d", loads, read, a.HeldBytes(), loc.Length)
	}
	if got, err := a.Load(ctx, refs[12], nil); err != nil || !bytes.Equal(got, datas[12]) {
		t.Fatal(err)
	}
	for i := range 20 {
		if got, err := a.Load(ctx, refs[i], nil); err != nil || !bytes.Equal(got, datas[i]) {
			t.Fatalf("blob %d: %v", i, err)
		}
	}
	if loads, _ := c.count(); loads != 2 {
		t.Fatalf("%d loads, want the lookup and one for the rest of the group", loads)
	}
}

// Concurrent loads (mount) share the stretches and their reads.
func TestReadAheadConcurrent(t *testing.T) {
	ctx := context.Background()
	const n = 200
	r, c, refs, datas := aheadRepo(t, n, 1<<10)
	a := r.NewReadAhead(TreeBlob)
	a.Hint(refs)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				got, err := a.Load(ctx, refs[i], nil)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, datas[i]) {
					errs <- errMismatch
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if loads, _ := c.count(); loads > 8 {
		t.Fatalf("%d loads for %d blobs loaded at once", loads, n)
	}
}

var errMismatch = errorString("plaintext differs")

type errorString string

func (e errorString) Error() string { return string(e) }

// A write-only key reads nothing, as LoadBlob.
func TestReadAheadWriteOnly(t *testing.T) {
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	if _, err := wo.NewReadAhead(TreeBlob).Load(context.Background(), hash.Ref{}, nil); err != ErrWriteOnly {
		t.Fatalf("got %v, want ErrWriteOnly", err)
	}
}

// Groups hinted and never entered (directories a diff skips) are
// forgotten, the oldest first, beyond maxAheadHinted; the newest group
// stays whole however large.
func TestReadAheadHintBound(t *testing.T) {
	r, _ := newRepo(t)
	a := r.NewReadAhead(TreeBlob)
	refs := func(seed byte, n int) []hash.Ref {
		out := make([]hash.Ref, n)
		for i := range out {
			out[i].ID[0], out[i].ID[1], out[i].ID[2], out[i].ID[3] = seed, byte(i), byte(i>>8), byte(i>>16)
		}
		return out
	}
	old, recent := refs(1, maxAheadHinted-100), refs(2, 1000)
	a.Hint(old)
	a.Hint(recent)
	if len(a.groups) != len(recent) || a.groups[recent[0].ID] == nil || a.groups[old[0].ID] != nil {
		t.Fatalf("%d hinted; want only the %d of the newest group", len(a.groups), len(recent))
	}
	huge := refs(3, maxAheadHinted+10)
	a.Hint(huge)
	if len(a.groups) != len(huge) || a.groups[huge[len(huge)-1].ID] == nil {
		t.Fatalf("%d hinted; want the %d of the newest group, whole", len(a.groups), len(huge))
	}
}
