package repair

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/prune"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/testutil"
)

// leases returns the prune leases in r's repository.
func leases(t *testing.T, r *repo.Repository) []repo.LeaseInfo {
	t.Helper()
	l, err := r.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// While a prune holds the lease, repair finds its plan (reading needs no
// lease, and the lease is not taken for a damaged mark) but applies
// nothing: the error names the prune's holder. Once the prune is done,
// the same plan is applied and the repair's own lease is gone.
func TestApplyRefusesWhilePruneHoldsLease(t *testing.T) {
	ctx := context.Background()
	f := newReindexFixture(t)
	f.replace(storage.Index, f.index1, func(b []byte) []byte { b[10] ^= 1; return b })
	pr, err := f.r.AcquireLease(ctx, repo.LeaseOptions{Task: repo.LeasePrune, Holder: "backup7", PID: 4242})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Find(ctx, f.r)
	if err != nil {
		t.Fatalf("Find beside a prune's lease: %v", err)
	}
	if len(idsOf(plan.Actions, IndexPack)) != 2 || len(idsOf(plan.Actions, RemoveDamagedIndex)) != 1 || len(idsOf(plan.Actions, RemoveMark)) != 0 {
		t.Fatalf("plan: %+v", plan.Actions)
	}
	before, _ := f.r.ListIDs(ctx, storage.Index)

	res, err := Apply(ctx, f.r, plan, ApplyOptions{Holder: "fixer"})
	var held *repo.LeaseHeldError
	if !errors.As(err, &held) || !errors.Is(err, repo.ErrLeaseHeld) || res != nil {
		t.Fatalf("Apply beside a prune: %+v, %v", res, err)
	}
	if msg := err.Error(); !strings.Contains(msg, "a prune is running") || !strings.Contains(msg, "backup7 (pid 4242)") {
		t.Errorf("the error does not name the prune: %s", msg)
	}
	if after, _ := f.r.ListIDs(ctx, storage.Index); len(after) != len(before) {
		t.Errorf("index files %d -> %d: Apply wrote beside a prune", len(before), len(after))
	}
	if l := leases(t, f.r); len(l) != 1 || l[0].Holder != "backup7" {
		t.Fatalf("leases after the refused repair: %+v", l)
	}

	if err := pr.Release(ctx); err != nil {
		t.Fatal(err)
	}
	res, err = Apply(ctx, f.r, plan, ApplyOptions{Holder: "fixer"})
	if err != nil || len(res.Done) != len(plan.Actions) {
		t.Fatalf("Apply after the prune: %+v, %v", res, err)
	}
	if l := leases(t, f.r); len(l) != 0 {
		t.Fatalf("repair left its lease: %+v", l)
	}
	if n := testutil.Reopen(t, f.be).Index().Len(); n != 6 {
		t.Fatalf("%d blobs indexed, want 6", n)
	}
}

// hooked runs a function (once) when a snapshot record is removed, before
// removing it: something that happens while a repair applies its plan.
type hooked struct {
	storage.Backend
	once   sync.Once
	before func(ctx context.Context)
}

func (b *hooked) Remove(ctx context.Context, h storage.Handle) error {
	if h.Type == storage.Snapshot && b.before != nil {
		b.once.Do(func() { b.before(ctx) })
	}
	return b.Backend.Remove(ctx, h)
}

// undecodable stores a snapshot record that does not decode: a plan
// with one action.
func undecodable(t *testing.T, r *repo.Repository) hash.ID {
	t.Helper()
	id, err := r.SaveSnapshotRecord(context.Background(), []byte("not json"))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// A prune that starts while a repair applies its plan refuses, naming
// the repair, also once the repair's lease has outlived its TTL (it is
// renewed); the repair's lease is gone afterwards.
func TestPruneRefusesWhileRepairApplies(t *testing.T) {
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	bad := undecodable(t, r)
	plan, err := Find(ctx, r)
	if err != nil || len(plan.Actions) != 1 {
		t.Fatalf("plan: %+v, %v", plan, err)
	}
	var pruneErr error
	var pruneRes *prune.Result
	hb := &hooked{Backend: be, before: func(context.Context) {
		time.Sleep(700 * time.Millisecond) // over two TTLs of the repair's lease
		pruneRes, pruneErr = prune.Run(ctx, testutil.Reopen(t, be), prune.Options{Holder: "nightly"})
	}}
	rr := testutil.Reopen(t, hb)
	res, err := Apply(ctx, rr, plan, ApplyOptions{Holder: "fixer", LeaseTTL: 300 * time.Millisecond})
	if err != nil || len(res.Done) != 1 {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	var held *repo.LeaseHeldError
	if !errors.As(pruneErr, &held) || held.Lease.Holder != "fixer" || held.Lease.Task != repo.LeaseRepair || pruneRes != nil {
		t.Fatalf("prune beside a repair: %+v, %v", pruneRes, pruneErr)
	}
	if !strings.Contains(pruneErr.Error(), "a repair is running") {
		t.Errorf("the error does not say that a repair runs: %v", pruneErr)
	}
	if ids, _ := r.ListIDs(ctx, storage.Snapshot); len(ids) != 0 {
		t.Fatalf("snapshot %s not removed: %v", bad.Short(), ids)
	}
	if l := leases(t, r); len(l) != 0 {
		t.Fatalf("repair left its lease: %+v", l)
	}
	// and now prune runs
	if _, err := prune.Run(ctx, testutil.Reopen(t, be), prune.Options{}); err != nil {
		t.Fatalf("prune after the repair: %v", err)
	}
}

// Two repairs exclude each other as two prunes do.
func TestSecondRepairRefuses(t *testing.T) {
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	undecodable(t, r)
	plan, err := Find(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	var second error
	hb := &hooked{Backend: be, before: func(context.Context) {
		_, second = Apply(ctx, testutil.Reopen(t, be), plan, ApplyOptions{Holder: "other"})
	}}
	if _, err := Apply(ctx, testutil.Reopen(t, hb), plan, ApplyOptions{Holder: "first"}); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(second, repo.ErrLeaseHeld) || !strings.Contains(second.Error(), "a repair is running") || !strings.Contains(second.Error(), "first") {
		t.Fatalf("second repair: %v", second)
	}
}

// The lease is released after a repair that failed: an action that
// failed, and a repair interrupted (its context cancelled) midway.
func TestApplyReleasesLeaseAfterFailure(t *testing.T) {
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	undecodable(t, r)
	if _, err := r.SaveSnapshotRecord(ctx, []byte("not json either")); err != nil {
		t.Fatal(err)
	}
	// a plan one of whose actions fails
	failing := &Plan{Actions: []Action{{Kind: "no-such-kind", ID: hash.Sum([]byte("x"))}}}
	if res, err := Apply(ctx, r, failing, ApplyOptions{}); err == nil || len(res.Failed) != 1 {
		t.Fatalf("Apply of a failing plan: %+v, %v", res, err)
	}
	if l := leases(t, r); len(l) != 0 {
		t.Fatalf("lease left after a failed repair: %+v", l)
	}

	plan, err := Find(ctx, r)
	if err != nil || len(plan.Actions) != 2 {
		t.Fatalf("plan: %+v, %v", plan, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hb := &hooked{Backend: be, before: func(context.Context) { cancel() }}
	if _, err := Apply(cctx, testutil.Reopen(t, hb), plan, ApplyOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Apply: %v", err)
	}
	if l := leases(t, r); len(l) != 0 {
		t.Fatalf("lease left after an interrupted repair: %+v", l)
	}
}
