package fleetsrv

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// LeaseLimits bound concurrent backups: in all (Global) and per
// repository (PerRepo); 0 is no limit.
type LeaseLimits struct {
	Global  int
	PerRepo int
}

// Leases grants leases in FIFO order within the limits (stampede
// control: 600 hosts scheduled at midnight run a few at a time). A lease
// expires when its holder stops renewing it; a queued request is dropped
// when its holder stops asking. It reads time only through now, so that
// tests drive it with a fake clock.
type Leases struct {
	limits LeaseLimits
	ttl    time.Duration
	now    func() time.Time

	mu      sync.Mutex
	held    map[string]*fleet.Lease // by id
	queue   []*ticket               // FIFO
	changed chan struct{}           // closed (and replaced) when a slot frees
}

type ticket struct {
	id              string
	host, repo, job string
	lastAsked       time.Time
}

// DefaultLeaseTTL is how long a lease lives without renewal; agents renew
// every third of it.
const DefaultLeaseTTL = 90 * time.Second

// NewLeases returns an empty lease table. now nil is time.Now; ttl 0 is
// DefaultLeaseTTL.
func NewLeases(limits LeaseLimits, ttl time.Duration, now func() time.Time) *Leases {
	if now == nil {
		now = time.Now
	}
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	return &Leases{limits: limits, ttl: ttl, now: now, held: map[string]*fleet.Lease{}, changed: make(chan struct{})}
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// expireLocked drops leases past their expiry and tickets not asked for
// within the TTL.
func (l *Leases) expireLocked(now time.Time) {
	freed := false
	for id, le := range l.held {
		if !now.Before(le.Expires) {
			delete(l.held, id)
			freed = true
		}
	}
	q := l.queue[:0]
	for _, t := range l.queue {
		if now.Sub(t.lastAsked) < l.ttl {
			q = append(q, t)
		} else {
			freed = true
		}
	}
	clear(l.queue[len(q):])
	l.queue = q
	if freed {
		l.signalLocked()
	}
}

func (l *Leases) signalLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *Leases) fitsLocked(repo string) bool {
	if l.limits.Global > 0 && len(l.held) >= l.limits.Global {
		return false
	}
	if l.limits.PerRepo > 0 {
		n := 0
		for _, le := range l.held {
			if le.Repo == repo {
				n++
			}
		}
		if n >= l.limits.PerRepo {
			return false
		}
	}
	return true
}

// grantLocked grants, in queue order, every ticket that fits the limits.
// A ticket whose repository is full does not block tickets of other
// repositories behind it, but within a repository the order is FIFO.
func (l *Leases) grantLocked(now time.Time) map[string]*fleet.Lease {
	granted := map[string]*fleet.Lease{}
	q := l.queue[:0]
	for _, t := range l.queue {
		if l.fitsLocked(t.repo) {
			le := &fleet.Lease{ID: newID(), Host: t.host, Repo: t.repo, Job: t.job, Granted: now,
				Expires: now.Add(l.ttl), TTLSeconds: int64(l.ttl / time.Second)}
			l.held[le.ID] = le
			granted[t.id] = le
			continue
		}
		q = append(q, t)
	}
	clear(l.queue[len(q):])
	l.queue = q
	return granted
}

// MaxLeasesPerHost bounds the leases a host holds and waits for at once:
// an agent asks for one per job it runs (its tasks, a backup and a check,
// wait for each other's), so an honest host stays far below, and one
// that asks for leases of made-up jobs can neither grow the table without
// bound (every request scans it) nor take more than this many of the
// slots.
const MaxLeasesPerHost = 64

// ErrHostBusy refuses a request for a lease of a host that holds and
// waits for MaxLeasesPerHost already.
var ErrHostBusy = errors.New("the host holds and waits for too many leases")

// Request asks for a lease for a host's job on repo. ticketID is empty on
// the first request, then the ticket returned. It returns either the
// lease or the ticket and its position in the queue (1: next), or
// ErrHostBusy. A host that already holds a lease for the job gets it back
// (an answer lost on the way is asked again).
func (l *Leases) Request(ticketID, host, repo, job string) (*fleet.Lease, fleet.LeaseQueued, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.expireLocked(now)
	mine := 0 // leases the host holds and waits for
	for _, le := range l.held {
		if le.Host == host && le.Job == job && le.Repo == repo {
			c := *le
			return &c, fleet.LeaseQueued{}, nil
		}
		if le.Host == host {
			mine++
		}
	}
	var t *ticket
	for _, x := range l.queue {
		if x.id == ticketID && x.host == host && x.job == job {
			t = x
			break
		}
	}
	if t == nil {
		// a host asks for a job once: a new ticket replaces an old one
		for _, x := range l.queue {
			if x.host == host && x.job == job && x.repo == repo {
				t = x
				break
			}
		}
	}
	if t == nil {
		for _, x := range l.queue {
			if x.host == host {
				mine++
			}
		}
		if mine >= MaxLeasesPerHost {
			return nil, fleet.LeaseQueued{}, fmt.Errorf("%w (%d)", ErrHostBusy, mine)
		}
		t = &ticket{id: newID(), host: host, repo: repo, job: job}
		l.queue = append(l.queue, t)
	}
	t.lastAsked = now
	granted := l.grantLocked(now)
	if le, ok := granted[t.id]; ok {
		c := *le
		return &c, fleet.LeaseQueued{}, nil
	}
	pos := 0
	for i, x := range l.queue {
		if x == t {
			pos = i + 1
		}
	}
	return nil, fleet.LeaseQueued{Ticket: t.id, Position: pos}, nil
}

// Renew extends the lease id of host; false if it expired or is another's.
func (l *Leases) Renew(id, host string) (*fleet.Lease, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.expireLocked(now)
	le, ok := l.held[id]
	if !ok || le.Host != host {
		return nil, false
	}
	le.Expires = now.Add(l.ttl)
	c := *le
	return &c, true
}

// Release gives back the lease id of host; false if there is none.
func (l *Leases) Release(id, host string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	le, ok := l.held[id]
	if !ok || le.Host != host {
		return false
	}
	delete(l.held, id)
	l.signalLocked()
	return true
}

// Changed returns a channel closed when a lease is released or expires:
// a waiting request then asks again. Expiry is noticed when anything
// asks, so waiters also ask at least every second.
func (l *Leases) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// Held returns the leases held now.
func (l *Leases) Held() []fleet.Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expireLocked(l.now())
	var out []fleet.Lease
	for _, le := range l.held {
		out = append(out, *le)
	}
	return out
}

// Running reports whether host holds a lease for job.
func (l *Leases) Running(host, job string) bool {
	for _, le := range l.Held() {
		if le.Host == host && le.Job == job {
			return true
		}
	}
	return false
}
