// Package repair finds what makes a repository unusable or untrustworthy
// and can be removed without losing anything readable, and removes it.
// It works in two steps so that a person sees what will happen first:
// Find returns a Plan (nothing is changed), Apply carries it out.
//
// Each kind of problem is one finder (see finders) and one Kind of Action;
// a new kind of repair adds both. Today:
//   - snapshot records that do not decode (repo.ErrDamagedSnapshot), which
//     block nothing any more (prune and forget skip them) but clutter every
//     listing with warnings;
//   - index entries that point to forged or missing copies (found by
//     hashing, as check --read-data does): readers skip them, but check
//     reports them every time, and they cost every reader a failed read;
//     a new index file signed by the authority supersedes each index file
//     that holds such entries and keeps every good one;
//   - gc marks not signed by a full key, which prune and backups ignore.
package repair

import (
	"context"
	"errors"
	"fmt"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// Kind is what an Action does.
type Kind string

// Kinds of actions.
const (
	// RemoveSnapshot removes a snapshot record that does not decode. It
	// references nothing anyone can read, so nothing is lost.
	RemoveSnapshot Kind = "remove-snapshot"
	// RewriteIndex supersedes an index file that lists forged or missing
	// copies with a signed one holding its good entries; then it removes
	// the old file. Only copies that cannot be read are dropped.
	RewriteIndex Kind = "rewrite-index"
	// RemoveMark removes a gc mark that no full key signed: prune and
	// backups ignore it, so it marks nothing.
	RemoveMark Kind = "remove-mark"
)

// Action is one change of a Plan.
type Action struct {
	Kind   Kind    `json:"kind"`
	ID     hash.ID `json:"id"`     // the object acted on
	Reason string  `json:"reason"` // why, for people
}

// Plan is what Apply will do.
type Plan struct {
	Actions []Action `json:"actions"`
}

// Empty reports whether there is nothing to repair.
func (p *Plan) Empty() bool { return len(p.Actions) == 0 }

// finder adds the actions of one kind of problem to a plan.
type finder func(ctx context.Context, r *repo.Repository, p *Plan) error

// finders run in this order; their actions are applied in the same order.
var finders = []finder{findUndecodableSnapshots, findBadIndexEntries, findUnsignedMarks}

// Find looks for every problem repair can fix and returns the plan. It
// changes nothing. It needs a full key (it reads snapshot records).
func Find(ctx context.Context, r *repo.Repository) (*Plan, error) {
	if r.WriteOnly() {
		return nil, repo.ErrWriteOnly
	}
	p := &Plan{Actions: []Action{}}
	for _, f := range finders {
		if err := f(ctx, r, p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func findUndecodableSnapshots(ctx context.Context, r *repo.Repository, p *Plan) error {
	ids, err := r.ListIDs(ctx, storage.Snapshot)
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		_, err := snapshot.Load(ctx, r, id)
		switch {
		case err == nil, storage.IsNotExist(err): // fine, or removed meanwhile
		case errors.Is(err, repo.ErrDamagedSnapshot):
			p.Actions = append(p.Actions, Action{Kind: RemoveSnapshot, ID: id, Reason: err.Error()})
		default:
			// could not be read (storage error): it may be fine, and
			// repair never removes what it could not look at
			return fmt.Errorf("snapshot %s: %w", id.Short(), err)
		}
	}
	return nil
}

// Result is what Apply did.
type Result struct {
	Done   []Action `json:"done"`
	Failed []Failed `json:"failed,omitempty"`
}

// Failed is an action that could not be carried out.
type Failed struct {
	Action
	Error string `json:"error"`
}

// Apply carries out the plan. Each action checks its premise again first
// (the repository may have changed since Find), so applying an old plan
// never removes something that has become readable or needed. It goes on
// after a failed action and returns an error if any failed.
func Apply(ctx context.Context, r *repo.Repository, p *Plan) (*Result, error) {
	res := &Result{Done: []Action{}}
	for _, a := range p.Actions {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		var err error
		switch a.Kind {
		case RemoveSnapshot:
			err = removeUndecodable(ctx, r, a.ID)
		case RewriteIndex:
			err = rewriteIndex(ctx, r, a.ID)
		case RemoveMark:
			err = removeUnsignedMark(ctx, r, a.ID)
		default:
			err = fmt.Errorf("unknown action %q", a.Kind)
		}
		if err != nil {
			res.Failed = append(res.Failed, Failed{Action: a, Error: err.Error()})
			continue
		}
		res.Done = append(res.Done, a)
	}
	if len(res.Failed) > 0 {
		return res, fmt.Errorf("%d of %s failed", len(res.Failed), ui.Count(len(p.Actions), "repair"))
	}
	return res, nil
}

func removeUndecodable(ctx context.Context, r *repo.Repository, id hash.ID) error {
	_, err := snapshot.Load(ctx, r, id)
	switch {
	case err == nil:
		return fmt.Errorf("snapshot %s decodes now: not removed", id.Short())
	case storage.IsNotExist(err):
		return nil // gone already
	case !errors.Is(err, repo.ErrDamagedSnapshot):
		return fmt.Errorf("snapshot %s: %w: not removed", id.Short(), err)
	}
	return r.RemoveSnapshot(ctx, id)
}
