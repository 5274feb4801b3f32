package repair

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/testutil"
)

// reindexFixture is a repository written by two writers: the first
// stored three data blobs and a tree blob (packs data1 and tree1, listed
// by index1), the second two data blobs (pack data2, listed by index2).
type reindexFixture struct {
	r                   *repo.Repository
	be                  *mem.Backend
	index1, index2      hash.ID
	data1, tree1, data2 hash.ID
	blobs               []fixtureBlob
}

type fixtureBlob struct {
	t     repo.BlobType
	ref   hash.Ref
	plain []byte
	pack  hash.ID
}

func newReindexFixture(t *testing.T) *reindexFixture {
	t.Helper()
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	f := &reindexFixture{r: r, be: be}
	write := func(seed uint64, data int, tree bool) hash.ID {
		before, _ := r.ListIDs(ctx, storage.Index)
		w := r.StartWriting()
		save := func(typ repo.BlobType, plain []byte) {
			ref, _, _, err := w.SaveBlob(ctx, typ, r.BlobKey(plain), plain)
			if err != nil {
				t.Fatal(err)
			}
			f.blobs = append(f.blobs, fixtureBlob{t: typ, ref: ref, plain: plain})
		}
		for i := range data {
			save(repo.DataBlob, testutil.RandomBytes(seed+uint64(i), 20<<10))
		}
		if tree {
			save(repo.TreeBlob, []byte(`{"nodes":[]}`))
		}
		if err := w.Finish(ctx); err != nil {
			t.Fatal(err)
		}
		after, _ := r.ListIDs(ctx, storage.Index)
		for _, id := range after {
			if !slices.Contains(before, id) {
				return id
			}
		}
		t.Fatal("the writer wrote no index file")
		return hash.ID{}
	}
	f.index1 = write(1, 3, true)
	f.index2 = write(10, 2, false)
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	for i, b := range f.blobs {
		loc, ok := r.Index().Lookup(repo.BlobHandle{Type: b.t, ID: b.ref.ID})
		if !ok {
			t.Fatal("blob not indexed")
		}
		f.blobs[i].pack = loc.Pack
	}
	f.data1, f.tree1, f.data2 = f.blobs[0].pack, f.blobs[3].pack, f.blobs[4].pack
	if f.data1 == f.tree1 || f.data1 == f.data2 || f.blobs[2].pack != f.data1 || f.blobs[5].pack != f.data2 {
		t.Fatalf("unexpected layout of the packs: %+v", f.blobs)
	}
	return f
}

func (f *reindexFixture) handle(t storage.FileType, id hash.ID) storage.Handle {
	return storage.Handle{Type: t, Name: id.String()}
}

// replace stores data under the name of id (damage by the storage).
func (f *reindexFixture) replace(t storage.FileType, id hash.ID, fn func([]byte) []byte) {
	data, _ := f.be.Get(f.handle(t, id))
	f.be.Set(f.handle(t, id), fn(bytes.Clone(data)))
}

// add stores data under its hash and returns the ID.
func (f *reindexFixture) add(t *testing.T, typ storage.FileType, data []byte) hash.ID {
	t.Helper()
	id := hash.Sum(data)
	if err := f.be.Save(context.Background(), f.handle(typ, id), data); err != nil {
		t.Fatal(err)
	}
	return id
}

func (f *reindexFixture) remove(t *testing.T, typ storage.FileType, id hash.ID) {
	t.Helper()
	if err := f.be.Remove(context.Background(), f.handle(typ, id)); err != nil {
		t.Fatal(err)
	}
}

func idsOf(acts []Action, kind Kind) []hash.ID {
	var out []hash.ID
	for _, a := range acts {
		if a.Kind == kind {
			out = append(out, a.ID)
		}
	}
	slices.SortFunc(out, compareIDs)
	return out
}

func sortedIDs(ids ...hash.ID) []hash.ID {
	out := slices.Clone(ids)
	slices.SortFunc(out, compareIDs)
	return out
}

func TestReindex(t *testing.T) {
	type want struct {
		indexed []hash.ID // packs the plan indexes
		removed []hash.ID // damaged index files it removes
		left    []hash.ID // packs it leaves alone
		lost    hash.ID   // a pack whose blobs are not readable after the repair
		reason  string    // in the reason of the first Left (or of the first RemoveDamagedIndex)
	}
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, f *reindexFixture) want
	}{
		{"flipped byte in an index file", func(t *testing.T, f *reindexFixture) want {
			f.replace(storage.Index, f.index1, func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
			return want{indexed: sortedIDs(f.data1, f.tree1), removed: []hash.ID{f.index1}, reason: "content does not match its name"}
		}},
		{"truncated index file", func(t *testing.T, f *reindexFixture) want {
			f.replace(storage.Index, f.index1, func(b []byte) []byte { return b[:len(b)*2/3] })
			return want{indexed: sortedIDs(f.data1, f.tree1), removed: []hash.ID{f.index1}, reason: "content does not match its name"}
		}},
		{"index file deleted", func(t *testing.T, f *reindexFixture) want {
			f.remove(t, storage.Index, f.index1)
			return want{indexed: sortedIDs(f.data1, f.tree1)}
		}},
		{"signature does not verify", func(t *testing.T, f *reindexFixture) want {
			data, _ := f.be.Get(f.handle(storage.Index, f.index1))
			data = bytes.Clone(data)
			data[len(data)-1] ^= 1
			f.remove(t, storage.Index, f.index1)
			bad := f.add(t, storage.Index, data)
			return want{indexed: sortedIDs(f.data1, f.tree1), removed: []hash.ID{bad}, reason: "signature does not verify"}
		}},
		{"index file that does not decode", func(t *testing.T, f *reindexFixture) want {
			bad := f.add(t, storage.Index, []byte("FLIX\x02 not an index file"))
			return want{removed: []hash.ID{bad}, reason: "decode index"}
		}},
		{"index file hidden by a signed one that supersedes it", func(t *testing.T, f *reindexFixture) want {
			// what a full key with a floe server's backup token can do
			if _, err := f.r.SaveIndexFile(context.Background(), &repo.IndexFile{Supersedes: []hash.ID{f.index1}, Packs: []repo.PackInfo{}}); err != nil {
				t.Fatal(err)
			}
			return want{indexed: sortedIDs(f.data1, f.tree1)}
		}},
		{"hidden index file with the very content repair writes", func(t *testing.T, f *reindexFixture) want {
			// the file repair would write is this one (names are hashes):
			// it must supersede it, or the packs stay hidden
			ctx := context.Background()
			x, err := f.r.LoadIndexFile(ctx, f.index1)
			if err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(x.Packs, func(a, b repo.PackInfo) int { return compareIDs(a.ID, b.ID) })
			twin, err := f.r.SaveIndexFile(ctx, &repo.IndexFile{Packs: x.Packs})
			if err != nil {
				t.Fatal(err)
			}
			if twin != f.index1 { // the writer may have listed them in that order
				f.remove(t, storage.Index, f.index1)
			}
			if _, err := f.r.SaveIndexFile(ctx, &repo.IndexFile{Supersedes: []hash.ID{twin}, Packs: []repo.PackInfo{}}); err != nil {
				t.Fatal(err)
			}
			return want{indexed: sortedIDs(f.data1, f.tree1)}
		}},
		{"the name of the file repair writes superseded, no such file stored", func(t *testing.T, f *reindexFixture) want {
			ctx := context.Background()
			x, err := f.r.LoadIndexFile(ctx, f.index1)
			if err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(x.Packs, func(a, b repo.PackInfo) int { return compareIDs(a.ID, b.ID) })
			name, err := f.r.IndexFileID(&repo.IndexFile{Packs: x.Packs})
			if err != nil {
				t.Fatal(err)
			}
			f.remove(t, storage.Index, f.index1)
			if _, err := f.r.SaveIndexFile(ctx, &repo.IndexFile{Supersedes: []hash.ID{name}, Packs: []repo.PackInfo{}}); err != nil {
				t.Fatal(err)
			}
			return want{indexed: sortedIDs(f.data1, f.tree1)}
		}},
		{"a damaged blob in one of the packs", func(t *testing.T, f *reindexFixture) want {
			f.remove(t, storage.Index, f.index1)
			f.remove(t, storage.Index, f.index2)
			f.replace(storage.Pack, f.data2, func(b []byte) []byte { b[100] ^= 1; return b })
			return want{indexed: sortedIDs(f.data1, f.tree1), left: []hash.ID{f.data2}, lost: f.data2,
				reason: "1 blob of 2 that its header lists does not hash to its ID"}
		}},
		{"a forged pack", func(t *testing.T, f *reindexFixture) want {
			f.remove(t, storage.Index, f.index1)
			// garbage under the ID of a genuine blob, as a write-only
			// host can upload it
			b := f.blobs[0]
			loc, _ := f.r.Index().Lookup(repo.BlobHandle{Type: b.t, ID: b.ref.ID})
			garbage := bytes.Repeat([]byte{0x5a}, int(loc.Length))
			forged := f.add(t, storage.Pack, packfile.AppendHeader(garbage, [packfile.UniqueLen]byte{9},
				[]packfile.Blob{{Type: b.t, ID: b.ref.ID, Length: loc.Length}}))
			return want{indexed: sortedIDs(f.data1, f.tree1), left: []hash.ID{forged}, reason: "does not hash to its ID (damaged or forged"}
		}},
		{"a pack whose header does not decode", func(t *testing.T, f *reindexFixture) want {
			bad := f.add(t, storage.Pack, []byte("garbage that is not a pack, somewhat longer than a trailer"))
			return want{left: []hash.ID{bad}, reason: "its header does not decode"}
		}},
		{"a pack whose content does not match its name", func(t *testing.T, f *reindexFixture) want {
			f.remove(t, storage.Index, f.index2)
			data, _ := f.be.Get(f.handle(storage.Pack, f.data2))
			data = bytes.Clone(data)
			// one of the header's random bytes: every blob still verifies
			n := len(data) - packfile.TrailerLen - int(uint32(data[len(data)-12])|uint32(data[len(data)-11])<<8|uint32(data[len(data)-10])<<16|uint32(data[len(data)-9])<<24)
			data[n+1] ^= 1
			f.replace(storage.Pack, f.data2, func([]byte) []byte { return data })
			return want{left: []hash.ID{f.data2}, lost: f.data2, reason: "its content does not match its name"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newReindexFixture(t)
			w := tc.damage(t, f)
			// a fresh process
			r, err := repo.Open(ctx, f.be, repo.Credential{Password: []byte(testutil.Password)}, repo.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			plan, err := Find(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			if got := idsOf(plan.Actions, IndexPack); !slices.Equal(got, w.indexed) {
				t.Errorf("packs indexed: %v, want %v", got, w.indexed)
			}
			if got := idsOf(plan.Actions, RemoveDamagedIndex); !slices.Equal(got, w.removed) {
				t.Errorf("index files removed: %v, want %v", got, w.removed)
			}
			if got := idsOf(plan.Left, LeavePack); !slices.Equal(got, w.left) {
				t.Errorf("packs left alone: %v, want %v", got, w.left)
			}
			if len(plan.Actions) != len(w.indexed)+len(w.removed) {
				t.Errorf("plan %+v: unexpected actions", plan.Actions)
			}
			reasons := plan.Left
			if len(reasons) == 0 {
				reasons = plan.Actions[len(plan.Actions)-len(w.removed):]
			}
			if w.reason != "" && (len(reasons) == 0 || !strings.Contains(reasons[0].Reason, w.reason)) {
				t.Errorf("reasons %+v, want one saying %q", reasons, w.reason)
			}
			for _, a := range plan.Actions {
				if a.Kind == IndexPack && (a.Blobs == 0 || a.Bytes == 0) {
					t.Errorf("action %+v does not say how much it indexes", a)
				}
			}
			if res, err := Apply(ctx, r, plan, ApplyOptions{}); err != nil || len(res.Done) != len(plan.Actions) {
				t.Fatalf("Apply: %+v, %v", res, err)
			}

			// a fresh reader: every index file loads, every blob but the
			// lost pack's reads back, each copy vouched for
			r2, err := repo.Open(ctx, f.be, repo.Credential{Password: []byte(testutil.Password)}, repo.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := r2.LoadIndex(ctx); err != nil {
				t.Fatalf("LoadIndex after repair: %v", err)
			}
			for _, b := range f.blobs {
				h := repo.BlobHandle{Type: b.t, ID: b.ref.ID}
				if b.pack == w.lost {
					if r2.Index().Has(h) {
						t.Errorf("blob %s of the pack left alone is indexed", b.ref.ID.Short())
					}
					continue
				}
				for _, c := range r2.Index().Copies(h) {
					if !c.Trusted {
						t.Errorf("copy %+v not vouched for", c)
					}
				}
				if got, err := r2.LoadBlob(ctx, b.t, b.ref, nil); err != nil || !bytes.Equal(got, b.plain) {
					t.Errorf("blob %s after repair: %v", b.ref.ID.Short(), err)
				}
			}
			again, err := Find(ctx, r2)
			if err != nil || !again.Empty() {
				t.Fatalf("second Find: %+v, %v", again, err)
			}
			if got := idsOf(again.Left, LeavePack); !slices.Equal(got, w.left) {
				t.Errorf("second Find leaves %v alone, want %v", got, w.left)
			}
			// applying the old plan again changes nothing
			before, _ := r2.ListIDs(ctx, storage.Index)
			if _, err := Apply(ctx, r2, plan, ApplyOptions{}); err != nil {
				t.Fatalf("old plan applied again: %v", err)
			}
			if after, _ := r2.ListIDs(ctx, storage.Index); len(after) != len(before) {
				t.Fatalf("old plan applied again: %d index files, were %d", len(after), len(before))
			}
		})
	}
}

// A repair killed after writing the new index files and before removing
// the damaged one leaves a repository whose every pack is listed (the new
// file supersedes the damaged one); the next repair only removes it.
func TestReindexKilledBeforeRemoval(t *testing.T) {
	ctx := context.Background()
	f := newReindexFixture(t)
	f.replace(storage.Index, f.index1, func(b []byte) []byte { b[10] ^= 1; return b })
	// killed before it removes anything: here, the storage refuses
	// removals (but of its lease, so that the next repair need not wait
	// for it to expire)
	r, err := repo.Open(ctx, &noRemove{f.be}, repo.Credential{Password: []byte(testutil.Password)}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Find(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Apply(ctx, r, plan, ApplyOptions{})
	if err == nil || len(res.Done) != 2 || len(res.Failed) != 1 || res.Failed[0].Kind != RemoveDamagedIndex {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	files, errs, err := f.r.LoadIndexFiles(ctx)
	if err != nil || len(errs) != 1 {
		t.Fatalf("index files: %v %v", errs, err)
	}
	if !repo.Superseded(files)[f.index1] {
		t.Error("the new index file does not supersede the damaged one")
	}
	again, err := Find(ctx, f.r)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Actions) != 1 || again.Actions[0].Kind != RemoveDamagedIndex || again.Actions[0].ID != f.index1 {
		t.Fatalf("plan after the interrupted repair: %+v", again.Actions)
	}
	if _, err := Apply(ctx, f.r, again, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Reopen(t, f.be).Index().Len(); err != 6 {
		t.Fatalf("%d blobs indexed, want 6", err)
	}
}

// noRemove refuses every removal but of leases (in gc/).
type noRemove struct{ storage.Backend }

func (b noRemove) Remove(ctx context.Context, h storage.Handle) error {
	if h.Type == storage.GCMark {
		return b.Backend.Remove(ctx, h)
	}
	return fmt.Errorf("remove %s: %w", h, storage.ErrDenied)
}

// flaky fails every load of the named objects with an I/O error (a disk
// error, a storage that does not answer): they may be fine.
type flaky struct {
	storage.Backend
	fail map[string]bool
}

func (b *flaky) Load(ctx context.Context, h storage.Handle, off, n int64) ([]byte, error) {
	if b.fail[h.Name] {
		return nil, fmt.Errorf("load %s: %w", h, syscall.EIO)
	}
	return b.Backend.Load(ctx, h, off, n)
}

// What repair could not read it never removes: an index file that cannot
// be read stops it; a pack that cannot be read is left, and so is every
// damaged index file (it may have listed that pack).
func TestReindexUnreadable(t *testing.T) {
	ctx := context.Background()
	f := newReindexFixture(t)
	be := &flaky{Backend: f.be, fail: map[string]bool{f.index2.String(): true}}
	r, err := repo.Open(ctx, be, repo.Credential{Password: []byte(testutil.Password)}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Find(ctx, r); err == nil || !strings.Contains(err.Error(), "cannot be read") || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Find with an unreadable index file: %v", err)
	}

	f.replace(storage.Index, f.index1, func(b []byte) []byte { b[10] ^= 1; return b })
	be.fail = map[string]bool{f.data1.String(): true}
	plan, err := Find(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if got := idsOf(plan.Actions, IndexPack); !slices.Equal(got, []hash.ID{f.tree1}) || len(plan.Actions) != 1 {
		t.Errorf("plan %+v, want only tree pack %s indexed", plan.Actions, f.tree1.Short())
	}
	if !slices.Equal(idsOf(plan.Left, UnreadablePack), []hash.ID{f.data1}) || !slices.Equal(idsOf(plan.Left, LeaveIndex), []hash.ID{f.index1}) || plan.Incomplete() != 1 {
		t.Errorf("left %+v, want pack %s and index %s", plan.Left, f.data1.Short(), f.index1.Short())
	}
	if _, err := Apply(ctx, r, plan, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.be.Get(f.handle(storage.Index, f.index1)); !ok {
		t.Fatal("the damaged index file was removed while a pack could not be read")
	}
	// once the pack reads, the next repair finishes
	be.fail = nil
	plan, err = Find(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(idsOf(plan.Actions, IndexPack), []hash.ID{f.data1}) || !slices.Equal(idsOf(plan.Actions, RemoveDamagedIndex), []hash.ID{f.index1}) {
		t.Fatalf("plan %+v", plan.Actions)
	}
	if _, err := Apply(ctx, r, plan, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.Reopen(t, f.be).Index().Len(); n != 6 {
		t.Fatalf("%d blobs indexed, want 6", n)
	}
}

// Apply verifies a pack that Find did not (a plan made elsewhere), and
// refuses one that does not verify.
func TestReindexApplyVerifies(t *testing.T) {
	ctx := context.Background()
	f := newReindexFixture(t)
	f.remove(t, storage.Index, f.index2)
	f.replace(storage.Pack, f.data2, func(b []byte) []byte { b[5] ^= 1; return b })
	f.remove(t, storage.Index, f.index1)
	plan := &Plan{Actions: []Action{{Kind: IndexPack, ID: f.data1}, {Kind: IndexPack, ID: f.data2}, {Kind: IndexPack, ID: f.tree1}}}
	res, err := Apply(ctx, f.r, plan, ApplyOptions{})
	if err == nil || len(res.Done) != 2 || len(res.Failed) != 1 || res.Failed[0].ID != f.data2 || !strings.Contains(res.Failed[0].Error, "not indexed") {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	if n := testutil.Reopen(t, f.be).Index().Len(); n != 4 {
		t.Fatalf("%d blobs indexed, want the 4 of the intact packs", n)
	}
}
