package ui

import (
	"strings"
	"testing"
	"time"
)

// clock is a fake time source that tests move by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func mib(n float64) int64                { return int64(n * (1 << 20)) }
func wantIn(t *testing.T, line string, w ...string) {
	t.Helper()
	for _, s := range w {
		if !strings.Contains(line, s) {
			t.Errorf("line %q lacks %q", line, s)
		}
	}
}

func TestSpeedFollowsTheRecentRate(t *testing.T) {
	c := newClock()
	var s Speed
	if r := s.Observe(c.now(), 0); r != 0 {
		t.Fatalf("one sample: rate %v, want 0", r)
	}
	// 10 MiB/s for 20 s, then 1 MiB/s: the rate since the start would
	// still say 7 MiB/s after 10 s more; the window's says 1.
	var n int64
	for range 100 {
		c.advance(200 * time.Millisecond)
		n += mib(2)
		s.Observe(c.now(), n)
	}
	var r float64
	for range 60 {
		c.advance(200 * time.Millisecond)
		n += mib(0.2)
		r = s.Observe(c.now(), n)
	}
	if got := r / (1 << 20); got < 0.99 || got > 1.01 {
		t.Fatalf("rate %.3f MiB/s after 12 s at 1 MiB/s, want 1", got)
	}
	// the same instant twice (two front ends sampling): no division by zero
	if r := s.Observe(c.now(), n); r <= 0 {
		t.Fatalf("sampled twice at once: rate %v", r)
	}
	if len(s.samples) > 60 {
		t.Fatalf("%d samples kept for a 10 s window sampled 5 times a second", len(s.samples))
	}
}

// A restore under a download limit: the limiter's count moves while no
// range has been written yet, so the line shows a rate and an ETA where it
// showed "0 B/s" and none.
func TestRestoreLineCountsFetchedBytes(t *testing.T) {
	c := newClock()
	l := &RestoreLine{Start: c.now(), Now: c.now}
	l.Line(0, 10, 0, mib(40), 0)
	c.advance(time.Second)
	l.Line(0, 10, 0, mib(40), mib(1))
	c.advance(time.Second)
	line := l.Line(0, 10, 0, mib(40), mib(2))
	wantIn(t, line, "[2.0s] 0/10 files, 0 B/40.00 MiB (0%), fetched 2.00 MiB, 1.00 MiB/s, ETA 38.0s")
	c.advance(2 * time.Second) // a 2 MiB range is written
	line = l.Line(3, 10, mib(4), mib(40), mib(4))
	wantIn(t, line, "3/10 files, 4.00 MiB/40.00 MiB (10%), fetched 4.00 MiB, 1.00 MiB/s, ETA 36.0s")
	// without a limit, restored bytes alone
	l = &RestoreLine{Start: c.now(), Now: c.now}
	l.Line(0, 1, 0, 4096, -1)
	c.advance(time.Second)
	line = l.Line(0, 1, 1024, 4096, -1)
	if strings.Contains(line, "fetched") {
		t.Errorf("fetched shown without a count: %q", line)
	}
	wantIn(t, line, "0/1 files, 1.00 KiB/4.00 KiB (25%), 1.00 KiB/s, ETA 3.0s")
	// before anything moved: no rate, no ETA
	l = &RestoreLine{Start: c.now(), Now: c.now}
	if line := l.Line(0, 1, 0, 4096, -1); !strings.HasSuffix(line, ", 0 B/s") {
		t.Errorf("nothing moved yet: %q", line)
	}
	// the first line drawn: the rate since the start
	l = &RestoreLine{Start: c.now(), Now: c.now}
	c.advance(time.Second / 2)
	wantIn(t, l.Line(0, 1, 1024, 4096, -1), "2.00 KiB/s, ETA 1.5s")
}

func TestBackupLineShowsTheUploadPhase(t *testing.T) {
	var m Meter
	m.Phase("backup", 0, 0)
	_, since, _, _, _, _ := m.Current()
	c := &clock{t: since}
	m.Grow(2, mib(64))
	up := &UploadLine{Now: c.now}
	// reading: more left to read than waits for upload
	m.Done(1, mib(16))
	if line := BackupLine(&m, up, mib(16), 0); !strings.Contains(line, "backup: 1/2, 16.00 MiB/64.00 MiB (25%)") || strings.Contains(line, "uploading") {
		t.Errorf("reading: %q", line)
	}
	m.Counted()
	m.Done(0, mib(40)) // 56 of 64 MiB read, 56 queued, 8 uploaded
	c.advance(2 * time.Second)
	line := BackupLine(&m, up, mib(56), mib(8))
	// the ETA counts what is left to read as still to upload
	wantIn(t, line, "[2.0s] backup: 1/2 files, 56.00 MiB/64.00 MiB read; uploading: 48.00 MiB pending of 56.00 MiB, 4.00 MiB/s, ETA 14.0s")
	m.Done(1, mib(8))
	c.advance(2 * time.Second)
	line = BackupLine(&m, up, mib(64), mib(16))
	wantIn(t, line, "[4.0s] backup: 2/2 files, 64.00 MiB/64.00 MiB read; uploading: 48.00 MiB pending of 64.00 MiB, 4.00 MiB/s, ETA 12.0s")
	// everything uploaded: the reading line again
	c.advance(12 * time.Second)
	if line := BackupLine(&m, up, mib(64), mib(64)); strings.Contains(line, "uploading") || !strings.Contains(line, "(100%)") {
		t.Errorf("all uploaded: %q", line)
	}
}

// A phase that went through much at once (a backup's unchanged files) and
// then slowly: the line's rate and ETA are the recent ones, not the
// average since the phase began.
func TestMeterLineUsesTheRecentRate(t *testing.T) {
	var m Meter
	m.Phase("backup", 0, mib(100))
	_, start, _, _, _, _ := m.Current()
	m.Done(0, mib(60))
	m.lineAt(start.Add(time.Second))
	var line string
	for i := range 12 {
		m.Done(0, mib(1))
		line = m.lineAt(start.Add(time.Duration(i+2) * time.Second))
	}
	wantIn(t, line, "72.00 MiB/100.00 MiB (72%), 1.00 MiB/s, ETA 28.0s")
	// the first line of a phase: the rate since its start
	m.Phase("again", 0, mib(10))
	_, start, _, _, _, _ = m.Current()
	m.Done(0, mib(2))
	wantIn(t, m.lineAt(start.Add(2*time.Second)), "2.00 MiB/10.00 MiB (20%), 1.00 MiB/s, ETA 8.0s")
}
