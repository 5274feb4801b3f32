package repo

// Prune leases (docs/FORMAT.md "Prune leases"): an expiring, signed
// object in gc/ that says a prune (or a repair, which must not run beside
// one either) is running, who runs it and until when it counts. Objects
// stay immutable and named by their hash: a renewal is a new object,
// after which the previous one is removed. HoldLease is what prune and
// repair call: it takes the lease and renews it while they work.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

const (
	domainLease = "floe v2 prune lease"
	// leaseKind stays "prune lease" whoever takes it: a floe that knows
	// no other task reads a repair's lease as a prune's and waits too.
	leaseKind = "prune lease"
	// maxLeaseSize bounds a lease read from gc/: a lease is a few hundred
	// bytes; anything larger is a mark (or garbage) and is read as one.
	maxLeaseSize = 4 << 10
)

// Tasks that take the prune lease (Lease.Task).
const (
	LeasePrune  = "prune"
	LeaseRepair = "repair"
)

// DefaultLeaseTTL: a holder that died stops prunes and repairs for at most
// this long.
const DefaultLeaseTTL = 5 * time.Minute

// Lease is the content of a prune lease.
type Lease struct {
	Kind string `json:"kind"` // "prune lease"
	// Task is what holds it: LeasePrune or LeaseRepair; empty in the
	// leases of a floe that only prunes took it (a prune).
	Task    string    `json:"task,omitempty"`
	Holder  string    `json:"holder"`
	PID     int       `json:"pid"`
	Run     string    `json:"run"` // random, the same for every renewal of one run
	Time    time.Time `json:"time"`
	Expires time.Time `json:"expires"`
	// Boot, PIDNS and Start name the holder's process on its machine
	// (Linux: the boot ID, the PID namespace, the process's start time in
	// clock ticks after boot; leaseproc_linux.go), so that a prune or
	// repair on the same machine and in the same PID namespace can tell
	// that the holder is gone. Empty in leases of earlier versions and
	// where they could not be read: such a lease counts until it expires.
	Boot  string `json:"boot,omitempty"`
	PIDNS string `json:"pidns,omitempty"`
	Start uint64 `json:"start,omitempty"`
}

// Expired reports whether the lease no longer counts at now.
func (l *Lease) Expired(now time.Time) bool { return !now.Before(l.Expires) }

// counts reports whether l stops a prune or a repair at now: it has not
// expired and its holder is not known to be gone (Gone).
func (l *Lease) counts(now time.Time) bool { return !l.Expired(now) && !l.Gone() }

// Gone reports whether the holder of l is known to have stopped: it ran
// on this machine, in this boot and this PID namespace, and its process
// no longer runs. A lease of another machine, or one that does not name
// its process, is never known to be gone: it counts until it expires.
func (l *Lease) Gone() bool { return holderGone(l) }

// RunsHere reports whether the holder of l is known to be running on this
// machine (the same boot and PID namespace, its process alive): then its
// lease must not be removed by hand.
func (l *Lease) RunsHere() bool { return holderRunsHere(l) }

// TaskName is what holds the lease, for people: "prune", "repair", or
// "unknown task" for a name this floe does not know (a newer floe's).
func (l *Lease) TaskName() string {
	switch l.Task {
	case "", LeasePrune:
		return LeasePrune
	case LeaseRepair:
		return LeaseRepair
	}
	return taskUnknown
}

const taskUnknown = "unknown task"

// ErrLeaseHeld is wrapped by the error of AcquireLease (and HoldLease,
// CheckLease) when a prune or a repair holds an unexpired lease.
var ErrLeaseHeld = errors.New("the prune lease of this repository is held")

// LeaseHeldError names the holder of the lease that stops a prune or a
// repair.
type LeaseHeldError struct{ Lease Lease }

func (e *LeaseHeldError) Error() string {
	what := "a " + e.Lease.TaskName()
	if e.Lease.TaskName() == taskUnknown {
		what = "an " + taskUnknown
	}
	return fmt.Sprintf("%s is running on this repository: its lease is held by %s (pid %d), renewed %s, until %s",
		what, e.Lease.Holder, e.Lease.PID, e.Lease.Time.Local().Format(time.RFC3339),
		e.Lease.Expires.Local().Format("15:04:05"))
}

func (e *LeaseHeldError) Unwrap() error { return ErrLeaseHeld }

// errNotLease: a gc object that is not a (valid) lease.
var errNotLease = errors.New("not a prune lease")

// decodeLease verifies a gc object as a lease signed by the authority.
func (r *Repository) decodeLease(data []byte) (*Lease, error) {
	if len(data) < crypto.SignatureSize || len(data) > maxLeaseSize {
		return nil, errNotLease
	}
	plain, sig := data[:len(data)-crypto.SignatureSize], data[len(data)-crypto.SignatureSize:]
	if !r.secrets.AuthorityPublic.Verify(domainLease, plain, sig) {
		return nil, errNotLease
	}
	var l Lease
	if err := json.Unmarshal(plain, &l); err != nil || l.Kind != leaseKind {
		return nil, errNotLease
	}
	return &l, nil
}

// LeaseInfo is a lease and its object's ID.
type LeaseInfo struct {
	ID hash.ID
	Lease
}

// Leases reads every prune lease in gc/ (marks and unreadable objects are
// skipped: LoadGCMarks reports those), oldest first.
func (r *Repository) Leases(ctx context.Context) ([]LeaseInfo, error) {
	ids, err := r.ListIDs(ctx, storage.GCMark)
	if err != nil {
		return nil, err
	}
	var out []LeaseInfo
	for _, id := range ids {
		data, err := storage.LoadAll(ctx, r.be, storage.Handle{Type: storage.GCMark, Name: id.String()}, maxLeaseSize)
		if storage.IsNotExist(err) || errors.Is(err, storage.ErrTooLarge) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read gc/%s: %w", id.Short(), err)
		}
		if hash.Sum(data) != id {
			continue
		}
		if l, err := r.decodeLease(data); err == nil {
			out = append(out, LeaseInfo{ID: id, Lease: *l})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.Before(out[j].Time)
		}
		return string(out[i].ID[:]) < string(out[j].ID[:])
	})
	return out, nil
}

// PruneLease is a lease this process holds.
type PruneLease struct {
	r         *Repository
	lease     Lease
	id        hash.ID
	ttl       time.Duration
	takenOver []Lease
}

// LeaseOptions say who takes a lease.
type LeaseOptions struct {
	// Task is what takes it (LeasePrune, LeaseRepair), named in the
	// error of whoever it stops; default LeasePrune.
	Task string
	// Holder names the holder for people; default the host name.
	Holder string
	// PID is the holder's process; default this process.
	PID int
	// TTL is how long the lease counts without renewal; default
	// DefaultLeaseTTL. Renew must be called well within it (HoldLease
	// renews every third of it).
	TTL time.Duration
}

func (o LeaseOptions) withDefaults() LeaseOptions {
	if o.Task == "" {
		o.Task = LeasePrune
	}
	if o.Holder == "" {
		o.Holder, _ = os.Hostname()
	}
	if o.PID == 0 {
		o.PID = os.Getpid()
	}
	if o.TTL <= 0 {
		o.TTL = DefaultLeaseTTL
	}
	return o
}

// CheckLease returns a *LeaseHeldError if a prune or a repair holds an
// unexpired lease, and nil if none does. It takes nothing: it lets a
// task that reads for long before it writes (repair) refuse at once
// rather than after its reading.
func (r *Repository) CheckLease(ctx context.Context) error {
	leases, err := r.Leases(ctx)
	if err != nil {
		return fmt.Errorf("read prune leases: %w", err)
	}
	now := time.Now()
	for _, l := range leases {
		if l.counts(now) {
			return &LeaseHeldError{Lease: l.Lease}
		}
	}
	return nil
}

// AcquireLease takes the prune lease of r: it fails with a
// *LeaseHeldError when another unexpired lease exists (a prune's or a
// repair's) whose holder is not known to be gone, removes the others
// (holders that died: expired leases, and those of processes of this
// machine that no longer run, Lease.Gone), and writes its own. Then it looks again: if another unexpired lease appeared (a task
// that started at the same moment), it removes its own and fails, so that
// at most one of them goes on (both may fail: run again).
func (r *Repository) AcquireLease(ctx context.Context, o LeaseOptions) (*PruneLease, error) {
	if !r.Authority() {
		return nil, fmt.Errorf("take the prune lease: %w", ErrNotAuthority)
	}
	o = o.withDefaults()
	leases, err := r.Leases(ctx)
	if err != nil {
		return nil, fmt.Errorf("read prune leases: %w", err)
	}
	now := time.Now()
	var stale []LeaseInfo
	for _, l := range leases {
		if l.counts(now) {
			return nil, &LeaseHeldError{Lease: l.Lease}
		}
		stale = append(stale, l)
	}
	var run [16]byte
	_, _ = rand.Read(run[:])
	p := &PruneLease{r: r, ttl: o.TTL, lease: Lease{Kind: leaseKind, Task: o.Task, Holder: o.Holder, PID: o.PID, Run: hex.EncodeToString(run[:])}}
	if boot, pidNS, start, ok := procIdentity(o.PID); ok {
		p.lease.Boot, p.lease.PIDNS, p.lease.Start = boot, pidNS, start
	}
	if err := p.write(ctx); err != nil {
		return nil, err
	}
	// look again: another task may have written its lease meanwhile
	leases, err = r.Leases(ctx)
	if err != nil {
		_ = p.Release(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("read prune leases: %w", err)
	}
	now = time.Now()
	for _, l := range leases {
		if l.Run == p.lease.Run || !l.counts(now) {
			continue
		}
		// Another task wrote a lease meanwhile. Whoever sees another
		// lease backs off: no rule of precedence would be safe, as two
		// tasks may see each other's leases at different moments. Both
		// may back off; never both go on.
		_ = p.Release(context.WithoutCancel(ctx))
		return nil, &LeaseHeldError{Lease: l.Lease}
	}
	// taken over: the leases of holders that died
	for _, l := range stale {
		_ = r.RemoveGCMark(ctx, l.ID)
		if !l.Expired(now) {
			p.takenOver = append(p.takenOver, l.Lease)
		}
	}
	return p, nil
}

// TakenOver returns the unexpired leases AcquireLease took over because
// their holders were gone (Lease.Gone), for a note to the user.
func (p *PruneLease) TakenOver() []Lease { return p.takenOver }

// write stores the lease with a fresh time and removes the previous one.
func (p *PruneLease) write(ctx context.Context) error {
	prev := p.id
	p.lease.Time = time.Now().UTC()
	p.lease.Expires = p.lease.Time.Add(p.ttl)
	plain, err := json.Marshal(p.lease)
	if err != nil {
		return err
	}
	data := append(plain, p.r.secrets.AuthorityPrivate.Sign(domainLease, plain)...)
	id := hash.Sum(data)
	if err := p.r.be.Save(ctx, storage.Handle{Type: storage.GCMark, Name: id.String()}, data); err != nil && !isExist(err) {
		return fmt.Errorf("save the prune lease in gc/ (where the gc marks go): %w", err)
	}
	p.id = id
	if !prev.IsNull() {
		if err := p.r.RemoveGCMark(ctx, prev); err != nil && !storage.IsNotExist(err) {
			return fmt.Errorf("renew prune lease: %w", err)
		}
	}
	return nil
}

// Renew writes the lease again with a new expiry.
func (p *PruneLease) Renew(ctx context.Context) error { return p.write(ctx) }

// Release removes the lease.
func (p *PruneLease) Release(ctx context.Context) error {
	if p.id.IsNull() {
		return nil
	}
	if err := p.r.RemoveGCMark(ctx, p.id); err != nil && !storage.IsNotExist(err) {
		return err
	}
	p.id = hash.ID{}
	return nil
}

// Lease returns the lease as last written.
func (p *PruneLease) Lease() Lease { return p.lease }

// BreakLeases removes every prune lease (--force-unlock of prune and
// repair, after the user confirmed that neither runs) and returns them.
func (r *Repository) BreakLeases(ctx context.Context) ([]LeaseInfo, error) {
	if !r.Authority() {
		return nil, fmt.Errorf("remove prune leases: %w", ErrNotAuthority)
	}
	leases, err := r.Leases(ctx)
	if err != nil {
		return nil, err
	}
	for _, l := range leases {
		if err := r.RemoveGCMark(ctx, l.ID); err != nil && !storage.IsNotExist(err) {
			return nil, err
		}
	}
	return leases, nil
}

// HeldLease is the lease of a running prune or repair, renewed in the
// background until Release.
type HeldLease struct {
	l      *PruneLease
	parent context.Context // for the removal, without its cancellation
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup
	// failed is why renewal failed (the holder's context was cancelled);
	// written by the renewals, read by Release after they ended
	failed error
}

// HoldLease takes r's prune lease (AcquireLease) and keeps it: it renews
// it every third of its time to live until Release. Whatever the holder
// does under the lease must use the returned context: if a renewal fails
// twice in a row, the lease may expire and another prune or repair start,
// so the context is cancelled and Release returns why. The caller must
// call Release, also after an error:
//
//	held, ctx, err := r.HoldLease(ctx, repo.LeaseOptions{Task: repo.LeaseRepair})
//	if err != nil {
//		return err
//	}
//	defer func() { err = held.Release(err) }()
func (r *Repository) HoldLease(ctx context.Context, o LeaseOptions) (*HeldLease, context.Context, error) {
	l, err := r.AcquireLease(ctx, o)
	if err != nil {
		return nil, nil, err
	}
	task := l.lease.TaskName()
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	h := &HeldLease{l: l, parent: parent, cancel: cancel, done: make(chan struct{})}
	every := l.ttl / 3
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		failed := 0
		for {
			select {
			case <-h.done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := l.Renew(ctx); err != nil {
				if ctx.Err() != nil {
					return // the holder stopped: not a failure of the lease
				}
				if failed++; failed >= 2 {
					h.failed = fmt.Errorf("%s stopped: its lease could not be renewed (a prune or repair could start beside it): %w", task, err)
					cancel()
					return
				}
				continue
			}
			failed = 0
		}
	}()
	return h, ctx, nil
}

// TakeOverNotes says, for people, which unexpired leases were taken over
// when the lease was taken because their holders were gone
// (PruneLease.TakenOver): prune and repair report them as warnings.
func (h *HeldLease) TakeOverNotes() []string {
	var notes []string
	for _, l := range h.l.TakenOver() {
		notes = append(notes, fmt.Sprintf("took over the lease of a %s that no longer runs (%s, pid %d, renewed %s)",
			l.TaskName(), l.Holder, l.PID, l.Time.Local().Format(time.RFC3339)))
	}
	return notes
}

// Release stops the renewals and removes the lease (a lease that cannot
// be removed expires by itself). Call it once. It returns err, the
// holder's own result, or, if the lease could not be renewed (which
// cancelled the holder's context, so err is most likely that
// cancellation), why.
func (h *HeldLease) Release(err error) error {
	close(h.done)
	h.wg.Wait()
	h.cancel()
	// the renewals ended: h.l is this goroutine's now
	_ = h.l.Release(context.WithoutCancel(h.parent))
	failed := h.failed
	switch {
	case failed == nil:
		return err
	case err == nil, errors.Is(err, context.Canceled):
		return failed
	}
	return fmt.Errorf("%w (%w)", err, failed)
}
