package ui

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Progress is what a long operation reports as it works, to whatever
// front end shows it: cmd/floe draws a status line on a terminal (with
// rate and ETA) and nothing otherwise. Operations call it from many
// goroutines; implementations are safe for concurrent use.
type Progress interface {
	// Phase starts a phase of the operation: what it does now and how
	// much work it has, in items and bytes (0: not known or not counted).
	Phase(name string, items, bytes int64)
	// Done counts work of the current phase that is finished.
	Done(items, bytes int64)
	// Grow adds work found while the current phase runs to its totals
	// (the scan that runs alongside a backup); Counted says that all of it
	// is found, so that an estimate of the time left means something.
	// Totals given to Phase are complete from the start.
	Grow(items, bytes int64)
	Counted()
	// Working names the item being worked on (a file).
	Working(name string)
	// Fail counts an item that could not be done (a file that could not
	// be read); the operation goes on.
	Fail()
}

// Counters is what a Progress may also implement to hear the counts an
// operation keeps beyond the items and bytes of its phase, by name (a
// copy's blobs sent, bytes verified): each adds up over all phases of the
// operation. Operations name their counters (transfer.Count*).
type Counters interface {
	Count(name string, n int64)
}

// NoProgress reports to nobody: the Progress of an operation whose caller
// gave none.
var NoProgress Progress = noProgress{}

type noProgress struct{}

func (noProgress) Phase(string, int64, int64) {}
func (noProgress) Done(int64, int64)          {}
func (noProgress) Grow(int64, int64)          {}
func (noProgress) Counted()                   {}
func (noProgress) Working(string)             {}
func (noProgress) Fail()                      {}

// Meter is a Progress that keeps the counts of the current phase for a
// status line (Line), read from another goroutine. Its zero value is
// ready to use.
type Meter struct {
	mu         sync.Mutex
	phase      string
	phaseStart time.Time
	speed      *Speed // the phase's recent rate, for Line

	items, itemsTotal atomic.Int64
	bytes, bytesTotal atomic.Int64
	counted           atomic.Bool
	working           atomic.Pointer[string]
	failures          atomic.Int64
	counters          sync.Map // name -> *atomic.Int64
}

// Phase implements Progress.
func (m *Meter) Phase(name string, items, bytes int64) {
	m.mu.Lock()
	m.phase, m.phaseStart = name, time.Now()
	m.speed = &Speed{}
	m.speed.Observe(m.phaseStart, 0) // the first line's rate: since the start
	m.mu.Unlock()
	m.items.Store(0)
	m.itemsTotal.Store(items)
	m.bytes.Store(0)
	m.bytesTotal.Store(bytes)
	m.counted.Store(items > 0 || bytes > 0)
	m.working.Store(nil)
}

// Done implements Progress.
func (m *Meter) Done(items, bytes int64) {
	m.items.Add(items)
	m.bytes.Add(bytes)
}

// Grow implements Progress.
func (m *Meter) Grow(items, bytes int64) {
	m.itemsTotal.Add(items)
	m.bytesTotal.Add(bytes)
}

// Counted implements Progress.
func (m *Meter) Counted() { m.counted.Store(true) }

// Working implements Progress.
func (m *Meter) Working(name string) { m.working.Store(&name) }

// Fail implements Progress.
func (m *Meter) Fail() { m.failures.Add(1) }

// Count implements Counters.
func (m *Meter) Count(name string, n int64) {
	c, ok := m.counters.Load(name)
	if !ok {
		c, _ = m.counters.LoadOrStore(name, new(atomic.Int64))
	}
	c.(*atomic.Int64).Add(n)
}

// Counter returns the counter name (0 if it was never counted).
func (m *Meter) Counter(name string) int64 {
	if c, ok := m.counters.Load(name); ok {
		return c.(*atomic.Int64).Load()
	}
	return 0
}

// PhaseName returns the name of the current phase.
func (m *Meter) PhaseName() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.phase
}

// Failures returns how many items failed since the Meter was made.
func (m *Meter) Failures() int64 { return m.failures.Load() }

// Item returns the item being worked on, or "".
func (m *Meter) Item() string {
	if w := m.working.Load(); w != nil {
		return *w
	}
	return ""
}

// IsCounted reports whether the totals of the current phase are complete.
func (m *Meter) IsCounted() bool { return m.counted.Load() }

// Current returns the phase, since when it runs, and its counts.
func (m *Meter) Current() (phase string, since time.Time, items, itemsTotal, bytes, bytesTotal int64) {
	m.mu.Lock()
	phase, since = m.phase, m.phaseStart
	m.mu.Unlock()
	return phase, since, m.items.Load(), m.itemsTotal.Load(), m.bytes.Load(), m.bytesTotal.Load()
}

// Line formats the current phase for a status line: "[elapsed] phase:
// items/total, bytes/total (percent), rate, ETA", leaving out what the
// phase does not count.
func (m *Meter) Line() string {
	return m.lineAt(time.Now())
}

// lineAt is Line at the time now. The rate and ETA are those of the last
// few seconds (Speed): since the start of the phase, the rate of a backup
// that went through unchanged files in a moment and then read new ones
// slowly (or the reverse) said little about the time left.
func (m *Meter) lineAt(now time.Time) string {
	m.mu.Lock()
	speed := m.speed
	m.mu.Unlock()
	phase, since, items, itemsTotal, bytes, bytesTotal := m.Current()
	if speed == nil {
		speed = &Speed{} // before any Phase
	}
	el := now.Sub(since)
	var b strings.Builder
	fmt.Fprintf(&b, "[%s] %s", Duration(el), phase)
	switch {
	case itemsTotal > 0:
		fmt.Fprintf(&b, ": %d/%d", items, itemsTotal)
	case items > 0:
		fmt.Fprintf(&b, ": %d", items)
	}
	if bytesTotal > 0 {
		sep := ", "
		if itemsTotal == 0 && items == 0 {
			sep = ": "
		}
		rate := speed.Observe(now, bytes)
		fmt.Fprintf(&b, "%s%s/%s (%.0f%%), %s", sep, Bytes(uint64(bytes)), Bytes(uint64(bytesTotal)),
			min(100, 100*float64(bytes)/float64(bytesTotal)), rateString(rate))
		if e := eta(bytesTotal-bytes, rate); m.counted.Load() && e != "" {
			fmt.Fprintf(&b, ", ETA %s", e)
		}
	}
	if w := m.working.Load(); w != nil && *w != "" {
		fmt.Fprintf(&b, "  %s", Path(*w))
	}
	return b.String()
}
