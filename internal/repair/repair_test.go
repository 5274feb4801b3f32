package repair

import (
	"context"
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
	res, err := Apply(ctx, r, plan)
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
	if res, err := Apply(ctx, r, &Plan{Actions: []Action{{Kind: RemoveSnapshot, ID: good}}}); err == nil || len(res.Done) != 0 {
		t.Fatalf("Apply removed a snapshot that decodes: %+v, %v", res, err)
	}
	if ids, _ := r.ListIDs(ctx, storage.Snapshot); len(ids) != 1 {
		t.Fatal("the good snapshot was removed")
	}
}

func TestFindRefusesWriteOnly(t *testing.T) {
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	_, kf, err := r.AddKey(ctx, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	wo, err := repo.Open(ctx, be, repo.Credential{KeyFile: kf}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Find(ctx, wo); err != repo.ErrWriteOnly {
		t.Fatalf("write-only Find: %v", err)
	}
}
