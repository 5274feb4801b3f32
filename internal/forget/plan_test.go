package forget

import (
	"context"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/testutil"
)

func TestPlanAndRemove(t *testing.T) {
	ctx := context.Background()
	r, _ := testutil.NewRepo(t)
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	var recs []*snapshot.Record
	for i, host := range []string{"a", "a", "a", "b"} {
		sn := &snapshot.Snapshot{Version: 2, Time: now.Add(-time.Duration(4-i) * time.Hour), Hostname: host,
			Paths: []string{"/etc"}, Tree: hash.Ref{ID: hash.Sum([]byte{byte(i)})}}
		id, err := snapshot.Save(ctx, r, sn)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &snapshot.Record{ID: id, Snapshot: sn})
	}
	plan, err := PlanPolicy(recs, Policy{Last: 1}, DefaultGroupBy, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Groups) != 2 {
		t.Fatalf("%d groups, want one per host", len(plan.Groups))
	}
	rm := plan.ToRemove()
	if len(rm) != 2 || rm[0].Hostname != "a" || rm[1].Hostname != "a" {
		t.Fatalf("remove %v, want the two older snapshots of a", rm)
	}
	for _, g := range plan.Groups {
		if len(g.Keep) != 1 || len(plan.Reasons[g.Keep[0].ID]) == 0 {
			t.Errorf("group %s keeps %v, reasons %v", g.Key.Host, g.Keep, plan.Reasons)
		}
	}
	if _, err := PlanPolicy(recs, Policy{Last: 1}, "nonsense", now); err == nil {
		t.Error("a bad --group-by was accepted")
	}

	removed, failed, err := Remove(ctx, r, rm)
	if err != nil || removed != 2 || len(failed) != 0 {
		t.Fatalf("Remove: %d removed, %v, %v", removed, failed, err)
	}
	left, _, err := snapshot.List(ctx, r)
	if err != nil || len(left) != 2 {
		t.Fatalf("%d snapshots left, want 2 (%v)", len(left), err)
	}
	// removing what is gone fails for each, and goes on
	removed, failed, err = Remove(ctx, r, PlanSnapshots(rm).ToRemove())
	if err != nil || removed != 0 || len(failed) != 2 {
		t.Errorf("second Remove: %d removed, %v, %v; want two failures", removed, failed, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if removed, _, err := Remove(cctx, r, left); err == nil || removed != 0 {
		t.Errorf("canceled Remove: %d removed, %v", removed, err)
	}
}
