// Package schedule decides when the agent's jobs run: calendar
// expressions (a subset of systemd's OnCalendar), a window in which each
// host's start time is spread by a hash of its name and the job's, missed
// runs, and retries with exponential backoff. It is pure: every function
// takes the time it works from and never reads the clock, so that it is
// tested with a fake one, and wall-clock arithmetic goes through a
// time.Location, so that days with a DST change keep their runs.
package schedule

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// event is one calendar expression.
type event struct {
	hourly  bool  // at minute 0 of every hour
	days    uint8 // bit time.Weekday set: runs on that day
	hasTime bool  // hour, min, sec given; else midnight or the window
	hour    int
	min     int
	sec     int
}

const everyDay = 0x7f

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// parseEvent parses one expression:
//
//	hourly | daily | weekly
//	[DAYS] [HH:MM[:SS]]      DAYS: Mon..Fri, Mon,Wed, Sat, Mon..Wed,Fri, *
func parseEvent(s string) (event, error) {
	f := strings.Fields(s)
	switch {
	case len(f) == 0:
		return event{}, errors.New("empty schedule")
	case len(f) == 1 && strings.EqualFold(f[0], "hourly"):
		return event{hourly: true, days: everyDay}, nil
	case len(f) == 1 && strings.EqualFold(f[0], "daily"):
		return event{days: everyDay}, nil
	case len(f) == 1 && strings.EqualFold(f[0], "weekly"):
		return event{days: 1 << time.Monday}, nil
	case len(f) > 2:
		return event{}, fmt.Errorf("schedule %q: want [DAYS] [HH:MM], like \"Mon..Fri 02:00\"", s)
	}
	e := event{days: everyDay}
	rest := f
	if !strings.Contains(rest[0], ":") {
		days, err := parseDays(rest[0])
		if err != nil {
			return event{}, fmt.Errorf("schedule %q: %w", s, err)
		}
		e.days = days
		rest = rest[1:]
	}
	if len(rest) == 1 {
		secs, err := parseClock(rest[0], true)
		if err != nil {
			return event{}, fmt.Errorf("schedule %q: %w", s, err)
		}
		e.hasTime, e.hour, e.min, e.sec = true, secs/3600, secs/60%60, secs%60
	} else if len(rest) > 1 {
		return event{}, fmt.Errorf("schedule %q: want [DAYS] [HH:MM]", s)
	}
	return e, nil
}

func parseDays(s string) (uint8, error) {
	if s == "*" {
		return everyDay, nil
	}
	var days uint8
	for _, part := range strings.Split(s, ",") {
		from, to, isRange := strings.Cut(part, "..")
		a, ok := dayNames[strings.ToLower(from)]
		if !ok {
			return 0, fmt.Errorf("unknown day %q (Mon, Tue, Wed, Thu, Fri, Sat, Sun)", from)
		}
		b := a
		if isRange {
			if b, ok = dayNames[strings.ToLower(to)]; !ok {
				return 0, fmt.Errorf("unknown day %q (Mon, Tue, Wed, Thu, Fri, Sat, Sun)", to)
			}
		}
		// Fri..Mon wraps over the weekend, as in systemd
		for d := a; ; d = (d + 1) % 7 {
			days |= 1 << d
			if d == b {
				break
			}
		}
	}
	return days, nil
}

// parseClock parses HH:MM (or HH:MM:SS when seconds) into seconds after
// midnight.
func parseClock(s string, seconds bool) (int, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || (len(parts) == 3 && !seconds) {
		return 0, fmt.Errorf("time %q: want HH:MM", s)
	}
	limits := []int{23, 59, 59}
	v := 0
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > limits[i] || len(p) > 2 {
			return 0, fmt.Errorf("time %q: want HH:MM with hours 00-23 and minutes 00-59", s)
		}
		v = v*60 + n
	}
	if len(parts) == 2 {
		v *= 60
	}
	return v, nil
}

// Window is a daily span of wall-clock time ("01:00-05:00"; "22:00-04:00"
// crosses midnight) in which a job starts.
type Window struct {
	start  int // seconds after midnight
	length int // seconds, 1..86399
}

// ParseWindow parses "HH:MM-HH:MM".
func ParseWindow(s string) (Window, error) {
	from, to, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return Window{}, fmt.Errorf("window %q: want HH:MM-HH:MM, like 01:00-05:00", s)
	}
	a, err := parseClock(strings.TrimSpace(from), false)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	b, err := parseClock(strings.TrimSpace(to), false)
	if err != nil {
		return Window{}, fmt.Errorf("window %q: %w", s, err)
	}
	if a == b {
		return Window{}, fmt.Errorf("window %q is empty", s)
	}
	return Window{start: a, length: (b - a + 86400) % 86400}, nil
}

// IsZero reports whether w is no window.
func (w Window) IsZero() bool { return w.length == 0 }

// Spread is where in a window the host starts the job, in [0, 1): the
// same for the same host and job every day, and uniform over hosts, so
// that a fleet does not start at the same minute.
func Spread(host, job string) float64 {
	h := sha256.Sum256([]byte(host + "\x00" + job))
	return float64(binary.BigEndian.Uint64(h[:8])>>11) / (1 << 53)
}

// Plan is when one job runs: calendar events, a window, and the offset of
// this host and job in it.
type Plan struct {
	events []event
	window Window
	offset int // seconds into the window
	loc    *time.Location
}

// New returns the plan of a job on a host. specs are calendar expressions
// (several allowed); with a window, they name days only ("daily",
// "Mon..Fri"), and the start time is spread in the window by
// Spread(host, job); an empty specs with a window is "daily". loc is the
// time zone the expressions are in.
func New(specs []string, window, host, job string, loc *time.Location) (*Plan, error) {
	if loc == nil {
		return nil, errors.New("no time zone")
	}
	p := &Plan{loc: loc}
	if window != "" {
		w, err := ParseWindow(window)
		if err != nil {
			return nil, err
		}
		p.window = w
		p.offset = int(Spread(host, job) * float64(w.length))
		if len(specs) == 0 {
			specs = []string{"daily"}
		}
	}
	if len(specs) == 0 {
		return nil, errors.New("no schedule")
	}
	for _, s := range specs {
		e, err := parseEvent(s)
		if err != nil {
			return nil, err
		}
		if !p.window.IsZero() && (e.hourly || e.hasTime) {
			return nil, fmt.Errorf("schedule %q has a time, and the window chooses it: with a window, name days only (daily, Mon..Fri)", s)
		}
		p.events = append(p.events, e)
	}
	return p, nil
}

// Offset is how far into the window this host starts (0 without one).
func (p *Plan) Offset() time.Duration { return time.Duration(p.offset) * time.Second }

// Next returns the first run strictly after t.
func (p *Plan) Next(t time.Time) time.Time {
	var best time.Time
	for _, e := range p.events {
		n := p.nextOf(e, t)
		if best.IsZero() || n.Before(best) {
			best = n
		}
	}
	return best
}

func (p *Plan) nextOf(e event, t time.Time) time.Time {
	lt := t.In(p.loc)
	if e.hourly {
		// absolute arithmetic from the local minute: an hour is an hour,
		// also when the clocks change (02:00 of a fall-back day runs twice,
		// a spring-forward day has 23 runs), and zones with :30 offsets
		// get runs at their :00
		since := time.Duration(lt.Minute())*time.Minute + time.Duration(lt.Second())*time.Second + time.Duration(lt.Nanosecond())
		return t.Add(time.Hour - since)
	}
	y, m, d := lt.Date()
	// a window crossing midnight puts yesterday's run into today
	for i := -1; i <= 8; i++ {
		if e.days&(1<<time.Date(y, m, d+i, 12, 0, 0, 0, p.loc).Weekday()) == 0 {
			continue
		}
		var c time.Time
		switch {
		case e.hasTime:
			c = time.Date(y, m, d+i, e.hour, e.min, e.sec, 0, p.loc)
		case !p.window.IsZero():
			// wall-clock seconds after midnight, normalised by time.Date:
			// a time in a spring-forward gap moves by the hour skipped
			c = time.Date(y, m, d+i, 0, 0, p.window.start+p.offset, 0, p.loc)
		default:
			c = time.Date(y, m, d+i, 0, 0, 0, 0, p.loc)
		}
		if c.After(t) {
			return c
		}
	}
	// unreachable: every event has a day each week
	return t.Add(7 * 24 * time.Hour)
}

// Due says what to do at now for a job whose last run was for the time
// last (its scheduled time; zero: never): run now when a run fell due
// since then, also when several did (the host was down over them: one
// catch-up run, not one per missed time), and otherwise when to run next.
func (p *Plan) Due(last, now time.Time) (runNow bool, next time.Time) {
	if last.IsZero() {
		return false, p.Next(now)
	}
	if n := p.Next(last); !n.After(now) {
		return true, now
	}
	return false, p.Next(last)
}

// Retry is how a failed run is tried again: up to Attempts more times,
// the first after Initial, each wait twice the one before, at most Max.
type Retry struct {
	Attempts     int
	Initial, Max time.Duration
}

// Delay returns the wait before retry number n (1 is the first retry),
// and false when no retry is left.
func (r Retry) Delay(n int) (time.Duration, bool) {
	if n < 1 || n > r.Attempts {
		return 0, false
	}
	d := r.Initial
	for i := 1; i < n; i++ {
		if d >= r.Max/2 || d > math.MaxInt64/2 {
			d = r.Max
			break
		}
		d *= 2
	}
	if r.Max > 0 && d > r.Max {
		d = r.Max
	}
	return d, true
}

// RetryAt returns when to retry after failure number n (1: the first
// failure) that ended at failed, and false when no retry is left or the
// retry would not come before the next scheduled run (which then runs
// instead).
func (r Retry) RetryAt(n int, failed, nextScheduled time.Time) (time.Time, bool) {
	d, ok := r.Delay(n)
	if !ok {
		return time.Time{}, false
	}
	at := failed.Add(d)
	if !nextScheduled.IsZero() && !at.Before(nextScheduled) {
		return time.Time{}, false
	}
	return at, true
}

// EveryDays returns the start of the day (midnight in loc) n calendar
// days after the day of last: something done "every n days" is due again
// from then, whatever the time of day it ran (a run that ends a little
// later each day does not slip by a day).
func EveryDays(last time.Time, n int, loc *time.Location) time.Time {
	y, m, d := last.In(loc).Date()
	return time.Date(y, m, d+n, 0, 0, 0, 0, loc)
}
