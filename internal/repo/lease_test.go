package repo

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

func TestLeaseExcludesASecondPrune(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	a, err := r.AcquireLease(ctx, "hostA", 1, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.AcquireLease(ctx, "hostB", 2, time.Minute)
	var held *LeaseHeldError
	if !errors.As(err, &held) || held.Lease.Holder != "hostA" || !errors.Is(err, ErrPruneRunning) {
		t.Fatalf("second lease: %v", err)
	}
	// renewal: a new object, the old one gone; marks do not see leases
	old := a.id
	if err := a.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	leases, err := r.Leases(ctx)
	if err != nil || len(leases) != 1 || leases[0].ID == old || leases[0].ID != a.id {
		t.Fatalf("after renewal: %+v %v", leases, err)
	}
	marks, damaged, err := r.LoadGCMarks(ctx)
	if err != nil || len(marks) != 0 || len(damaged) != 0 {
		t.Fatalf("a lease read as a mark: %v %v %v", marks, damaged, err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := r.AcquireLease(ctx, "hostB", 2, time.Minute)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	_ = b.Release(ctx)
}

func TestLeaseOfADeadPruneIsTakenOverAfterItExpires(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	if _, err := r.AcquireLease(ctx, "dead", 1, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AcquireLease(ctx, "next", 2, time.Minute); !errors.Is(err, ErrPruneRunning) {
		t.Fatalf("before expiry: %v", err)
	}
	time.Sleep(400 * time.Millisecond)
	n, err := r.AcquireLease(ctx, "next", 2, time.Minute)
	if err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	leases, _ := r.Leases(ctx)
	if len(leases) != 1 || leases[0].Holder != "next" {
		t.Fatalf("the stale lease was not removed: %+v", leases)
	}
	_ = n.Release(ctx)
}

func TestLeaseRaceHasOneWinner(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	for round := 0; round < 20; round++ {
		var wg sync.WaitGroup
		got := make([]*PruneLease, 4)
		for i := range got {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], _ = r.AcquireLease(ctx, "h", i, time.Minute)
			}()
		}
		wg.Wait()
		won := 0
		for _, l := range got {
			if l != nil {
				won++
				_ = l.Release(ctx)
			}
		}
		if won > 1 {
			t.Fatalf("round %d: %d prunes took the lease", round, won)
		}
	}
}

func TestLeaseNeedsAuthority(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	wo, err := newRepository(r.be, r.cfg, r.secrets.WriteOnly(), r.keyID, r.kdf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wo.AcquireLease(ctx, "h", 1, time.Minute); !errors.Is(err, ErrNotAuthority) {
		t.Fatalf("write-only: %v", err)
	}
}

// FuzzLeases: signed or not, any bytes in gc/ are read as a lease, a mark
// or neither, never both, and never panic.
func FuzzLeases(f *testing.F) {
	ctx := context.Background()
	r, be := newRepo(f)
	f.Add([]byte(`{"kind":"prune lease","holder":"h","pid":1,"run":"ab","time":"2026-11-29T00:00:00Z","expires":"2026-11-29T00:05:00Z"}`), true)
	f.Add([]byte(`{"kind":"prune lease"}`), false)
	f.Add([]byte(`null`), true)
	f.Fuzz(func(t *testing.T, plain []byte, sign bool) {
		data := bytes.Clone(plain)
		if sign {
			data = append(data, r.secrets.AuthorityPrivate.Sign(domainLease, plain)...)
		}
		id := hash.Sum(data)
		h := storage.Handle{Type: storage.GCMark, Name: id.String()}
		be.Set(h, data)
		defer be.Remove(ctx, h)
		l, lerr := r.decodeLease(data)
		if lerr == nil && !sign {
			t.Fatal("an unsigned lease was accepted")
		}
		if lerr == nil && l.Kind != leaseKind {
			t.Fatalf("a lease of kind %q", l.Kind)
		}
		if _, err := r.LoadGCMark(ctx, id); err == nil && lerr == nil {
			t.Fatal("one object read as a lease and as a mark")
		}
		if _, err := r.Leases(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
