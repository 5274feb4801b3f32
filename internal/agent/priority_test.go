package agent

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// threadPriorities reads nice and the I/O priority of every thread.
func threadPriorities(t *testing.T) (nices, ioprios map[int]bool) {
	t.Helper()
	nices, ioprios = map[int]bool{}, map[int]bool{}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		stat, err := os.ReadFile("/proc/self/task/" + task.Name() + "/stat")
		if err != nil {
			continue // the thread ended
		}
		// fields after the command (which may hold spaces): nice is the
		// 19th field of the line, the 17th after ")"
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		n, _ := strconv.Atoi(f[16])
		nices[n] = true
		io, err := ioprioGet(tid)
		if err == nil {
			ioprios[io] = true
		}
	}
	return nices, ioprios
}

func TestPriority(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("restoring the priority needs root")
	}
	orig, err := currentPriority()
	if err != nil {
		t.Fatal(err)
	}
	var warnings []string
	m := newPriorities(func(s string) { warnings = append(warnings, s) })
	seven, three := 7, 3
	leaveA := m.enter(Priority{Nice: &three, IOClass: ioprioClassBE, IOLevel: 5})
	leaveB := m.enter(Priority{Nice: &seven, IOClass: ioprioClassIdle})
	nices, ios := threadPriorities(t)
	// the gentlest of the two, on every thread
	if len(nices) != 1 || !nices[7] || len(ios) != 1 || !ios[ioprioClassIdle<<ioprioClassShift] {
		t.Errorf("while both run: nice %v, ioprio %v", nices, ios)
	}
	leaveB()
	nices, ios = threadPriorities(t)
	if len(nices) != 1 || !nices[3] || len(ios) != 1 || !ios[ioprioClassBE<<ioprioClassShift|5] {
		t.Errorf("while one runs: nice %v, ioprio %v", nices, ios)
	}
	leaveA()
	nices, ios = threadPriorities(t)
	if len(nices) != 1 || !nices[orig.nice] || len(ios) != 1 || !ios[orig.ioprio] {
		t.Errorf("after: nice %v, ioprio %v, want %d and %d", nices, ios, orig.nice, orig.ioprio)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	m.enter(Priority{})() // nothing to do
}

func TestParsePriority(t *testing.T) {
	lvl := 2
	p, _, err := parsePriority(nil, "realtime", &lvl)
	if err != nil || p.IOClass != ioprioClassRT || p.IOLevel != 2 {
		t.Errorf("%+v %v", p, err)
	}
	if _, key, err := parsePriority(nil, "slow", nil); err == nil || key != "ionice_class" {
		t.Errorf("class slow: %v", err)
	}
}

func TestLocalLeases(t *testing.T) {
	dir := t.TempDir()
	waited := 0
	l := &LocalLeases{Dir: dir, Poll: 10 * time.Millisecond, Waiting: func(*Job) { waited++ }}
	a := &Job{Name: "a", Repository: "/srv/r"}
	b := &Job{Name: "b", Repository: "/srv/r"}
	c := &Job{Name: "c", Repository: "/srv/other"}
	release, err := l.Lease(context.Background(), a, fleet.TaskBackup)
	if err != nil {
		t.Fatal(err)
	}
	// another repository: at once
	rc, err := l.Lease(context.Background(), c, fleet.TaskBackup)
	if err != nil {
		t.Fatal(err)
	}
	rc()
	// the same repository waits (here: until the context ends)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := l.Lease(ctx, b, fleet.TaskBackup); !errors.Is(err, context.DeadlineExceeded) || waited != 1 {
		t.Fatalf("lease on a held repository: %v (waited %d)", err, waited)
	}
	// and gets it when released
	go func() { time.Sleep(50 * time.Millisecond); release() }()
	rb, err := l.Lease(context.Background(), b, fleet.TaskBackup)
	if err != nil {
		t.Fatal(err)
	}
	rb()
}
