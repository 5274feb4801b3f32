package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

func TestLeaseExcludesASecondPrune(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	a, err := r.AcquireLease(ctx, LeaseOptions{Holder: "hostA", PID: 1, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.AcquireLease(ctx, LeaseOptions{Holder: "hostB", PID: 2, TTL: time.Minute})
	var held *LeaseHeldError
	if !errors.As(err, &held) || held.Lease.Holder != "hostA" || !errors.Is(err, ErrLeaseHeld) {
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
	b, err := r.AcquireLease(ctx, LeaseOptions{Holder: "hostB", PID: 2, TTL: time.Minute})
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	_ = b.Release(ctx)
}

func TestLeaseOfADeadPruneIsTakenOverAfterItExpires(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	if _, err := r.AcquireLease(ctx, LeaseOptions{Holder: "dead", PID: 1, TTL: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AcquireLease(ctx, LeaseOptions{Holder: "next", PID: 2, TTL: time.Minute}); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("before expiry: %v", err)
	}
	time.Sleep(400 * time.Millisecond)
	n, err := r.AcquireLease(ctx, LeaseOptions{Holder: "next", PID: 2, TTL: time.Minute})
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
				got[i], _ = r.AcquireLease(ctx, LeaseOptions{Holder: "h", PID: i, TTL: time.Minute})
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
	if _, err := wo.AcquireLease(ctx, LeaseOptions{Holder: "h", PID: 1, TTL: time.Minute}); !errors.Is(err, ErrNotAuthority) {
		t.Fatalf("write-only: %v", err)
	}
}

// HoldLease renews the lease while its holder works: past its TTL it
// still stops others, naming the task; Release removes it.
func TestHoldLeaseRenewsUntilReleased(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	held, hctx, err := r.HoldLease(ctx, LeaseOptions{Task: LeaseRepair, Holder: "fixer", TTL: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	first, _ := r.Leases(ctx)
	time.Sleep(700 * time.Millisecond) // over two TTLs: renewed, or it would have expired
	_, err = r.AcquireLease(ctx, LeaseOptions{Holder: "pruner"})
	var he *LeaseHeldError
	if !errors.As(err, &he) || he.Lease.Holder != "fixer" || he.Lease.Task != LeaseRepair || !strings.Contains(err.Error(), "a repair is running") {
		t.Fatalf("while held: %v", err)
	}
	if err := r.CheckLease(ctx); !errors.As(err, &he) {
		t.Fatalf("CheckLease while held: %v", err)
	}
	now, _ := r.Leases(ctx)
	if len(first) != 1 || len(now) != 1 || now[0].ID == first[0].ID || now[0].Run != first[0].Run {
		t.Fatalf("not renewed as one run: %+v then %+v", first, now)
	}
	if hctx.Err() != nil {
		t.Fatal("the holder's context was cancelled")
	}
	if err := held.Release(nil); err != nil {
		t.Fatal(err)
	}
	if l, _ := r.Leases(ctx); len(l) != 0 {
		t.Fatalf("left after Release: %+v", l)
	}
	if err := r.CheckLease(ctx); err != nil {
		t.Fatalf("CheckLease after Release: %v", err)
	}
	// the holder's own error is returned as it is
	held, _, err = r.HoldLease(ctx, LeaseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mine := errors.New("mine")
	if err := held.Release(mine); err != mine {
		t.Fatalf("Release(mine) = %v", err)
	}
}

// saveFails makes every save of objects of type typ fail while fail is
// set: a full disk, or a server that went away.
type saveFails struct {
	storage.Backend
	typ  storage.FileType
	fail atomic.Bool
}

func (b *saveFails) Save(ctx context.Context, h storage.Handle, data []byte) error {
	if h.Type == b.typ && b.fail.Load() {
		return fmt.Errorf("injected: %s saves fail", b.typ)
	}
	return b.Backend.Save(ctx, h, data)
}

// A holder whose lease cannot be renewed is stopped (its context
// cancelled) and told why, rather than work on after its lease expired.
func TestHoldLeaseStopsTheHolderWhenRenewalFails(t *testing.T) {
	ctx := context.Background()
	r0, _ := newRepo(t)
	be := &saveFails{Backend: r0.be, typ: storage.GCMark}
	r, err := newRepository(be, r0.cfg, r0.secrets, r0.keyID, r0.kdf)
	if err != nil {
		t.Fatal(err)
	}
	held, hctx, err := r.HoldLease(ctx, LeaseOptions{Task: LeasePrune, TTL: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	be.fail.Store(true)
	select {
	case <-hctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the holder went on although its lease could not be renewed")
	}
	err = held.Release(hctx.Err())
	if err == nil || !strings.Contains(err.Error(), "prune stopped: its lease could not be renewed") || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("Release: %v", err)
	}
	if l, _ := r.Leases(ctx); len(l) != 0 {
		t.Fatalf("left after Release: %+v", l)
	}
}

func TestLeaseTaskNames(t *testing.T) {
	for task, want := range map[string]string{"": "prune", LeasePrune: "prune", LeaseRepair: "repair", "rm -rf\n": "unknown task"} {
		l := Lease{Task: task, Holder: "h"}
		if got := l.TaskName(); got != want {
			t.Errorf("TaskName of %q = %q, want %q", task, got, want)
		}
		what := "a " + want
		if want == "unknown task" {
			what = "an unknown task"
		}
		if msg := (&LeaseHeldError{Lease: l}).Error(); !strings.HasPrefix(msg, what+" is running on this repository: its lease is held by h") {
			t.Errorf("message for %q: %s", task, msg)
		}
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
	// a lease naming a process, with PIDs kill(2) must never be given
	f.Add([]byte(`{"kind":"prune lease","holder":"h","pid":-1,"run":"ab","time":"2026-11-29T00:00:00Z","expires":"2999-01-01T00:00:00Z","boot":"x","pidns":"pid:[1]","start":1}`), true)
	f.Add([]byte(`{"kind":"prune lease","holder":"h","pid":0,"run":"ab","expires":"2999-01-01T00:00:00Z","boot":"x","pidns":"y","start":18446744073709551615}`), true)
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
		if lerr == nil && l.PID <= 0 && (l.Gone() || l.RunsHere()) {
			t.Fatalf("a lease of pid %d taken for a process of this machine", l.PID)
		}
		if _, err := r.LoadGCMark(ctx, id); err == nil && lerr == nil {
			t.Fatal("one object read as a lease and as a mark")
		}
		if _, err := r.Leases(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
