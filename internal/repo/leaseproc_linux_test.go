package repo

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"testing"
	"time"
)

// startSleeper starts a process that waits, and returns its PID and a
// function that kills it and waits for it to be gone.
func startSleeper(t *testing.T) (pid int, kill func()) {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	killed := false
	kill = func() {
		if !killed {
			killed = true
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
	t.Cleanup(kill)
	return cmd.Process.Pid, kill
}

// A prune killed on this machine (kill -9, no release) leaves its lease;
// the next prune or repair here sees that its process is gone and takes
// the lease over at once instead of waiting for it to expire.
func TestLeaseOfAHolderGoneFromThisMachineIsTakenOverAtOnce(t *testing.T) {
	ctx := context.Background()
	r, _ := newRepo(t)
	pid, kill := startSleeper(t)
	dead, err := r.AcquireLease(ctx, LeaseOptions{Holder: "here", PID: pid, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if l := dead.Lease(); l.Boot == "" || l.PIDNS == "" || l.Start == 0 {
		t.Fatalf("the lease does not name its process: %+v", l)
	}
	// while it runs, its lease counts
	if _, err := r.AcquireLease(ctx, LeaseOptions{Holder: "here", TTL: time.Hour}); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("while the holder runs: %v", err)
	}
	if err := r.CheckLease(ctx); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("CheckLease while the holder runs: %v", err)
	}
	kill()
	if err := r.CheckLease(ctx); err != nil {
		t.Fatalf("CheckLease after the holder died: %v", err)
	}
	next, err := r.AcquireLease(ctx, LeaseOptions{Holder: "here", TTL: time.Hour})
	if err != nil {
		t.Fatalf("after the holder died: %v", err)
	}
	if got := next.TakenOver(); len(got) != 1 || got[0].PID != pid {
		t.Fatalf("taken over: %+v, want the lease of pid %d", got, pid)
	}
	leases, err := r.Leases(ctx)
	if err != nil || len(leases) != 1 || leases[0].Run != next.Lease().Run {
		t.Fatalf("the dead holder's lease was not removed: %+v %v", leases, err)
	}
}

// Only a holder of this boot, in this PID namespace, whose process is gone
// is known to be gone: a lease of another machine or container, or one
// that does not name its process, counts until it expires.
func TestLeaseHolderGone(t *testing.T) {
	boot, pidNS, start, ok := procIdentity(os.Getpid())
	if !ok {
		t.Skip("no /proc identity here")
	}
	gonePID, kill := startSleeper(t)
	kill()
	self := Lease{PID: os.Getpid(), Boot: boot, PIDNS: pidNS, Start: start}
	cases := []struct {
		name string
		edit func(l *Lease)
		gone bool
	}{
		{"this process", func(*Lease) {}, false},
		{"its PID reused by a process started later", func(l *Lease) { l.Start-- }, true},
		{"a process that is gone", func(l *Lease) { l.PID = gonePID }, true},
		{"another boot", func(l *Lease) { l.PID, l.Boot = gonePID, "00000000-0000-0000-0000-000000000000" }, false},
		{"another PID namespace", func(l *Lease) { l.PID, l.PIDNS = gonePID, "pid:[1]" }, false},
		{"no process named (an earlier version)", func(l *Lease) { l.PID, l.Boot, l.PIDNS, l.Start = gonePID, "", "", 0 }, false},
		{"PID 0 (kill would signal the process group)", func(l *Lease) { l.PID = 0 }, false},
		{"a negative PID", func(l *Lease) { l.PID = -1 }, false},
	}
	for _, c := range cases {
		l := self
		c.edit(&l)
		if got := l.Gone(); got != c.gone {
			t.Errorf("%s: Gone() = %v, want %v", c.name, got, c.gone)
		}
		// running here: this process only (the others are gone, or
		// cannot be looked up)
		if got, want := l.RunsHere(), c.name == "this process"; got != want {
			t.Errorf("%s: RunsHere() = %v, want %v", c.name, got, want)
		}
	}
}

func TestStatStart(t *testing.T) {
	rest := " S 1 1 1 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 100"
	for _, c := range []struct {
		line string
		want uint64
		ok   bool
	}{
		{"42 (sleep)" + rest, 987654, true},
		{"42 (a) S 1 2 (b) )" + rest, 987654, true}, // a name with ") S" and spaces in it
		{"42 (x\n)" + rest, 987654, true},
		{"42 (sleep) S 1 2 3", 0, false},
		{"42 sleep" + rest, 0, false},
		{"42 (sleep)" + " S 1 1 1 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 -5 1000", 0, false},
		{"", 0, false},
	} {
		got, ok := statStart([]byte(c.line))
		if got != c.want || ok != c.ok {
			t.Errorf("statStart(%q) = %d, %v; want %d, %v", c.line, got, ok, c.want, c.ok)
		}
	}
	if _, ok := procStart(os.Getpid()); !ok {
		t.Error("procStart of this process failed")
	}
	if _, ok := procStart(-1); ok {
		t.Error("procStart(-1) reported a process")
	}
}
