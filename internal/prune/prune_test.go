package prune

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/check"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/restore"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/testutil"
)

var (
	ctx  = context.Background()
	cred = repo.Credential{Password: []byte("pw")}
	kdf  = *testutil.CheapKDF()
)

// world is a repository on a mem backend that several repo.Open
// instances share, as several processes share a real one.
type world struct {
	t  *testing.T
	be *mem.Backend
}

func newWorld(t *testing.T) *world {
	t.Helper()
	be := mem.New()
	if _, _, err := repo.Init(ctx, be, cred, repo.InitOptions{KDF: &kdf}); err != nil {
		t.Fatal(err)
	}
	return &world{t: t, be: be}
}

// hookBackend calls before ahead of saving a snapshot record: the place
// where backup.Run checks r.VerifyReferences. With delay, it waits first,
// as if the backup took longer, so that prunes run meanwhile.
type hookBackend struct {
	storage.Backend
	before func(context.Context) error
	delay  time.Duration
}

func (h *hookBackend) Save(ctx context.Context, hd storage.Handle, data []byte) error {
	if hd.Type == storage.Snapshot {
		time.Sleep(h.delay)
		if h.before != nil {
			if err := h.before(ctx); err != nil {
				return err
			}
		}
	}
	return h.Backend.Save(ctx, hd, data)
}

// open opens the repository and loads its index.
func (w *world) open(t testing.TB) *repo.Repository {
	t.Helper()
	return openOn(t, w.be)
}

func openOn(t testing.TB, be storage.Backend) *repo.Repository {
	t.Helper()
	r, err := repo.Open(ctx, be, cred, repo.OpenOptions{KDF: &kdf})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

// backup backs dir up with a repository of its own that trusts prunes to
// use grace, and verifies its references before it saves the snapshot.
func (w *world) backup(dir string, grace, delay time.Duration, parent *snapshot.Record) (*backup.Result, error) {
	hb := &hookBackend{Backend: w.be, delay: delay}
	r, err := repo.Open(ctx, hb, cred, repo.OpenOptions{KDF: &kdf})
	if err != nil {
		return nil, err
	}
	if err := r.LoadIndex(ctx); err != nil {
		return nil, err
	}
	r.SetGCGrace(grace)
	hb.before = r.VerifyReferences
	opts := backup.Options{Paths: []string{dir}, Hostname: "test", Parent: parent}
	if parent != nil {
		opts.ParentTrees = snapshot.RepoTrees{Repo: r}
	}
	return backup.Run(ctx, r, opts)
}

func (w *world) mustBackup(dir string) *backup.Result {
	w.t.Helper()
	res, err := w.backup(dir, repo.DefaultGCGrace, 0, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	return res
}

func (w *world) prune(opts Options) *Result {
	w.t.Helper()
	res, err := Run(ctx, w.open(w.t), opts)
	if err != nil {
		w.t.Fatalf("prune: %v", err)
	}
	return res
}

func (w *world) forget(ids ...hash.ID) {
	w.t.Helper()
	r := w.open(w.t)
	for _, id := range ids {
		if err := r.RemoveSnapshot(ctx, id); err != nil {
			w.t.Fatal(err)
		}
	}
}

// check runs check --read-data and fails on errors; it returns the warnings.
func (w *world) check(t testing.TB) []*check.Problem {
	t.Helper()
	return checkOn(t, w.be)
}

func checkOn(t testing.TB, be storage.Backend) []*check.Problem {
	t.Helper()
	r, err := repo.Open(ctx, be, cred, repo.OpenOptions{KDF: &kdf})
	if err != nil {
		t.Fatal(err)
	}
	res, err := check.Run(ctx, r, check.Options{ReadData: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Summary.Errors > 0 {
		for _, p := range res.Errors() {
			t.Errorf("check: %s", p)
		}
		t.FailNow()
	}
	return res.Warnings()
}

// restore restores dir of a snapshot whose root tree is tree and compares
// it with a manifest.
func (w *world) restore(t testing.TB, tree hash.Ref, dir string, manifest map[string]string) {
	t.Helper()
	restoreOn(t, w.be, tree, dir, manifest)
}

func restoreOn(t testing.TB, be storage.Backend, tree hash.Ref, dir string, manifest map[string]string) {
	t.Helper()
	dst := t.TempDir()
	res, err := restore.Run(ctx, openOn(t, be), tree, dir, restore.Options{Target: dst})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if len(res.Errors) > 0 {
		t.Fatalf("restore: %v", res.Errors)
	}
	testutil.DiffManifest(t, manifest, dst)
	if t.Failed() {
		t.FailNow()
	}
}

func (w *world) stored() (n int, size int64) {
	w.be.List(ctx, storage.Pack, func(fi storage.FileInfo) error {
		n++
		size += fi.Size
		return nil
	})
	return n, size
}

func (w *world) count(ft storage.FileType) int {
	n := 0
	w.be.List(ctx, ft, func(storage.FileInfo) error { n++; return nil })
	return n
}

func writeFile(t testing.TB, path string, data []byte) { t.Helper(); testutil.WriteFile(t, path, data) }

// files writes n files of size random bytes named prefix0, prefix1, ...
func files(t testing.TB, dir, prefix string, n, size int, seed uint64) {
	for i := 0; i < n; i++ {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("%s%d", prefix, i)), testutil.RandomBytes(seed+uint64(i), size))
	}
}

func TestForgetPruneReclaimsSpace(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 5, 200<<10, 1)
	s1 := w.mustBackup(src)
	for i := 0; i < 3; i++ {
		os.Remove(filepath.Join(src, fmt.Sprintf("f%d", i)))
	}
	files(t, src, "g", 1, 200<<10, 100)
	m2 := testutil.Manifest(t, src)
	s2 := w.mustBackup(src)
	_, before := w.stored()
	w.forget(s1.ID)

	// first prune: marks (after copying the live blobs of the half-used pack)
	res := w.prune(Options{Grace: 0, MaxUnused: 0.1})
	if res.Sweep.Deleted.Packs != 0 || res.Mark.Repack.Packs != 1 || res.Mark.Unused.Packs != 1 || res.Mark.MarkID == "" {
		t.Fatalf("first prune: %+v", res)
	}
	if res.Mark.RepackLiveBytes < 400<<10 || res.Mark.NewPacks != 1 {
		t.Fatalf("repack copied %d bytes into %d packs, want the two live files in one", res.Mark.RepackLiveBytes, res.Mark.NewPacks)
	}
	if n := w.count(storage.GCMark); n != 1 {
		t.Fatalf("%d gc marks, want 1", n)
	}
	w.check(t)
	w.restore(t, s2.Snapshot.Tree, src, m2)

	// second prune: sweeps
	res = w.prune(Options{Grace: 0, MaxUnused: 0.1})
	if res.Sweep.Deleted.Packs != 2 || res.Sweep.MarksRemoved != 1 || res.Sweep.Rescued.Packs != 0 {
		t.Fatalf("second prune: %+v", res.Sweep)
	}
	if res.Mark.Unused.Packs+res.Mark.Repack.Packs+res.Mark.Unindexed.Packs != 0 {
		t.Fatalf("second prune marked more: %+v", res.Mark)
	}
	if n := w.count(storage.GCMark); n != 0 {
		t.Fatalf("%d gc marks left", n)
	}
	if n := w.count(storage.Index); n != 1 {
		t.Fatalf("%d index files, want the one the sweep wrote", n)
	}
	_, after := w.stored()
	if after > before-550<<10 {
		t.Fatalf("stored %d bytes before, %d after: the three forgotten files were not reclaimed", before, after)
	}
	if warn := w.check(t); len(warn) > 0 {
		t.Fatalf("check warnings: %v", warn)
	}
	w.restore(t, s2.Snapshot.Tree, src, m2)

	// nothing left to do
	res = w.prune(Options{Grace: 0, MaxUnused: 0.1})
	if len(res.Marks) != 0 || res.Mark.MarkID != "" || res.Kept.Packs != 3 {
		t.Fatalf("third prune: %+v", res)
	}
}

func TestRepackMaxUnused(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 10, 100<<10, 1)
	s1 := w.mustBackup(src)
	os.Remove(filepath.Join(src, "f0"))
	m2 := testutil.Manifest(t, src)
	s2 := w.mustBackup(src)
	w.forget(s1.ID)

	// a tenth of the data pack is unused: below 50%, kept as it is
	objects := func() []string {
		var names []string
		for _, ft := range storage.AllTypes {
			w.be.List(ctx, ft, func(fi storage.FileInfo) error { names = append(names, string(ft)+"/"+fi.Name); return nil })
		}
		sort.Strings(names)
		return names
	}
	was := objects()
	res := w.prune(Options{MaxUnused: 0.5, DryRun: true})
	if res.Mark.Repack.Packs != 0 || res.Mark.Unused.Packs != 1 || res.Mark.MarkID != "" {
		t.Fatalf("dry run with max-unused 50%%: %+v", res.Mark)
	}
	if now := objects(); fmt.Sprint(now) != fmt.Sprint(was) {
		t.Fatalf("a dry run changed the repository:\n%v\n%v", was, now)
	}
	res = w.prune(Options{MaxUnused: 0.5})
	if res.Mark.Repack.Packs != 0 || res.Mark.Unused.Packs != 1 {
		t.Fatalf("max-unused 50%%: %+v", res.Mark)
	}
	res = w.prune(Options{MaxUnused: 0.5})
	if res.Sweep.Deleted.Packs != 1 {
		t.Fatalf("sweep of the old tree pack: %+v", res.Sweep)
	}

	// above 5%: repacked
	res = w.prune(Options{MaxUnused: 0.05})
	if res.Mark.Repack.Packs != 1 || res.Mark.RepackLiveBytes < 900<<10 || res.Mark.RepackLiveBytes > 950<<10 {
		t.Fatalf("max-unused 5%%: %+v", res.Mark)
	}
	_, before := w.stored()
	res = w.prune(Options{MaxUnused: 0.05})
	if res.Sweep.Deleted.Packs != 1 || res.Mark.Repack.Packs != 0 {
		t.Fatalf("sweep of the repacked pack: %+v %+v", res.Sweep, res.Mark)
	}
	if _, after := w.stored(); before-after < 1000<<10 {
		t.Fatalf("stored %d before the sweep, %d after", before, after)
	}
	// a repacked pack holds no waste: never repacked again, even at 0%
	res = w.prune(Options{MaxUnused: 0})
	if res.Mark.Repack.Packs != 0 || res.Mark.Unused.Packs != 0 {
		t.Fatalf("max-unused 0%% after the repack: %+v", res.Mark)
	}
	if warn := w.check(t); len(warn) > 0 {
		t.Fatalf("check warnings: %v", warn)
	}
	w.restore(t, s2.Snapshot.Tree, src, m2)
}

func TestMarkYoungerThanGraceIsNotSwept(t *testing.T) {
	w := newWorld(t)
	a, b := t.TempDir(), t.TempDir()
	files(t, a, "a", 3, 50<<10, 1)
	files(t, b, "b", 3, 50<<10, 10)
	s1 := w.mustBackup(a)
	mb := testutil.Manifest(t, b)
	s2 := w.mustBackup(b)
	w.forget(s1.ID)

	res := w.prune(Options{Grace: time.Hour})
	if res.Mark.Unused.Packs != 2 {
		t.Fatalf("mark: %+v", res.Mark)
	}
	res = w.prune(Options{Grace: time.Hour})
	if len(res.Marks) != 1 || res.Marks[0].Due || res.Sweep.Deleted.Packs != 0 {
		t.Fatalf("a mark younger than the grace period was swept: %+v %+v", res.Marks, res.Sweep)
	}
	if res.Mark.AlreadyMarked.Packs != 2 || res.Mark.MarkID != "" || w.count(storage.GCMark) != 1 {
		t.Fatalf("marked packs marked again: %+v", res.Mark)
	}
	if n, _ := w.stored(); n != 4 {
		t.Fatalf("%d packs, want 4", n)
	}

	// the same mark two hours old is due
	r := w.open(t)
	ids, _ := r.ListIDs(ctx, storage.GCMark)
	m, err := r.LoadGCMark(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	m.Time = m.Time.Add(-2 * time.Hour)
	if _, err := r.SaveGCMark(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := r.RemoveGCMark(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	res = w.prune(Options{Grace: time.Hour})
	if len(res.Marks) != 1 || !res.Marks[0].Due || res.Sweep.Deleted.Packs != 2 {
		t.Fatalf("an old mark was not swept: %+v %+v", res.Marks, res.Sweep)
	}
	if n, _ := w.stored(); n != 2 {
		t.Fatalf("%d packs, want 2", n)
	}
	w.check(t)
	w.restore(t, s2.Snapshot.Tree, b, mb)
}

// A snapshot written after the mark, by a backup that deduplicated against
// the marked packs before they were marked, keeps them.
func TestBlobReferencedAfterMarkKeepsItsPack(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 3, 50<<10, 1)
	m1 := testutil.Manifest(t, src)
	s1 := w.mustBackup(src)
	w.forget(s1.ID)
	res := w.prune(Options{})
	if res.Mark.Unused.Packs != 2 {
		t.Fatalf("mark: %+v", res.Mark)
	}
	// the late backup's snapshot: the same tree
	late := *s1.Snapshot
	late.Hostname = "late"
	late.Time = time.Now()
	id, err := snapshot.Save(ctx, w.open(t), &late)
	if err != nil {
		t.Fatal(err)
	}
	res = w.prune(Options{})
	if res.Sweep.Rescued.Packs != 2 || res.Sweep.Deleted.Packs != 0 || res.Sweep.MarksRemoved != 1 {
		t.Fatalf("sweep: %+v", res.Sweep)
	}
	if res.Mark.Unused.Packs != 0 || res.Mark.Repack.Packs != 0 {
		t.Fatalf("the rescued packs were marked again: %+v", res.Mark)
	}
	if warn := w.check(t); len(warn) > 0 {
		t.Fatalf("check warnings: %v", warn)
	}
	w.restore(t, late.Tree, src, m1)
	if _, err := snapshot.Load(ctx, w.open(t), id); err != nil {
		t.Fatal(err)
	}
}

// Backups that load the index after a mark do not deduplicate against
// marked packs: they store the blob again, and the sweep deletes the
// marked pack without harm.
func TestDedupIgnoresMarkedPacks(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 3, 50<<10, 1)
	data, _ := os.ReadFile(filepath.Join(src, "f0"))
	m := testutil.Manifest(t, src)
	s1 := w.mustBackup(src)
	early := w.open(t)
	w.forget(s1.ID)
	w.prune(Options{})

	r := w.open(t)
	ref := r.RefOf(repo.DataBlob, data)
	h := repo.BlobHandle{Type: repo.DataBlob, ID: ref.ID}
	loc, ok := r.Index().Lookup(h)
	if !ok || !r.Index().Marked(loc.Pack) {
		t.Fatalf("blob not found in a marked pack: %v %v", ok, loc)
	}
	if r.HasBlob(h) {
		t.Fatal("HasBlob found a blob that only a marked pack holds")
	}
	if got, err := r.LoadBlob(ctx, repo.DataBlob, ref, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("LoadBlob of a blob in a marked pack: %v", err)
	}
	if !early.HasBlob(h) {
		t.Fatal("a repository that loaded the index before the mark does not have the blob")
	}
	wr := r.StartWriting()
	if _, isNew, _, err := wr.SaveBlob(ctx, h.Type, ref.Key, data); err != nil || !isNew {
		t.Fatalf("SaveBlob of a blob in a marked pack: new=%v %v", isNew, err)
	}
	if err := wr.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	if loc2, _ := r.Index().Lookup(h); loc2.Pack == loc.Pack || !r.HasBlob(h) {
		t.Fatal("the new copy is not preferred")
	}

	s2 := w.mustBackup(src)
	if s2.Snapshot.Summary.DataAdded < 100<<10 {
		t.Fatalf("the backup after the mark added %d bytes: it deduplicated against marked packs", s2.Snapshot.Summary.DataAdded)
	}
	res := w.prune(Options{})
	if res.Sweep.Deleted.Packs != 2 || res.Sweep.Rescued.Packs != 0 {
		t.Fatalf("sweep: %+v", res.Sweep)
	}
	w.check(t)
	w.restore(t, s2.Snapshot.Tree, src, m)
}

func TestVerifyReferences(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 10, 50<<10, 1)
	content := func(name string) repo.BlobHandle {
		data, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		return repo.BlobHandle{Type: repo.DataBlob, ID: w.open(t).RefOf(repo.DataBlob, data).ID}
	}
	kept, gone := content("f5"), content("f0")
	s1 := w.mustBackup(src)
	for i := 0; i < 5; i++ {
		os.Remove(filepath.Join(src, fmt.Sprintf("f%d", i)))
	}
	s2 := w.mustBackup(src)
	_ = s2

	// a backup that read the index before the prune relies on two blobs
	r := w.open(t)
	r.SetGCGrace(0)
	if !r.HasBlob(kept) || !r.HasBlob(gone) {
		t.Fatal("blobs missing")
	}
	if err := r.VerifyReferences(ctx); err != nil {
		t.Fatalf("nothing marked yet: %v", err)
	}
	w.forget(s1.ID)
	res := w.prune(Options{MaxUnused: 0.1})
	if res.Mark.Repack.Packs != 1 {
		t.Fatalf("mark: %+v", res.Mark)
	}
	var rg *repo.ReferencesGoneError
	if err := r.VerifyReferences(ctx); !errors.As(err, &rg) || rg.Blobs != 1 || len(rg.Packs) != 1 {
		t.Fatalf("a blob only in a marked pack: %v", err)
	}
	t.Logf("error: %v", rg)
	// with the default grace, a fresh view is not checked
	r.SetGCGrace(repo.DefaultGCGrace)
	if err := r.VerifyReferences(ctx); err != nil {
		t.Fatalf("young index view: %v", err)
	}
	// a backup that relied only on the live blob is fine: it was copied
	r2 := w.open(t)
	r2.UseIndex(mustFiles(t, r2), nil) // the view before the mark
	r2.SetGCGrace(0)
	if !r2.HasBlob(kept) {
		t.Fatal("blob missing")
	}
	if err := r2.VerifyReferences(ctx); err != nil {
		t.Fatalf("a blob copied out of a marked pack: %v", err)
	}
	// after the sweep, the blob is gone altogether
	w.prune(Options{MaxUnused: 0.1})
	r.SetGCGrace(0)
	if err := r.VerifyReferences(ctx); !errors.As(err, &rg) {
		t.Fatalf("a blob whose pack was deleted: %v", err)
	}
	if err := r2.VerifyReferences(ctx); err != nil {
		t.Fatalf("a blob copied out of a deleted pack: %v", err)
	}
}

func mustFiles(t *testing.T, r *repo.Repository) map[hash.ID]*repo.IndexFile {
	t.Helper()
	f, errs, err := r.LoadIndexFiles(ctx)
	if err != nil || len(errs) > 0 {
		t.Fatal(err, errs)
	}
	return f
}

// Packs that no index file lists are marked and deleted a run later,
// unless an index file lists them by then.
func TestUnindexedPacks(t *testing.T) {
	w := newWorld(t)
	// a pack uploaded by a backup that did not write its index (yet)
	orphan := func(seed uint64) (storage.Handle, []byte) {
		r := w.open(t)
		was := map[string]bool{}
		w.be.List(ctx, storage.Index, func(fi storage.FileInfo) error { was[fi.Name] = true; return nil })
		data := testutil.RandomBytes(seed, 100<<10)
		wr := r.StartWriting()
		if _, _, _, err := wr.SaveBlob(ctx, repo.DataBlob, r.BlobKey(data), data); err != nil {
			t.Fatal(err)
		}
		if err := wr.Finish(ctx); err != nil {
			t.Fatal(err)
		}
		var h storage.Handle
		w.be.List(ctx, storage.Index, func(fi storage.FileInfo) error {
			if !was[fi.Name] {
				h = storage.Handle{Type: storage.Index, Name: fi.Name}
			}
			return nil
		})
		idx, _ := w.be.Get(h)
		if err := w.be.Remove(ctx, h); err != nil {
			t.Fatal(err)
		}
		return h, idx
	}
	h, idx := orphan(1)
	res := w.prune(Options{})
	if res.Mark.Unindexed.Packs != 1 {
		t.Fatalf("mark: %+v", res.Mark)
	}
	// the backup writes its index after all: the pack stays
	w.be.Set(h, idx)
	res = w.prune(Options{})
	if res.Sweep.Indexed.Packs != 1 || res.Sweep.Deleted.Packs != 0 || res.Mark.Unused.Packs != 1 {
		t.Fatalf("indexed after the mark: %+v %+v", res.Sweep, res.Mark)
	}
	res = w.prune(Options{})
	if res.Sweep.Deleted.Packs != 1 {
		t.Fatalf("sweep: %+v", res.Sweep)
	}
	// one that stays unindexed goes
	orphan(2)
	if res = w.prune(Options{}); res.Mark.Unindexed.Packs != 1 {
		t.Fatalf("mark: %+v", res.Mark)
	}
	if res = w.prune(Options{}); res.Sweep.Deleted.Packs != 1 {
		t.Fatalf("sweep: %+v", res.Sweep)
	}
	if n, _ := w.stored(); n != 0 {
		t.Fatalf("%d packs left", n)
	}
	if warn := w.check(t); len(warn) > 0 {
		t.Fatalf("check warnings: %v", warn)
	}
}

func TestPruneRefusesDamage(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 2, 10<<10, 1)
	w.mustBackup(src)
	var h storage.Handle
	w.be.List(ctx, storage.Index, func(fi storage.FileInfo) error {
		h = storage.Handle{Type: storage.Index, Name: fi.Name}
		return nil
	})
	good, _ := w.be.Get(h)
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	w.be.Set(h, bad)
	r, err := repo.Open(ctx, w.be, cred, repo.OpenOptions{KDF: &kdf})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, r, Options{}); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("damaged index: %v", err)
	}
	// a lost index file: the snapshot's blobs are in no index
	w.be.Remove(ctx, h)
	if _, err := Run(ctx, r, Options{}); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("lost index: %v", err)
	}
	if n, _ := w.stored(); n != 2 || w.count(storage.GCMark) != 0 {
		t.Fatal("prune changed a damaged repository")
	}
}

// faultBackend fails every Save and Remove after the first n, as if the
// process were killed there.
type faultBackend struct {
	storage.Backend
	mu    sync.Mutex
	n     int // mutations allowed; < 0: all
	count int
}

var errKilled = errors.New("killed")

func (f *faultBackend) mutate() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count++
	if f.n >= 0 && f.count > f.n {
		return errKilled
	}
	return nil
}

func (f *faultBackend) Save(ctx context.Context, h storage.Handle, data []byte) error {
	if err := f.mutate(); err != nil {
		return err
	}
	return f.Backend.Save(ctx, h, data)
}

func (f *faultBackend) Remove(ctx context.Context, h storage.Handle) error {
	if err := f.mutate(); err != nil {
		return err
	}
	return f.Backend.Remove(ctx, h)
}

func cloneMem(t *testing.T, be *mem.Backend) *mem.Backend {
	out := mem.New()
	cfg, _ := be.Get(storage.Handle{Type: storage.Config})
	out.Set(storage.Handle{Type: storage.Config}, cfg)
	for _, ft := range storage.AllTypes {
		be.List(ctx, ft, func(fi storage.FileInfo) error {
			h := storage.Handle{Type: ft, Name: fi.Name}
			data, _ := be.Get(h)
			out.Set(h, data)
			return nil
		})
	}
	return out
}

// A prune stopped after any number of writes and deletes leaves a
// repository that check passes and whose snapshots restore; the next
// prunes finish the job.
func TestKilledPruneLeavesConsistentRepository(t *testing.T) {
	w := newWorld(t)
	a, b := t.TempDir(), t.TempDir()
	files(t, a, "f", 6, 60<<10, 1)
	s1 := w.mustBackup(a)
	os.Remove(filepath.Join(a, "f0"))
	os.Remove(filepath.Join(a, "f1"))
	files(t, a, "g", 2, 60<<10, 50)
	s2 := w.mustBackup(a)
	os.Remove(filepath.Join(a, "f2"))
	ma := testutil.Manifest(t, a)
	s3 := w.mustBackup(a)
	files(t, b, "b", 3, 60<<10, 100)
	mb := testutil.Manifest(t, b)
	s4 := w.mustBackup(b)
	w.forget(s1.ID)
	w.prune(Options{MaxUnused: 0.1}) // marks: due in the run below
	w.forget(s2.ID)                  // more to mark (and repack) in it
	base := w.be

	// how many mutations a whole run makes
	full := &faultBackend{Backend: cloneMem(t, base), n: -1}
	res, err := Run(ctx, openOn(t, full), Options{MaxUnused: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sweep.Deleted.Packs == 0 || res.Mark.Repack.Packs == 0 {
		t.Fatalf("the run does not both sweep and repack: %+v %+v", res.Sweep, res.Mark)
	}
	total := full.count
	t.Logf("a full run makes %d writes and deletes", total)
	for n := 0; n < total; n++ {
		be := cloneMem(t, base)
		fb := &faultBackend{Backend: be, n: n}
		// the last mutation is the lease's release: the work is done,
		// only the lease is left behind
		if _, err := Run(ctx, openOn(t, fb), Options{MaxUnused: 0.1}); !errors.Is(err, errKilled) && !(n == total-1 && err == nil) {
			t.Fatalf("killed after %d: %v", n, err)
		}
		checkOn(t, be)
		restoreOn(t, be, s3.Snapshot.Tree, a, ma)
		// the killed prune's lease stays until it expires: the operator
		// removes it (prune --force-unlock), then the next prunes finish
		// the job
		if _, err := Run(ctx, openOn(t, be), Options{MaxUnused: 0.1}); n > 0 && !errors.Is(err, repo.ErrLeaseHeld) {
			t.Fatalf("killed after %d: a prune ran beside the dead one's lease: %v", n, err)
		}
		if _, err := openOn(t, be).BreakLeases(ctx); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if _, err := Run(ctx, openOn(t, be), Options{MaxUnused: 0.1}); err != nil {
				t.Fatalf("killed after %d, prune %d: %v", n, i+1, err)
			}
		}
		if warn := checkOn(t, be); len(warn) > 0 {
			t.Fatalf("killed after %d: warnings after two more prunes: %v", n, warn)
		}
		restoreOn(t, be, s4.Snapshot.Tree, b, mb)
		restoreOn(t, be, s3.Snapshot.Tree, a, ma)
	}
}

// Backups run while prune runs in a loop with no grace period: every
// snapshot whose backup succeeded restores, and check passes.
func TestConcurrentBackupsAndPrune(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	const (
		workers = 3
		rounds  = 8
	)
	w := newWorld(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	// a pool of contents that come and go, so that backups deduplicate
	// against packs that prune is marking
	pool := make([][]byte, 10)
	for i := range pool {
		pool[i] = testutil.RandomBytes(seed+uint64(i), 20<<10+i)
	}
	type done struct {
		id       hash.ID
		tree     hash.Ref
		dir      string
		manifest map[string]string
	}
	var (
		mu       sync.Mutex
		live     []done
		ok, lost atomic.Int64
		wg       sync.WaitGroup
	)
	dirs := make([]string, workers)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			dir := dirs[g]
			var parent *snapshot.Record
			for round := 0; round < rounds; round++ {
				for i := 0; i < 3; i++ {
					writeFile(t, filepath.Join(dir, fmt.Sprintf("p%d", rng.IntN(6))), pool[rng.IntN(len(pool))])
				}
				if round%2 == 1 {
					os.Remove(filepath.Join(dir, fmt.Sprintf("p%d", rng.IntN(6))))
				}
				writeFile(t, filepath.Join(dir, fmt.Sprintf("u%d", round)), testutil.RandomBytes(seed+uint64(1000*g+round+100), 30<<10))
				os.Remove(filepath.Join(dir, fmt.Sprintf("u%d", round-3)))
				m := testutil.Manifest(t, dir)
				res, err := w.backup(dir, 0, time.Duration(rng.IntN(20))*time.Millisecond, parent)
				var rg *repo.ReferencesGoneError
				switch {
				case errors.As(err, &rg):
					lost.Add(1)
					t.Logf("worker %d round %d: %v", g, round, err)
					continue
				case err != nil:
					t.Errorf("worker %d round %d: backup: %v", g, round, err)
					return
				}
				ok.Add(1)
				parent = &snapshot.Record{ID: res.ID, Snapshot: res.Snapshot}
				mu.Lock()
				live = append(live, done{res.ID, res.Snapshot.Tree, dir, m})
				mu.Unlock()
			}
		}(g)
	}
	stop := make(chan struct{})
	pruned := make(chan int)
	go func() {
		rng := rand.New(rand.NewPCG(seed, 99))
		n := 0
		defer func() { pruned <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			var victim *done
			if len(live) > workers {
				i := rng.IntN(len(live) - workers)
				d := live[i]
				victim = &d
				live = append(live[:i], live[i+1:]...)
			}
			mu.Unlock()
			r, err := repo.Open(ctx, w.be, cred, repo.OpenOptions{KDF: &kdf})
			if err != nil {
				t.Error(err)
				return
			}
			if victim != nil {
				if err := r.RemoveSnapshot(ctx, victim.id); err != nil {
					t.Error(err)
					return
				}
			}
			if _, err := Run(ctx, r, Options{Grace: 0, MaxUnused: 0.2}); err != nil {
				t.Errorf("prune %d: %v", n, err)
				return
			}
			n++
			time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
		}
	}()
	wg.Wait()
	close(stop)
	n := <-pruned
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d backups succeeded, %d refused to write their snapshot; %d prunes ran alongside", ok.Load(), lost.Load(), n)
	if ok.Load() < workers*rounds/3 || n < 3 {
		t.Fatalf("too little happened: %d backups, %d prunes", ok.Load(), n)
	}
	for i := 0; i < 2; i++ {
		w.prune(Options{Grace: 0, MaxUnused: 0.2})
	}
	if warn := w.check(t); len(warn) > 0 {
		t.Errorf("check warnings: %v", warn)
	}
	for _, d := range live {
		w.restore(t, d.tree, d.dir, d.manifest)
	}
}

// failLoad fails loads of one object with an I/O error.
type failLoad struct {
	storage.Backend
	h storage.Handle
}

func (f *failLoad) Load(ctx context.Context, h storage.Handle, off, n int64) ([]byte, error) {
	if h == f.h {
		return nil, fmt.Errorf("load %s: input/output error", h)
	}
	return f.Backend.Load(ctx, h, off, n)
}

// A snapshot record that does not decode is skipped and reported (it
// references nothing readable); one that cannot be read (a storage error)
// may be fine, so prune refuses; so it does for a tree it cannot read.
func TestPruneSkipsUndecodableSnapshots(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 2, 10<<10, 1)
	res := w.mustBackup(src)
	r := w.open(t)
	junk := []byte("not a snapshot record")
	junkID := hash.Sum(junk)
	w.be.Set(storage.Handle{Type: storage.Snapshot, Name: junkID.String()}, junk)
	sealed, err := r.SaveSnapshotRecord(ctx, []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := Run(ctx, r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if out.Snapshots != 1 || len(out.Undecodable) != 2 {
		t.Fatalf("snapshots %d, undecodable %+v; want 1 and the 2 bad records", out.Snapshots, out.Undecodable)
	}
	got := map[string]bool{out.Undecodable[0].ID: true, out.Undecodable[1].ID: true}
	if !got[junkID.String()] || !got[sealed.String()] {
		t.Fatalf("undecodable %+v", out.Undecodable)
	}

	// an I/O error on a snapshot record: refuse
	h := storage.Handle{Type: storage.Snapshot, Name: res.ID.String()}
	r2, err := repo.Open(ctx, &failLoad{Backend: w.be, h: h}, cred, repo.OpenOptions{KDF: &kdf})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, r2, Options{}); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("unreadable snapshot record: %v, want ErrUnsafe", err)
	}
	// a tree that cannot be read: refuse
	loc, ok := r.Index().Lookup(repo.BlobHandle{Type: repo.TreeBlob, ID: res.Snapshot.Tree.ID})
	if !ok {
		t.Fatal("root tree not in the index")
	}
	ph := storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}
	r3, err := repo.Open(ctx, &failLoad{Backend: w.be, h: ph}, cred, repo.OpenOptions{KDF: &kdf})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, r3, Options{}); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("unreadable tree: %v, want ErrUnsafe", err)
	}
}

// TestRepackRefusesDamagedCopy: a live blob whose stored bytes no longer
// match its ID stops the repack before anything is marked; the damaged
// copy is not copied into a new pack, and the pack stays for repair.
func TestRepackRefusesDamagedCopy(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 10, 100<<10, 1)
	s1 := w.mustBackup(src)
	os.Remove(filepath.Join(src, "f0"))
	w.mustBackup(src)
	w.forget(s1.ID)

	// flip a byte of every blob of the data pack to be repacked (the
	// live ones among them are what the repack copies)
	plan := w.prune(Options{MaxUnused: 0.05, DryRun: true})
	if plan.Mark.Repack.Packs != 1 {
		t.Fatalf("want one pack to repack: %+v", plan.Mark)
	}
	r := w.open(t)
	var pack hash.ID
	var blobs []repo.PackedBlob
	for _, id := range r.Index().Packs() {
		h := storage.Handle{Type: storage.Pack, Name: id.String()}
		hdr, err := r.LoadPackHeader(ctx, id, int64(len(must(w.be.Get(h)))))
		if err != nil {
			t.Fatal(err)
		}
		if len(hdr.Blobs) > 5 && hdr.Blobs[0].Type == repo.DataBlob {
			pack, blobs = id, hdr.Blobs
		}
	}
	if pack.IsNull() {
		t.Fatal("no data pack found")
	}
	h := storage.Handle{Type: storage.Pack, Name: pack.String()}
	data := bytes.Clone(must(w.be.Get(h)))
	for _, b := range blobs {
		data[b.Offset+b.Length/2] ^= 1
	}
	w.be.Set(h, data)
	packsBefore, _ := w.stored()
	marksBefore := w.count(storage.GCMark)

	_, err := Run(ctx, w.open(t), Options{MaxUnused: 0.05})
	if !errors.Is(err, repo.ErrForged) {
		t.Fatalf("prune over a damaged live blob: %v, want ErrForged", err)
	}
	if n, _ := w.stored(); n < packsBefore {
		t.Fatalf("%d packs after the failed prune, %d before", n, packsBefore)
	}
	if marks := w.count(storage.GCMark); marks != marksBefore {
		t.Fatalf("%d gc objects after the failed prune, %d before: it marked something", marks, marksBefore)
	}
	if got, ok := w.be.Get(h); !ok || !bytes.Equal(got, data) {
		t.Fatal("the damaged pack was changed or removed")
	}
}

func must[T any](v T, ok bool) T {
	if !ok {
		panic("missing")
	}
	return v
}

// stuckRenewal: after the first save in gc/ (the lease), saves there fail,
// and loads of snapshot records wait until the prune is cancelled.
type stuckRenewal struct {
	storage.Backend
	saved atomic.Bool
}

func (s *stuckRenewal) Save(ctx context.Context, h storage.Handle, data []byte) error {
	if h.Type == storage.GCMark && s.saved.Swap(true) {
		return errors.New("injected: the storage refuses writes")
	}
	return s.Backend.Save(ctx, h, data)
}

func (s *stuckRenewal) Load(ctx context.Context, h storage.Handle, off, n int64) ([]byte, error) {
	if h.Type == storage.Snapshot {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Backend.Load(ctx, h, off, n)
}

// A prune whose lease cannot be renewed stops and says why (not only
// "context canceled"), and changes nothing.
func TestPruneStopsWhenLeaseCannotBeRenewed(t *testing.T) {
	w := newWorld(t)
	src := t.TempDir()
	files(t, src, "f", 2, 10<<10, 1)
	w.mustBackup(src)
	packs := w.count(storage.Pack)
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, openOn(t, &stuckRenewal{Backend: w.be}), Options{LeaseTTL: 150 * time.Millisecond})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "prune stopped: its lease could not be renewed") || !strings.Contains(err.Error(), "injected") {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the prune went on without its lease")
	}
	if n := w.count(storage.Pack); n != packs || w.count(storage.GCMark) != 0 {
		t.Fatalf("packs %d -> %d, %d objects in gc/", packs, n, w.count(storage.GCMark))
	}
}
