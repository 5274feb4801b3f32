package repo

// Prune leases (docs/FORMAT.md "Prune leases"): an expiring, signed
// object in gc/ that says a prune is running, who runs it and until when
// it counts. Objects stay immutable and named by their hash: a renewal is
// a new object, after which the previous one is removed.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

const (
	domainLease = "floe v2 prune lease"
	leaseKind   = "prune lease"
	// maxLeaseSize bounds a lease read from gc/: a lease is a few hundred
	// bytes; anything larger is a mark (or garbage) and is read as one.
	maxLeaseSize = 4 << 10
)

// Lease is the content of a prune lease.
type Lease struct {
	Kind    string    `json:"kind"` // "prune lease"
	Holder  string    `json:"holder"`
	PID     int       `json:"pid"`
	Run     string    `json:"run"` // random, the same for every renewal of one run
	Time    time.Time `json:"time"`
	Expires time.Time `json:"expires"`
}

// Expired reports whether the lease no longer counts at now.
func (l *Lease) Expired(now time.Time) bool { return !now.Before(l.Expires) }

// ErrPruneRunning is wrapped by the error of AcquireLease when another
// prune holds an unexpired lease.
var ErrPruneRunning = errors.New("another prune is running on this repository")

// LeaseHeldError names the holder of the lease that stops a prune.
type LeaseHeldError struct{ Lease Lease }

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("%v: held by %s (pid %d) since %s, renewed %s, until %s",
		ErrPruneRunning, e.Lease.Holder, e.Lease.PID, e.Lease.Time.Local().Format(time.RFC3339),
		e.Lease.Time.Local().Format("15:04:05"), e.Lease.Expires.Local().Format("15:04:05"))
}

func (e *LeaseHeldError) Unwrap() error { return ErrPruneRunning }

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
	r     *Repository
	lease Lease
	id    hash.ID
	ttl   time.Duration
}

// AcquireLease takes the prune lease of r for holder (host name, pid):
// it fails with a *LeaseHeldError when another unexpired lease exists,
// removes expired ones (a prune that died), and writes its own. Then it
// looks again: if another unexpired lease appeared (a prune that started
// at the same moment), it removes its own and fails, so that at most one
// of them goes on (both may fail: run again). ttl is how long a lease counts without
// renewal; Renew must be called well within it.
func (r *Repository) AcquireLease(ctx context.Context, holder string, pid int, ttl time.Duration) (*PruneLease, error) {
	if !r.Authority() {
		return nil, fmt.Errorf("take the prune lease: %w", ErrNotAuthority)
	}
	leases, err := r.Leases(ctx)
	if err != nil {
		return nil, fmt.Errorf("read prune leases: %w", err)
	}
	now := time.Now()
	var stale []hash.ID
	for _, l := range leases {
		if !l.Expired(now) {
			return nil, &LeaseHeldError{Lease: l.Lease}
		}
		stale = append(stale, l.ID)
	}
	var run [16]byte
	_, _ = rand.Read(run[:])
	p := &PruneLease{r: r, ttl: ttl, lease: Lease{Kind: leaseKind, Holder: holder, PID: pid, Run: hex.EncodeToString(run[:])}}
	if err := p.write(ctx); err != nil {
		return nil, err
	}
	// look again: another prune may have written its lease meanwhile
	leases, err = r.Leases(ctx)
	if err != nil {
		_ = p.Release(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("read prune leases: %w", err)
	}
	now = time.Now()
	for _, l := range leases {
		if l.Run == p.lease.Run || l.Expired(now) {
			continue
		}
		// Another prune wrote a lease meanwhile. Whoever sees another
		// lease backs off: no rule of precedence would be safe, as two
		// prunes may see each other's leases at different moments. Both
		// may back off; never both go on.
		_ = p.Release(context.WithoutCancel(ctx))
		return nil, &LeaseHeldError{Lease: l.Lease}
	}
	// taken over: the leases of prunes that died
	for _, id := range stale {
		_ = r.RemoveGCMark(ctx, id)
	}
	return p, nil
}

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

// BreakLeases removes every prune lease (prune --force-unlock, after the
// user confirmed that no prune runs) and returns them.
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
