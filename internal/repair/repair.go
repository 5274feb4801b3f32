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
//   - packs that no readable index file lists (an index file is damaged
//     or lost, or a backup was killed before it wrote one): each blob of
//     such a pack is hashed against its ID and the pack against its name,
//     and the packs that verify are listed in new index files signed by
//     the authority; then the index files that cannot be loaded are
//     removed (reindex.go). A pack that does not verify is reported and
//     left to prune;
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
	"time"

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
	// IndexPack lists a pack that no readable index file lists, each of
	// its blobs verified, in a new index file signed by the authority.
	// All of a plan's IndexPack actions are carried out together (the
	// entries are split into files as every writer splits them).
	IndexPack Kind = "index-pack"
	// RemoveDamagedIndex removes an index file whose stored bytes do not
	// load (damaged, undecodable, a signature that does not verify),
	// after the IndexPack actions before it: its packs are among them.
	RemoveDamagedIndex Kind = "remove-damaged-index"
)

// Kinds of what a plan leaves alone (Plan.Left): they are reported, not
// acted on.
const (
	// LeavePack is a pack that no index file lists and that repair does
	// not index: its header does not decode, a blob does not hash to its
	// ID or the pack to its name (damaged, or garbage a write-only host
	// uploaded). Prune removes it once no snapshot needs it.
	LeavePack Kind = "leave-pack"
	// UnreadablePack is a pack that no index file lists and that could not
	// be read now (a storage error): it may be fine, and the next repair
	// looks at it again.
	UnreadablePack Kind = "unreadable-pack"
	// LeaveIndex is a damaged index file kept because a pack that it may
	// have listed could not be read.
	LeaveIndex Kind = "leave-index"
)

// Incomplete returns how many packs that no index file lists could not
// be read (UnreadablePack): a repair that leaves them is not finished.
func (p *Plan) Incomplete() int {
	n := 0
	for _, a := range p.Left {
		if a.Kind == UnreadablePack {
			n++
		}
	}
	return n
}

// Action is one change of a Plan.
type Action struct {
	Kind   Kind    `json:"kind"`
	ID     hash.ID `json:"id"`     // the object acted on
	Reason string  `json:"reason"` // why, for people
	// Blobs and Bytes are the blobs an IndexPack action lists and the
	// stored size of its pack (of a LeavePack: the pack's size).
	Blobs int   `json:"blobs,omitempty"`
	Bytes int64 `json:"bytes,omitempty"`
}

// Plan is what Apply will do.
type Plan struct {
	Actions []Action `json:"actions"`
	// Left is what Find found wrong but leaves alone, and why.
	Left []Action `json:"left,omitempty"`
	// verified holds the blobs of the packs of the IndexPack actions, as
	// Find verified them: Apply does not read those packs again.
	verified map[hash.ID]verifiedPack
	// index is the index files as Find loaded them (the finders share it)
	index *indexState
	// prog is told what Find reads (the packs: the long part)
	prog ui.Progress
}

// Empty reports whether there is nothing to repair.
func (p *Plan) Empty() bool { return len(p.Actions) == 0 }

// finder adds the actions of one kind of problem to a plan.
type finder func(ctx context.Context, r *repo.Repository, p *Plan) error

// finders run in this order; their actions are applied in the same order.
var finders = []finder{findUndecodableSnapshots, findUnindexedPacks, findBadIndexEntries, findUnsignedMarks}

// Find looks for every problem repair can fix and returns the plan. It
// changes nothing. It needs a full key (it reads snapshot records).
func Find(ctx context.Context, r *repo.Repository) (*Plan, error) {
	return FindProgress(ctx, r, ui.NoProgress)
}

// FindProgress is Find telling prog what it reads: it reads whole packs
// (those no index file lists, and those whose entries it hashes), which
// takes about as long as check --read-data.
func FindProgress(ctx context.Context, r *repo.Repository, prog ui.Progress) (*Plan, error) {
	if r.WriteOnly() {
		return nil, repo.ErrWriteOnly
	}
	p := &Plan{Actions: []Action{}, prog: prog}
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
	// Warnings are notes for people: a lease taken over from a prune or
	// repair that no longer runs.
	Warnings []string `json:"warnings,omitempty"`
}

// Failed is an action that could not be carried out.
type Failed struct {
	Action
	Error string `json:"error"`
}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	// Holder names this repair in its lease (docs/FORMAT.md "Prune
	// leases"); default the host name.
	Holder string
	// LeaseTTL is how long the lease counts without renewal (default
	// repo.DefaultLeaseTTL); it is renewed every third of it while Apply
	// works.
	LeaseTTL time.Duration
}

// Apply carries out the plan. Each action checks its premise again first
// (the repository may have changed since Find), so applying an old plan
// never removes something that has become readable or needed. It goes on
// after a failed action and returns an error if any failed.
//
// A plan with actions is carried out under the repository's prune lease,
// as a prune is (repo.Repository.HoldLease): a prune beside it could
// delete a pack it has just indexed, or sweep packs that the index files
// it writes list, and two repairs could supersede each other's files.
// While a prune or another repair holds the lease, Apply changes nothing
// and fails with a *repo.LeaseHeldError (and a nil Result). Find takes
// no lease: it only reads, and Apply checks what it found again.
func Apply(ctx context.Context, r *repo.Repository, p *Plan, opts ApplyOptions) (_ *Result, err error) {
	res := &Result{Done: []Action{}}
	if p.Empty() {
		return res, nil // nothing to write: no lease
	}
	var held *repo.HeldLease
	held, ctx, err = r.HoldLease(ctx, repo.LeaseOptions{Task: repo.LeaseRepair, Holder: opts.Holder, TTL: opts.LeaseTTL})
	if err != nil {
		return nil, err
	}
	// err is Apply's result: Release tells why the repair stopped if its
	// lease could not be renewed
	defer func() { err = held.Release(err) }()
	res.Warnings = held.TakeOverNotes()
	// the IndexPack actions, carried out together at the first of them
	var indexActs []Action
	for _, a := range p.Actions {
		if a.Kind == IndexPack {
			indexActs = append(indexActs, a)
		}
	}
	indexErrs := map[hash.ID]error{}
	indexed, indexFailed := false, false
	for _, a := range p.Actions {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		var err error
		switch a.Kind {
		case IndexPack:
			if !indexed {
				indexed = true
				errs, err := indexPacks(ctx, r, p, indexActs)
				for i, ia := range indexActs {
					switch {
					case err != nil:
						indexErrs[ia.ID] = err
					case errs[i] != nil:
						indexErrs[ia.ID] = errs[i]
					}
				}
				indexFailed = len(indexErrs) > 0
			}
			err = indexErrs[a.ID]
		case RemoveDamagedIndex:
			if indexFailed {
				// it may have listed a pack that is not indexed yet
				err = errors.New("not removed: not every pack that no index file lists was indexed")
			} else {
				err = removeDamagedIndex(ctx, r, a.ID)
			}
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
