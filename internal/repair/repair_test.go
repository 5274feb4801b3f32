package repair

import (
	"bytes"
	"strings"

	"context"
	"github.com/floe-backup/floe/internal/packfile"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/testutil"
)

func TestFindAndApply(t *testing.T) {
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	good, err := snapshot.Save(ctx, r, &snapshot.Snapshot{Time: time.Now(), Hostname: "h", Tree: hash.Ref{ID: hash.Sum([]byte("t"))}})
	if err != nil {
		t.Fatal(err)
	}
	// sealed to the data key, but not a snapshot (a write-only key can do that)
	sealed, err := r.SaveSnapshotRecord(ctx, []byte("not json"))
	if err != nil {
		t.Fatal(err)
	}
	// not even sealed
	junk := []byte("garbage that a write-only host uploaded instead of a snapshot record")
	junkID := hash.Sum(junk)
	if err := be.Save(ctx, storage.Handle{Type: storage.Snapshot, Name: junkID.String()}, junk); err != nil {
		t.Fatal(err)
	}

	plan, err := Find(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	want := map[hash.ID]bool{sealed: true, junkID: true}
	if len(plan.Actions) != 2 {
		t.Fatalf("plan %+v, want the 2 undecodable records", plan.Actions)
	}
	for _, a := range plan.Actions {
		if a.Kind != RemoveSnapshot || !want[a.ID] || a.Reason == "" {
			t.Errorf("unexpected action %+v", a)
		}
	}
	// Find changes nothing
	if ids, _ := r.ListIDs(ctx, storage.Snapshot); len(ids) != 3 {
		t.Fatalf("%d snapshot records after Find, want 3", len(ids))
	}
	res, err := Apply(ctx, r, plan, ApplyOptions{})
	if err != nil || len(res.Done) != 2 {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	ids, _ := r.ListIDs(ctx, storage.Snapshot)
	if len(ids) != 1 || ids[0] != good {
		t.Fatalf("left %v, want only the good snapshot %s", ids, good.Short())
	}
	if plan, err := Find(ctx, r); err != nil || !plan.Empty() {
		t.Fatalf("second Find: %+v, %v", plan, err)
	}
	// applying an old plan is harmless
	if res, err := Apply(ctx, r, &Plan{Actions: []Action{{Kind: RemoveSnapshot, ID: good}}}, ApplyOptions{}); err == nil || len(res.Done) != 0 {
		t.Fatalf("Apply removed a snapshot that decodes: %+v, %v", res, err)
	}
	if ids, _ := r.ListIDs(ctx, storage.Snapshot); len(ids) != 1 {
		t.Fatal("the good snapshot was removed")
	}
}

func TestFindRefusesWriteOnly(t *testing.T) {
	ctx := context.Background()
	r, _ := testutil.NewRepo(t)
	wo := testutil.WriteOnly(t, r)
	if _, err := Find(ctx, wo); err != repo.ErrWriteOnly {
		t.Fatalf("write-only Find: %v", err)
	}
}

// Index entries that point to forged or missing copies: an unsigned index
// file lists a forged copy of a genuine blob, a genuine entry (copied from
// the real index) and an entry of a pack that does not exist; an unsigned
// gc mark names the genuine pack. Find names the index file and the mark;
// Apply supersedes the file with a signed one that keeps the good entry,
// removes it and the mark; nothing readable is lost.
func TestRewriteIndexWithForgedEntries(t *testing.T) {
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	plain := bytes.Repeat([]byte("genuine content "), 500)
	w := r.StartWriting()
	ref, _, _, err := w.SaveBlob(ctx, repo.DataBlob, r.BlobKey(plain), plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	genuine, ok := r.Index().Lookup(repo.BlobHandle{Type: repo.DataBlob, ID: ref.ID})
	if !ok {
		t.Fatal("blob not indexed")
	}
	// the attacker's pack: garbage under the genuine blob's ID
	garbage := bytes.Repeat([]byte{0xee}, int(genuine.Length))
	fb := []packfile.Blob{{Type: packfile.Data, ID: ref.ID, Length: genuine.Length}}
	pack := packfile.AppendHeader(bytes.Clone(garbage), [packfile.UniqueLen]byte{7}, fb)
	forgedPack := hash.Sum(pack)
	if err := be.Save(ctx, storage.Handle{Type: storage.Pack, Name: forgedPack.String()}, pack); err != nil {
		t.Fatal(err)
	}
	x := &packfile.Index{Packs: []packfile.Pack{
		{ID: forgedPack, Blobs: fb},
		{ID: genuine.Pack, Blobs: []packfile.Blob{{Type: packfile.Data, ID: ref.ID, Offset: genuine.Offset, Length: genuine.Length}}},
		{ID: hash.Sum([]byte("no such pack")), Blobs: []packfile.Blob{{Type: packfile.Tree, ID: hash.Sum([]byte("t")), Length: 100}}},
	}}
	idx, _ := packfile.EncodeIndex(x, nil)
	forgedIndex := hash.Sum(idx)
	if err := be.Save(ctx, storage.Handle{Type: storage.Index, Name: forgedIndex.String()}, idx); err != nil {
		t.Fatal(err)
	}
	mark := append([]byte(`{"time":"2001-01-01T00:00:00Z","packs":["`+genuine.Pack.String()+`"]}`), make([]byte, 64)...)
	markID := hash.Sum(mark)
	if err := be.Save(ctx, storage.Handle{Type: storage.GCMark, Name: markID.String()}, mark); err != nil {
		t.Fatal(err)
	}

	plan, err := Find(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[Kind]hash.ID{}
	for _, a := range plan.Actions {
		kinds[a.Kind] = a.ID
		if a.Kind == RewriteIndex && (!strings.Contains(a.Reason, "2 of its 3 entries") || !strings.Contains(a.Reason, "unsigned")) {
			t.Errorf("reason: %s", a.Reason)
		}
	}
	if len(plan.Actions) != 2 || kinds[RewriteIndex] != forgedIndex || kinds[RemoveMark] != markID {
		t.Fatalf("plan %+v, want the forged index file rewritten and the mark removed", plan.Actions)
	}
	if _, err := be.Stat(ctx, storage.Handle{Type: storage.Index, Name: forgedIndex.String()}); err != nil {
		t.Fatal("Find changed something")
	}
	if res, err := Apply(ctx, r, plan, ApplyOptions{}); err != nil || len(res.Done) != 2 {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	for _, h := range []storage.Handle{{Type: storage.Index, Name: forgedIndex.String()}, {Type: storage.GCMark, Name: markID.String()}} {
		if _, err := be.Stat(ctx, h); !storage.IsNotExist(err) {
			t.Errorf("%s is still there: %v", h, err)
		}
	}
	// a fresh reader: the blob reads, no copy left points to the forgery,
	// and the good entry is vouched for by a signed index file
	r2, err := repo.Open(ctx, be, repo.Credential{Password: []byte(testutil.Password)}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range r2.Index().Copies(repo.BlobHandle{Type: repo.DataBlob, ID: ref.ID}) {
		if c.Pack == forgedPack {
			t.Error("the forged copy is still indexed")
		}
		if !c.Trusted {
			t.Errorf("copy %+v not vouched for", c)
		}
	}
	if got, err := r2.LoadBlob(ctx, repo.DataBlob, ref, nil); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("LoadBlob after repair: %v", err)
	}
	if plan, err := Find(ctx, r2); err != nil || !plan.Empty() {
		t.Fatalf("second Find: %+v, %v", plan, err)
	}
	// applying the old plan again changes nothing (what it acted on is gone)
	before, _ := r2.ListIDs(ctx, storage.Index)
	if _, err := Apply(ctx, r2, plan, ApplyOptions{}); err != nil {
		t.Fatalf("old plan applied again: %v", err)
	}
	if after, _ := r2.ListIDs(ctx, storage.Index); len(after) != len(before) {
		t.Fatalf("old plan applied again: %d index files, were %d", len(after), len(before))
	}
}

// A prune's lease in gc/ (of a prune running now, or of one that died) is
// neither a mark nor damaged: Find goes on and plans nothing for it.
func TestFindSkipsLeases(t *testing.T) {
	ctx := context.Background()
	r, _ := testutil.NewRepo(t)
	l, err := r.AcquireLease(ctx, repo.LeaseOptions{Holder: "pruner", PID: 4242})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Find(ctx, r)
	if err != nil {
		t.Fatalf("Find beside a prune's lease: %v", err)
	}
	if !plan.Empty() {
		t.Fatalf("a plan for a lease: %+v", plan.Actions)
	}
	// nor does applying an old plan that names it remove it
	leases, err := r.Leases(ctx)
	if err != nil || len(leases) != 1 {
		t.Fatalf("leases: %+v, %v", leases, err)
	}
	if err := removeUnsignedMark(ctx, r, leases[0].ID); err == nil {
		t.Fatal("a lease was removed as an unsigned mark")
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
