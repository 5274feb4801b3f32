package agent

import (
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Priority is a job's CPU and I/O priority (nice, ionice).
type Priority struct {
	Nice    *int // -20..19; nil: unchanged
	IOClass int  // ioprioClass*; 0: unchanged
	IOLevel int  // 0..7 for realtime and best-effort
}

// I/O scheduling classes of ioprio_set(2).
const (
	ioprioClassRT   = 1
	ioprioClassBE   = 2
	ioprioClassIdle = 3

	ioprioWhoProcess = 1
	ioprioClassShift = 13
)

var ioClasses = map[string]int{"realtime": ioprioClassRT, "best-effort": ioprioClassBE, "idle": ioprioClassIdle}

func parsePriority(nice *int, class string, level *int) (Priority, string, error) {
	p := Priority{Nice: nice}
	if nice != nil && (*nice < -20 || *nice > 19) {
		return p, "nice", fmt.Errorf("nice %d: want -20 (most favourable) to 19 (least)", *nice)
	}
	if class != "" {
		c, ok := ioClasses[class]
		if !ok {
			return p, "ionice_class", fmt.Errorf("ionice_class %q: want realtime, best-effort or idle", class)
		}
		p.IOClass = c
	}
	if level != nil {
		if *level < 0 || *level > 7 {
			return p, "ionice_level", fmt.Errorf("ionice_level %d: want 0 (highest) to 7 (lowest)", *level)
		}
		if p.IOClass == ioprioClassIdle {
			return p, "ionice_level", fmt.Errorf("ionice_level is for the realtime and best-effort classes")
		}
		if p.IOClass == 0 {
			p.IOClass = ioprioClassBE
		}
		p.IOLevel = *level
	}
	return p, "", nil
}

func (p Priority) isZero() bool { return p.Nice == nil && p.IOClass == 0 }

// ioGentleness orders I/O priorities: the higher, the less the job takes
// from others.
func (p Priority) ioGentleness() int {
	switch p.IOClass {
	case ioprioClassIdle:
		return 3000
	case ioprioClassBE:
		return 2000 + p.IOLevel
	case ioprioClassRT:
		return 1000 + p.IOLevel
	}
	return 0
}

// priorities sets the process's priority while jobs with one run. Linux
// keeps nice and I/O priority per thread, and a backup runs on many of the
// process's threads, so every thread is set (threads made later inherit
// it from the one that makes them). Jobs on different repositories may
// run at once: the gentlest setting of those running applies, and the
// original one comes back when the last of them ends.
type priorities struct {
	mu      sync.Mutex
	running map[int]Priority
	nextID  int
	orig    *origPriority
	warn    func(string)
	warned  bool // once: a process without CAP_SYS_NICE cannot go back
}

type origPriority struct {
	nice   int
	ioprio int
}

func newPriorities(warn func(string)) *priorities {
	return &priorities{running: map[int]Priority{}, warn: warn}
}

// enter applies p for a job until the returned function is called.
func (m *priorities) enter(p Priority) (leave func()) {
	if p.isZero() {
		return func() {}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.orig == nil {
		o, err := currentPriority()
		if err != nil {
			m.warn(fmt.Sprintf("warning: priority not changed: %v", err))
			return func() {}
		}
		m.orig = &o
	}
	id := m.nextID
	m.nextID++
	m.running[id] = p
	m.applyLocked()
	return func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(m.running, id)
		m.applyLocked()
	}
}

func (m *priorities) applyLocked() {
	nice, ioprio := m.orig.nice, m.orig.ioprio
	best := 0
	for _, p := range m.running {
		if p.Nice != nil && *p.Nice > nice {
			nice = *p.Nice
		}
		if g := p.ioGentleness(); g > best {
			best, ioprio = g, p.IOClass<<ioprioClassShift|p.IOLevel
		}
	}
	if err := setAllThreads(nice, ioprio); err != nil && !m.warned {
		m.warned = true
		m.warn(fmt.Sprintf("warning: set priority: %v (said once)", err))
	}
	if len(m.running) == 0 {
		m.orig = nil
	}
}

func currentPriority() (origPriority, error) {
	// the raw getpriority(2) returns 20 - nice
	v, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return origPriority{}, fmt.Errorf("getpriority: %w", err)
	}
	io, err := ioprioGet(0)
	if err != nil {
		return origPriority{}, err
	}
	return origPriority{nice: 20 - v, ioprio: io}, nil
}

func ioprioGet(tid int) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
	if errno != 0 {
		return 0, fmt.Errorf("ioprio_get: %w", errno)
	}
	return int(r), nil
}

// setAllThreads sets nice and the I/O priority of every thread of the
// process.
func setAllThreads(nice, ioprio int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	var first error
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil && err != unix.ESRCH && first == nil {
			first = fmt.Errorf("setpriority %d: %w", nice, err)
		}
		if _, _, errno := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), uintptr(ioprio)); errno != 0 && errno != unix.ESRCH && first == nil {
			first = fmt.Errorf("ioprio_set: %w", errno)
		}
	}
	return first
}
