package schedule

import (
	"fmt"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin also where the system has no zone files
)

func mustLoc(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func at(t *testing.T, loc *time.Location, s string) time.Time {
	t.Helper()
	v, err := time.ParseInLocation("2006-01-02 15:04:05", s, loc)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func plan(t *testing.T, specs []string, window string, loc *time.Location) *Plan {
	t.Helper()
	p, err := New(specs, window, "host", "job", loc)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// runs lists the next n runs after from.
func runs(p *Plan, from time.Time, n int) []time.Time {
	var out []time.Time
	for i := 0; i < n; i++ {
		from = p.Next(from)
		out = append(out, from)
	}
	return out
}

func TestNext(t *testing.T) {
	utc := time.UTC
	// 2026-03-02 is a Monday
	for _, tc := range []struct {
		specs []string
		from  string
		want  []string
	}{
		{[]string{"hourly"}, "2026-03-02 10:15:00", []string{"2026-03-02 11:00:00", "2026-03-02 12:00:00"}},
		{[]string{"daily"}, "2026-03-02 10:15:00", []string{"2026-03-03 00:00:00", "2026-03-04 00:00:00"}},
		{[]string{"weekly"}, "2026-03-02 00:00:00", []string{"2026-03-09 00:00:00", "2026-03-16 00:00:00"}},
		{[]string{"02:30"}, "2026-03-02 02:29:59", []string{"2026-03-02 02:30:00", "2026-03-03 02:30:00"}},
		{[]string{"Mon..Fri 02:00"}, "2026-03-05 03:00:00", []string{"2026-03-06 02:00:00", "2026-03-09 02:00:00", "2026-03-10 02:00:00"}},
		{[]string{"Mon,Wed 03:30:15"}, "2026-03-02 03:30:15", []string{"2026-03-04 03:30:15", "2026-03-09 03:30:15"}},
		{[]string{"Sat..Mon"}, "2026-03-02 00:00:00", []string{"2026-03-07 00:00:00", "2026-03-08 00:00:00", "2026-03-09 00:00:00", "2026-03-14 00:00:00"}},
		// several per job: the earliest of them
		{[]string{"Mon..Fri 02:00", "Sat 06:00", "Mon 12:00"}, "2026-03-06 03:00:00", []string{"2026-03-07 06:00:00", "2026-03-09 02:00:00", "2026-03-09 12:00:00", "2026-03-10 02:00:00"}},
	} {
		p := plan(t, tc.specs, "", utc)
		got := runs(p, at(t, utc, tc.from), len(tc.want))
		for i, w := range tc.want {
			if !got[i].Equal(at(t, utc, w)) {
				t.Errorf("%q after %s: run %d at %s, want %s", tc.specs, tc.from, i, got[i].Format(time.DateTime), w)
			}
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		specs  []string
		window string
		want   string
	}{
		{[]string{"Mon..Fry 02:00"}, "", `unknown day "Fry"`},
		{[]string{"25:00"}, "", "hours 00-23"},
		{[]string{"02:60"}, "", "minutes 00-59"},
		{[]string{"Mon 02:00 extra"}, "", "want [DAYS]"},
		{[]string{""}, "", "empty schedule"},
		{nil, "", "no schedule"},
		{[]string{"02:00"}, "01:00-05:00", "the window chooses it"},
		{[]string{"hourly"}, "01:00-05:00", "the window chooses it"},
		{nil, "01:00", "want HH:MM-HH:MM"},
		{nil, "01:00-01:00", "is empty"},
		{nil, "01:00-5:0x", "want HH:MM"},
		{nil, "01:00:00-02:00", "want HH:MM"},
	} {
		_, err := New(tc.specs, tc.window, "h", "j", time.UTC)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%q, %q): %v, want an error with %q", tc.specs, tc.window, err, tc.want)
		}
	}
}

func TestWindow(t *testing.T) {
	utc := time.UTC
	for _, tc := range []struct {
		window     string
		start, end string // of the window on 2026-03-02
	}{
		{"01:00-05:00", "2026-03-02 01:00:00", "2026-03-02 05:00:00"},
		{"22:00-04:00", "2026-03-01 22:00:00", "2026-03-02 04:00:00"}, // crosses midnight
	} {
		for _, host := range []string{"a", "b", "web1", "db-17"} {
			p, err := New([]string{"daily"}, tc.window, host, "system", utc)
			if err != nil {
				t.Fatal(err)
			}
			// the same host and job start at the same offset every day
			first := p.Next(at(t, utc, tc.start).Add(-time.Second))
			if first.Before(at(t, utc, tc.start)) || !first.Before(at(t, utc, tc.end)) {
				t.Errorf("%s, host %s: run at %s, outside the window", tc.window, host, first)
			}
			prev := first
			for i, n := range runs(p, first, 30) {
				if n.Sub(prev) != 24*time.Hour {
					t.Errorf("%s, host %s: run %d at %s, %s after the one before, want 24h", tc.window, host, i, n, n.Sub(prev))
				}
				prev = n
			}
			if first.Sub(at(t, utc, tc.start)) != p.Offset() {
				t.Errorf("offset %s, but the run is at %s", p.Offset(), first)
			}
		}
	}
	// a window crossing midnight: the run after 00:30 may be the one that
	// belongs to the day before
	p, err := New([]string{"Mon"}, "23:00-03:00", "host", "j", utc)
	if err != nil {
		t.Fatal(err)
	}
	n := p.Next(at(t, utc, "2026-03-02 23:00:00")) // Monday 23:00
	if n.Before(at(t, utc, "2026-03-02 23:00:00")) || !n.Before(at(t, utc, "2026-03-03 03:00:00")) {
		t.Errorf("Monday's run of 23:00-03:00 at %s", n)
	}
	if n2 := p.Next(n.Add(-time.Second)); !n2.Equal(n) {
		t.Errorf("after %s: %s, want %s", n.Add(-time.Second), n2, n)
	}
}

// TestSpreadUniform: 1,000 hosts of a fleet spread over a four-hour window
// fill each quarter hour roughly equally, and two jobs of one host get
// different offsets.
func TestSpreadUniform(t *testing.T) {
	const hosts, buckets = 1000, 16
	count := make([]int, buckets)
	for i := 0; i < hosts; i++ {
		p, err := New(nil, "01:00-05:00", fmt.Sprintf("web%03d.example.com", i), "system", time.UTC)
		if err != nil {
			t.Fatal(err)
		}
		count[int(p.Offset()/(15*time.Minute))]++
	}
	// chi-square with 15 degrees of freedom: 37.7 is the 0.1% quantile
	var chi float64
	exp := float64(hosts) / buckets
	for _, c := range count {
		chi += (float64(c) - exp) * (float64(c) - exp) / exp
	}
	if chi > 37.7 {
		t.Errorf("not uniform: %v (chi-square %.1f)", count, chi)
	}
	for _, c := range count {
		if c < 30 || c > 100 {
			t.Errorf("quarter hours hold %v hosts (62.5 expected each)", count)
			break
		}
	}
	if Spread("web1", "system") == Spread("web1", "databases") || Spread("web1", "system") == Spread("web2", "system") {
		t.Error("different host or job, same spread")
	}
	if Spread("web1", "system") != Spread("web1", "system") {
		t.Error("spread not deterministic")
	}
}

// TestDST: Europe/Berlin springs forward on 2026-03-29 (02:00 -> 03:00)
// and falls back on 2026-10-25 (03:00 -> 02:00).
func TestDST(t *testing.T) {
	be := mustLoc(t, "Europe/Berlin")
	// a daily run at 04:00 wall clock stays at 04:00 across both changes,
	// 23 and 25 hours apart
	p := plan(t, []string{"04:00"}, "", be)
	for _, day := range []string{"2026-03-27", "2026-10-23"} {
		rs := runs(p, at(t, be, day+" 12:00:00"), 3)
		for _, r := range rs {
			if r.In(be).Hour() != 4 || r.In(be).Minute() != 0 {
				t.Errorf("run at %s, want 04:00 local", r.In(be))
			}
		}
		want := map[string]time.Duration{"2026-03-27": 23 * time.Hour, "2026-10-23": 25 * time.Hour}[day]
		if gap := rs[1].Sub(rs[0]); gap != want {
			t.Errorf("runs %s and %s are %s apart, want %s", rs[0].In(be), rs[1].In(be), gap, want)
		}
		if gap := rs[2].Sub(rs[1]); gap != 24*time.Hour {
			t.Errorf("runs %s and %s are %s apart", rs[1].In(be), rs[2].In(be), gap)
		}
	}
	// a run inside the skipped hour happens once that day, within the
	// hour around it, and not twice
	p = plan(t, []string{"02:30"}, "", be)
	rs := runs(p, at(t, be, "2026-03-28 12:00:00"), 3)
	if d := rs[0].In(be); d.Day() != 29 || d.Hour() < 1 || d.Hour() > 3 {
		t.Errorf("02:30 on the spring-forward day ran at %s", d)
	}
	if rs[1].In(be).Day() != 30 || rs[1].In(be).Hour() != 2 || rs[1].In(be).Minute() != 30 {
		t.Errorf("next day: %s", rs[1].In(be))
	}
	// the repeated hour: 02:30 happens twice on the wall; the job runs once
	rs = runs(p, at(t, be, "2026-10-24 12:00:00"), 3)
	if rs[0].In(be).Day() != 25 || rs[1].In(be).Day() != 26 {
		t.Errorf("fall-back day: runs at %s, %s", rs[0].In(be), rs[1].In(be))
	}
	// hourly runs are an hour apart whatever the wall clock does: 23 of
	// them on the short day, 25 on the long one
	p = plan(t, []string{"hourly"}, "", be)
	for day, want := range map[string]int{"2026-03-29": 23, "2026-10-25": 25, "2026-06-01": 24} {
		start := at(t, be, day+" 00:00:00")
		end := start.AddDate(0, 0, 1)
		n := 0
		for r := p.Next(start.Add(-time.Second)); r.Before(end); r = p.Next(r) {
			n++
		}
		if n != want {
			t.Errorf("%s: %d hourly runs, want %d", day, n, want)
		}
	}
	// a window over the changes: once a day, inside the window
	for _, host := range []string{"a", "b", "c", "d", "e", "f"} {
		p, err := New([]string{"daily"}, "01:00-04:00", host, "j", be)
		if err != nil {
			t.Fatal(err)
		}
		prev := time.Time{}
		for _, r := range runs(p, at(t, be, "2026-03-27 12:00:00"), 4) {
			l := r.In(be)
			if l.Hour() < 1 || l.Hour() > 4 {
				t.Errorf("host %s: run at %s, outside 01:00-04:00", host, l)
			}
			if !prev.IsZero() && (r.Sub(prev) < 22*time.Hour || r.Sub(prev) > 26*time.Hour) {
				t.Errorf("host %s: runs %s and %s", host, prev.In(be), l)
			}
			prev = r
		}
	}
	// every 7 days: from midnight seven calendar days later, across the
	// change
	last := at(t, be, "2026-03-25 23:30:00")
	if n := EveryDays(last, 7, be); !n.Equal(at(t, be, "2026-04-01 00:00:00")) {
		t.Errorf("7 days after %s: %s", last, n.In(be))
	}
}

func TestDue(t *testing.T) {
	utc := time.UTC
	p := plan(t, []string{"02:00"}, "", utc)
	// never ran: wait for the next time, no catch-up
	if run, next := p.Due(time.Time{}, at(t, utc, "2026-03-02 10:00:00")); run || !next.Equal(at(t, utc, "2026-03-03 02:00:00")) {
		t.Errorf("first start: %v %s", run, next)
	}
	// ran at 02:00 today: next is tomorrow
	last := at(t, utc, "2026-03-02 02:00:00")
	if run, next := p.Due(last, at(t, utc, "2026-03-02 10:00:00")); run || !next.Equal(at(t, utc, "2026-03-03 02:00:00")) {
		t.Errorf("after a run: %v %s", run, next)
	}
	// down from before 02:00 on the 3rd to the 6th: three runs missed, one
	// catch-up run now
	now := at(t, utc, "2026-03-06 09:00:00")
	run, next := p.Due(last, now)
	if !run || !next.Equal(now) {
		t.Errorf("missed runs: %v %s, want a run now", run, next)
	}
	// after the catch-up (recorded at now) the next is the next 02:00
	if run, next := p.Due(now, now.Add(time.Minute)); run || !next.Equal(at(t, utc, "2026-03-07 02:00:00")) {
		t.Errorf("after the catch-up: %v %s", run, next)
	}
	// exactly at the due time: run
	if run, _ := p.Due(last, at(t, utc, "2026-03-03 02:00:00")); !run {
		t.Error("not due at its time")
	}
}

func TestRetry(t *testing.T) {
	r := Retry{Attempts: 5, Initial: time.Minute, Max: 5 * time.Minute}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 5 * time.Minute, 5 * time.Minute}
	for i, w := range want {
		d, ok := r.Delay(i + 1)
		if !ok || d != w {
			t.Errorf("retry %d: %s %v, want %s", i+1, d, ok, w)
		}
	}
	if _, ok := r.Delay(6); ok {
		t.Error("a sixth retry of five")
	}
	if _, ok := (Retry{}).Delay(1); ok {
		t.Error("a retry without attempts")
	}
	// a huge cap does not overflow
	big := Retry{Attempts: 100, Initial: time.Hour, Max: time.Duration(1<<63 - 1)}
	if d, ok := big.Delay(100); !ok || d <= 0 {
		t.Errorf("retry 100: %s", d)
	}
	// no retry at or after the next scheduled run: that run comes instead
	failed := time.Date(2026, 3, 2, 2, 0, 0, 0, time.UTC)
	if at, ok := r.RetryAt(1, failed, failed.Add(time.Hour)); !ok || !at.Equal(failed.Add(time.Minute)) {
		t.Errorf("retry at %s %v", at, ok)
	}
	if _, ok := r.RetryAt(3, failed, failed.Add(4*time.Minute)); ok {
		t.Error("a retry after the next scheduled run")
	}
}

func FuzzNew(f *testing.F) {
	for _, s := range []string{"hourly", "Mon..Fri 02:00", "Sat..Mon", "Mon,Wed 03:30:15", "*", "x..y", "23:59:59"} {
		f.Add(s, "01:00-05:00")
		f.Add(s, "")
	}
	f.Fuzz(func(t *testing.T, spec, window string) {
		p, err := New([]string{spec}, window, "h", "j", time.UTC)
		if err != nil {
			return
		}
		from := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
		n := p.Next(from)
		if !n.After(from) || n.Sub(from) > 8*24*time.Hour {
			t.Fatalf("%q %q: next after %s is %s", spec, window, from, n)
		}
	})
}
