package forget

import (
	"context"
	"errors"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
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
	// Undecodable are records given by ID that do not decode
	// (repo.ErrDamagedSnapshot, see SelectIDs): removed too.
	Undecodable []hash.ID
}

// SelectIDs resolves specs as snapshot.Select does, except that a record
// given by its ID (or a unique prefix) that does not decode is returned in
// undecodable, with the reason in warnings, instead of failing: it
// references nothing readable, so removing it is always safe, and forget
// by ID is how a person gets rid of one (besides `floe repair`).
func SelectIDs(ctx context.Context, r *repo.Repository, specs []string, f snapshot.Filter) (sel []*snapshot.Record, undecodable []hash.ID, warnings []error, err error) {
	seen := map[hash.ID]bool{}
	for _, s := range specs {
		sn, err := snapshot.Find(ctx, r, s, f)
		if errors.Is(err, repo.ErrDamagedSnapshot) && s != "latest" {
			id, rerr := r.ResolveSnapshotPrefix(ctx, s)
			if rerr != nil {
				return nil, nil, nil, rerr
			}
			warnings = append(warnings, err)
			if !seen[id] {
				seen[id] = true
				undecodable = append(undecodable, id)
			}
			continue
		}
		if err != nil {
			return nil, nil, nil, err
		}
		if !seen[sn.ID] {
			seen[sn.ID] = true
			sel = append(sel, sn)
		}
	}
	return sel, undecodable, warnings, nil
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

// PlanPolicyArrived is PlanPolicy with each snapshot's time taken as the
// earlier of its own and its arrival at the storage (snapshot.EffectiveTime,
// origins from snapshot.Origins): a snapshot dated in the future by its
// writer (a wrong clock, or a compromised host) is not kept as the newest
// in place of real ones. The plan holds the records as they are.
func PlanPolicyArrived(snaps []*snapshot.Record, p Policy, groupBy string, now time.Time, origins map[hash.ID]storage.Origin) (*Plan, error) {
	if len(origins) == 0 {
		return PlanPolicy(snaps, p, groupBy, now)
	}
	orig := make(map[hash.ID]*snapshot.Record, len(snaps))
	adjusted := make([]*snapshot.Record, len(snaps))
	for i, sn := range snaps {
		orig[sn.ID] = sn
		adjusted[i] = sn
		if t := snapshot.EffectiveTime(sn, origins); !t.Equal(sn.Time) {
			cp := *sn.Snapshot
			cp.Time = t
			adjusted[i] = &snapshot.Record{ID: sn.ID, Snapshot: &cp}
		}
	}
	plan, err := PlanPolicy(adjusted, p, groupBy, now)
	if err != nil {
		return nil, err
	}
	for gi := range plan.Groups {
		g := &plan.Groups[gi]
		for i, sn := range g.Keep {
			g.Keep[i] = orig[sn.ID]
		}
		for i, sn := range g.Remove {
			g.Remove[i] = orig[sn.ID]
		}
	}
	return plan, nil
}
