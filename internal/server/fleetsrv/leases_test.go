package fleetsrv

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time      { return c.t }
func (c *fakeClock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *fakeClock               { return &fakeClock{t: time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)} }

func TestLeasesFIFOAndLimits(t *testing.T) {
	c := newClock()
	l := NewLeases(LeaseLimits{Global: 2, PerRepo: 1}, time.Minute, c.now)
	a, _, _ := l.Request("", "a", "r1", "daily")
	if a == nil {
		t.Fatal("first request not granted")
	}
	// r1 is full (per repository): b queues, c on r2 passes it
	b, qb, _ := l.Request("", "b", "r1", "daily")
	if b != nil || qb.Position != 1 {
		t.Fatalf("b = %v, %+v; want queued at 1", b, qb)
	}
	cl, _, _ := l.Request("", "c", "r2", "daily")
	if cl == nil {
		t.Fatal("c on another repository not granted")
	}
	// global full: d on r3 queues behind b
	d, qd, _ := l.Request("", "d", "r3", "daily")
	if d != nil || qd.Position != 2 {
		t.Fatalf("d = %v, %+v; want queued at 2", d, qd)
	}
	// asking again keeps the place; the same host asking again gets its lease back
	if again, _, _ := l.Request("", "a", "r1", "daily"); again == nil || again.ID != a.ID {
		t.Fatalf("a asking again: %v", again)
	}
	if _, q, _ := l.Request(qb.Ticket, "b", "r1", "daily"); q.Position != 1 {
		t.Fatalf("b lost its place: %+v", q)
	}
	// a releases: b (first in line, r1 now free) gets it, not d
	if !l.Release(a.ID, "a") {
		t.Fatal("release failed")
	}
	if l.Release(a.ID, "a") {
		t.Fatal("second release succeeded")
	}
	b, _, _ = l.Request(qb.Ticket, "b", "r1", "daily")
	if b == nil {
		t.Fatal("b not granted after a released")
	}
	if d, _, _ = l.Request(qd.Ticket, "d", "r3", "daily"); d != nil {
		t.Fatal("d granted above the global limit")
	}
	// c dies: it stops renewing; b renews. After the TTL c's slot frees.
	c.add(40 * time.Second)
	if _, ok := l.Renew(b.ID, "b"); !ok {
		t.Fatal("renew failed")
	}
	if _, ok := l.Renew(b.ID, "mallory"); ok {
		t.Fatal("another host renewed b's lease")
	}
	l.Request(qd.Ticket, "d", "r3", "daily") // d keeps asking
	c.add(30 * time.Second)
	d, _, _ = l.Request(qd.Ticket, "d", "r3", "daily")
	if d == nil {
		t.Fatal("d not granted after c's lease expired")
	}
	if l.Running("c", "daily") || !l.Running("b", "daily") {
		t.Fatal("Running wrong")
	}
	if _, ok := l.Renew(cl.ID, "c"); ok {
		t.Fatal("an expired lease was renewed")
	}
}

func TestLeasesQueueDropsSilentWaiters(t *testing.T) {
	c := newClock()
	l := NewLeases(LeaseLimits{Global: 1}, time.Minute, c.now)
	a, _, _ := l.Request("", "a", "r", "j")
	_, qb, _ := l.Request("", "b", "r", "j") // b asks once and dies
	c.add(30 * time.Second)
	_, qc, _ := l.Request("", "c", "r", "j")
	if qb.Position != 1 || qc.Position != 2 {
		t.Fatalf("positions %d %d", qb.Position, qc.Position)
	}
	l.Renew(a.ID, "a")
	c.add(40 * time.Second) // b silent for 70 s: dropped
	_, qc, _ = l.Request(qc.Ticket, "c", "r", "j")
	if qc.Position != 1 {
		t.Fatalf("c at %d, want 1 after b was dropped", qc.Position)
	}
	l.Release(a.ID, "a")
	if le, _, _ := l.Request(qc.Ticket, "c", "r", "j"); le == nil {
		t.Fatal("c not granted")
	}
}

func TestLeasesNoLimit(t *testing.T) {
	l := NewLeases(LeaseLimits{}, 0, nil)
	for _, h := range []string{"a", "b", "c"} {
		if le, _, _ := l.Request("", h, "r", "j"); le == nil {
			t.Fatal("not granted without limits")
		}
	}
}

// A host holds and waits for at most MaxLeasesPerHost leases: one that
// asks for leases of made-up jobs cannot grow the table without bound
// (every request scans it) nor keep asking for more; other hosts are
// served.
func TestLeasesPerHost(t *testing.T) {
	for _, limits := range []LeaseLimits{{}, {Global: MaxLeasesPerHost + 1}, {Global: 1}} {
		l := NewLeases(limits, 0, nil)
		for i := range MaxLeasesPerHost {
			if _, _, err := l.Request("", "evil", "r", fmt.Sprint("job", i)); err != nil {
				t.Fatalf("limits %+v: request %d: %v", limits, i, err)
			}
		}
		if _, _, err := l.Request("", "evil", "r", "one-more"); !errors.Is(err, ErrHostBusy) {
			t.Errorf("limits %+v: request beyond the host's bound: %v", limits, err)
		}
		// a job it already holds or waits for is asked again as before
		if _, _, err := l.Request("", "evil", "r", "job0"); err != nil {
			t.Errorf("limits %+v: asking again for a job: %v", limits, err)
		}
		le, q, err := l.Request("", "honest", "r", "backup")
		if err != nil || le == nil && q.Ticket == "" {
			t.Errorf("limits %+v: another host: %v %+v %v", limits, le, q, err)
		}
		if limits.Global == 0 || limits.Global > MaxLeasesPerHost {
			if le == nil {
				t.Errorf("limits %+v: another host gets no lease beside the bounded one", limits)
			}
		}
	}
}
