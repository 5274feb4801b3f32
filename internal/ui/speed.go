package ui

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// Speed estimates the rate of a growing count over a recent window
// (speedWindow), from the samples its callers take as they draw a status
// line. A rate since the start fell long after a transfer slowed down
// (a backup that read everything and then waited for its uploads) and
// stayed at nothing while the first large reads were in flight; over the
// last few seconds it says what the link does now. Safe for concurrent
// use; its zero value is ready. It is sampled a few times a second, so a
// lock is cheap here.
type Speed struct {
	mu      sync.Mutex
	samples []speedSample // oldest first, spanning a little more than the window
}

type speedSample struct {
	t time.Time
	n int64
}

// speedWindow is the span a Speed averages over: long enough to smooth
// transfers that move in steps (a pack of 16 MiB at a time), short enough
// to follow a link that slows down.
const speedWindow = 10 * time.Second

// Observe records that the count is n at now and returns the rate in units
// per second over the window ending at now (0 until two samples apart in
// time, or if n did not grow).
func (s *Speed) Observe(now time.Time, n int64) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if k := len(s.samples); k > 0 && !now.After(s.samples[k-1].t) {
		// sampled twice at once (two front ends): keep the latest count
		s.samples[k-1].n = max(s.samples[k-1].n, n)
	} else {
		s.samples = append(s.samples, speedSample{now, n})
	}
	// Keep one sample at or before the window's start, so that the rate
	// spans the whole window once there is history.
	cut := 0
	for cut+1 < len(s.samples) && !s.samples[cut+1].t.After(now.Add(-speedWindow)) {
		cut++
	}
	if cut > 0 {
		s.samples = append(s.samples[:0], s.samples[cut:]...)
	}
	first, last := s.samples[0], s.samples[len(s.samples)-1]
	d := last.t.Sub(first.t)
	if d <= 0 || last.n <= first.n {
		return 0
	}
	return float64(last.n-first.n) / d.Seconds()
}

// rateString formats a rate in bytes per second ("-" for none yet).
func rateString(perSecond float64) string {
	if perSecond <= 0 {
		return "0 B/s"
	}
	return Bytes(uint64(perSecond)) + "/s"
}

// eta formats the time left for left bytes at perSecond ("" when it
// cannot be told).
func eta(left int64, perSecond float64) string {
	if left <= 0 || perSecond <= 0 {
		return ""
	}
	return Duration(time.Duration(float64(left) / perSecond * float64(time.Second)))
}

// RestoreLine draws restore's status line. Restored bytes count as each
// blob is written; Fetched, when known (a download limit meters what
// arrives), counts what arrived from the repository, which moves while
// a range is still on its way. Rate and ETA follow the recent rate of
// whichever is further along.
type RestoreLine struct {
	Start time.Time
	Now   func() time.Time // nil: time.Now
	speed Speed
	once  sync.Once
}

// Line formats "[elapsed] files/total files, bytes/total (pct)[, fetched
// F], rate[, ETA]"; fetched < 0 is not known.
func (l *RestoreLine) Line(files, filesTotal, bytes, bytesTotal, fetched int64) string {
	now := time.Now()
	if l.Now != nil {
		now = l.Now()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "[%s] %d", Duration(now.Sub(l.Start)), files)
	if filesTotal > 0 {
		fmt.Fprintf(&b, "/%d", filesTotal)
	}
	fmt.Fprintf(&b, " files, %s", Bytes(uint64(bytes)))
	if bytesTotal > 0 {
		fmt.Fprintf(&b, "/%s (%.0f%%)", Bytes(uint64(bytesTotal)), min(100, 100*float64(bytes)/float64(bytesTotal)))
	}
	l.once.Do(func() {
		// nothing had moved at the start: the first line's rate is then
		// the rate since it, not none
		l.speed.Observe(l.Start, 0)
	})
	moved := bytes
	if fetched >= 0 {
		fmt.Fprintf(&b, ", fetched %s", Bytes(uint64(fetched)))
		moved = max(moved, fetched)
	}
	rate := l.speed.Observe(now, moved)
	fmt.Fprintf(&b, ", %s", rateString(rate))
	if bytesTotal > 0 {
		if e := eta(bytesTotal-moved, rate); e != "" {
			fmt.Fprintf(&b, ", ETA %s", e)
		}
	}
	return b.String()
}

// UploadLine draws the upload phase of a backup: what was handed to the
// storage (queued) and what of it is stored (uploaded), with the recent
// upload rate and the time the rest takes at that rate. Once reading is
// done, a slow upload (--limit-upload, a far link) is all a backup still
// waits for, and a line that only said "100%" looked hung.
type UploadLine struct {
	Now   func() time.Time // nil: time.Now
	speed Speed
}

// Line formats "uploading: P pending of Q, rate[, ETA]"; it also samples
// the rate, so call it at every redraw, also while reading. unread is
// what is still to be read, counted in the ETA as if all of it were new
// (a backup that uploads slowly is mostly one of new data).
func (l *UploadLine) Line(queued, uploaded, unread int64) string {
	now := time.Now()
	if l.Now != nil {
		now = l.Now()
	}
	rate := l.speed.Observe(now, uploaded)
	pending := max(0, queued-uploaded)
	s := fmt.Sprintf("uploading: %s pending of %s, %s", Bytes(uint64(pending)), Bytes(uint64(queued)), rateString(rate))
	if e := eta(pending+max(0, unread), rate); e != "" {
		s += ", ETA " + e
	}
	return s
}

// BackupLine is a backup's status line: m's (files and bytes read) while
// reading is the larger part of what is left, and once what waits to be
// uploaded (queued, handed to the storage, but not uploaded) is more than
// what is left to read, the counts read followed by up's upload line: a
// backup that has read everything but waits for a slow upload
// (--limit-upload, a far link) showed "100%" and a falling rate, and
// looked hung. up samples the upload rate at every call, reading or not,
// so that its rate is known when the line switches.
func BackupLine(m *Meter, up *UploadLine, queued, uploaded int64) string {
	phase, since, items, itemsTotal, bytes, bytesTotal := m.Current()
	upload := up.Line(queued, uploaded, bytesTotal-bytes)
	pending := queued - uploaded
	if !m.IsCounted() || bytesTotal == 0 || pending <= 0 || bytesTotal-bytes >= pending {
		return m.Line()
	}
	now := time.Now()
	if up.Now != nil {
		now = up.Now()
	}
	return fmt.Sprintf("[%s] %s: %d/%s, %s/%s read; %s", Duration(now.Sub(since)), phase,
		items, Count(itemsTotal, "file"), Bytes(uint64(bytes)), Bytes(uint64(bytesTotal)), upload)
}
