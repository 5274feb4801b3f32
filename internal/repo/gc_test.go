package repo

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

func TestGCMarkRoundTrip(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	m := &GCMark{Time: time.Now().UTC().Truncate(time.Second), Packs: []hash.ID{{1}, {2}}, Unindexed: []hash.ID{{2}}, SupersedeIndex: []hash.ID{{3}}}
	id, err := r.SaveGCMark(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.LoadGCMark(ctx, id)
	if err != nil || !got.Time.Equal(m.Time) || len(got.Packs) != 2 || got.Unindexed[0] != (hash.ID{2}) || got.SupersedeIndex[0] != (hash.ID{3}) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	// a damaged mark is reported as such, and LoadGCMarks skips it
	h := storage.Handle{Type: storage.GCMark, Name: id.String()}
	data, _ := be.Get(h)
	bad := bytes.Clone(data)
	bad[len(bad)-20] ^= 1 // in the signature
	badID := hash.Sum(bad)
	be.Set(storage.Handle{Type: storage.GCMark, Name: badID.String()}, bad)
	if _, err := r.LoadGCMark(ctx, badID); !errors.Is(err, ErrDamagedMark) {
		t.Fatalf("damaged mark: %v", err)
	}
	marks, damaged, err := r.LoadGCMarks(ctx)
	if err != nil || len(marks) != 1 || len(damaged) != 1 {
		t.Fatalf("LoadGCMarks: %d marks, %d damaged, %v", len(marks), len(damaged), err)
	}
	if err := r.RemoveGCMark(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := r.LoadGCMark(ctx, id); !storage.IsNotExist(err) {
		t.Fatalf("removed mark: %v", err)
	}
}

// disappearing removes an index file when it is first loaded, after
// saving the file that supersedes it: a prune that sweeps while the index
// is being loaded.
type disappearing struct {
	storage.Backend
	victim  string
	replace func()
}

func (d *disappearing) Load(ctx context.Context, h storage.Handle, off, n int64) ([]byte, error) {
	if h.Type == storage.Index && h.Name == d.victim && d.replace != nil {
		d.replace()
		d.replace = nil
		d.Backend.Remove(ctx, h)
	}
	return d.Backend.Load(ctx, h, off, n)
}

func TestLoadIndexWhileSwept(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	data := randomBytes(1000)
	ref := save(t, r, data)
	if err := flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	old, _ := r.ListIDs(ctx, storage.Index)
	f, err := r.LoadIndexFile(ctx, old[0])
	if err != nil {
		t.Fatal(err)
	}
	d := &disappearing{Backend: be, victim: old[0].String(), replace: func() {
		if _, err := r.SaveIndexFile(ctx, &IndexFile{Supersedes: old, Packs: f.Packs}); err != nil {
			t.Fatal(err)
		}
	}}
	r2, err := Open(ctx, d, Credential{Password: []byte("pw")}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatalf("LoadIndex during a sweep: %v", err)
	}
	if got, err := r2.LoadBlob(ctx, DataBlob, ref, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("LoadBlob: %v", err)
	}
}

func TestMarkedPacks(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	data := randomBytes(1000)
	ref := save(t, r, data)
	h := BlobHandle{DataBlob, ref.ID}
	if err := flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	loc, _ := r.Index().Lookup(h)
	if _, err := r.SaveGCMark(ctx, &GCMark{Time: time.Now(), Packs: []hash.ID{loc.Pack}}); err != nil {
		t.Fatal(err)
	}
	r2, _ := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if r2.HasBlob(h) || !r2.Index().Has(h) || !r2.Index().Marked(loc.Pack) {
		t.Fatal("a blob only in a marked pack: want absent for HasBlob, present in the index")
	}
	if _, isNew, _, err := writerOf(r2).SaveBlob(ctx, h.Type, ref.Key, data); !isNew || err != nil {
		t.Fatalf("SaveBlob: %v %v", isNew, err)
	}
	if err := flush(ctx, r2); err != nil {
		t.Fatal(err)
	}
	// a reader that loads both copies prefers the unmarked one, in any order
	r3, _ := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
	if err := r3.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if l, _ := r3.Index().Lookup(h); l.Pack == loc.Pack || !r3.HasBlob(h) {
		t.Fatal("the copy in the marked pack is preferred")
	}
	if got, err := r3.LoadBlob(ctx, DataBlob, ref, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatal(err)
	}
	// the stored copy counts as referenced: VerifyReferences passes for r2
	r2.SetGCGrace(0)
	if err := r2.VerifyReferences(ctx); err != nil {
		t.Fatal(err)
	}
	// and fails once a mark names the new pack too
	l2, _ := r2.Index().Lookup(h)
	r.SaveGCMark(ctx, &GCMark{Time: time.Now(), Packs: []hash.ID{l2.Pack}})
	var rg *ReferencesGoneError
	if err := r2.VerifyReferences(ctx); !errors.As(err, &rg) || rg.Blobs != 1 {
		t.Fatalf("own pack marked: %v", err)
	}
}
