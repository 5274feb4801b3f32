package forget

import (
	"context"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// PlanGroup is one group of snapshots and what becomes of each.
type PlanGroup struct {
	Key    GroupKey
	Keep   []*snapshot.Record
	Remove []*snapshot.Record
}

// Plan is what forget keeps and removes.
type Plan struct {
	Groups []PlanGroup
	// Reasons says why each kept snapshot is kept (the rules that keep it).
	Reasons map[hash.ID][]string
}

// PlanSnapshots plans to remove exactly snaps (forget given IDs): one
// group, nothing kept.
func PlanSnapshots(snaps []*snapshot.Record) *Plan {
	return &Plan{Groups: []PlanGroup{{Remove: snaps}}, Reasons: map[hash.ID][]string{}}
}

// PlanPolicy groups snaps by groupBy (see Group) and applies p to each
// group as of now.
func PlanPolicy(snaps []*snapshot.Record, p Policy, groupBy string, now time.Time) (*Plan, error) {
	byKey, err := Group(snaps, groupBy)
	if err != nil {
		return nil, err
	}
	plan := &Plan{Reasons: map[hash.ID][]string{}}
	for _, k := range SortedKeys(byKey) {
		keep, remove, why := Apply(byKey[k], p, now)
		for id, w := range why {
			plan.Reasons[id] = w
		}
		plan.Groups = append(plan.Groups, PlanGroup{Key: k, Keep: keep, Remove: remove})
	}
	return plan, nil
}

// ToRemove lists the snapshots the plan removes, group by group.
func (p *Plan) ToRemove() []*snapshot.Record {
	var out []*snapshot.Record
	for _, g := range p.Groups {
		out = append(out, g.Remove...)
	}
	return out
}

// Remove removes the snapshot records snaps from r (their data stays until
// prune). A snapshot that cannot be removed does not stop the others: its
// error is in failed. Remove stops when ctx ends and returns its error.
func Remove(ctx context.Context, r *repo.Repository, snaps []*snapshot.Record) (removed int, failed []error, err error) {
	for _, sn := range snaps {
		if ctx.Err() != nil {
			break
		}
		if err := r.RemoveSnapshot(ctx, sn.ID); err != nil {
			failed = append(failed, err)
			continue
		}
		removed++
	}
	return removed, failed, ctx.Err()
}
