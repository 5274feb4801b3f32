// Package forget decides which snapshots a retention policy keeps. It is
// pure: it reads snapshot records and returns decisions; removing the
// records is the caller's business (and freeing their data is prune's).
//
// The rules follow restic's well-known semantics. Snapshots are considered
// newest first. A bucket rule (hourly, daily, weekly, monthly, yearly) keeps
// the newest snapshot in each of the last N hours, days, ISO weeks, months
// or years that have a snapshot; "last" keeps the N newest snapshots.
// A snapshot kept by several rules gets several reasons.
package forget

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Unlimited as a count keeps one snapshot in every bucket (every snapshot
// for Last).
const Unlimited = -1

// Policy is a retention policy. Zero fields are off; a zero Policy keeps
// everything.
type Policy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int

	// Within keeps every snapshot newer than the newest snapshot of the
	// group minus Within.
	Within Duration
	// WithinHourly etc. keep the newest snapshot of each hour (day, ...)
	// among the snapshots newer than the newest minus the duration.
	WithinHourly, WithinDaily, WithinWeekly, WithinMonthly, WithinYearly Duration

	// Tags keeps every snapshot that has every tag of any of these lists
	// (restic's --keep-tag: "a,b" keeps snapshots tagged both a and b).
	Tags []snapshot.TagList
}

// Empty reports whether no rule is set.
func (p Policy) Empty() bool {
	return p.Last == 0 && p.Hourly == 0 && p.Daily == 0 && p.Weekly == 0 && p.Monthly == 0 && p.Yearly == 0 &&
		p.Within.IsZero() && p.WithinHourly.IsZero() && p.WithinDaily.IsZero() && p.WithinWeekly.IsZero() &&
		p.WithinMonthly.IsZero() && p.WithinYearly.IsZero() && len(p.Tags) == 0
}

// Validate checks the counts and durations.
func (p Policy) Validate() error {
	for _, c := range []struct {
		name string
		n    int
	}{{"last", p.Last}, {"hourly", p.Hourly}, {"daily", p.Daily}, {"weekly", p.Weekly}, {"monthly", p.Monthly}, {"yearly", p.Yearly}} {
		if c.n < Unlimited {
			return fmt.Errorf("keep-%s: %d is negative (use -1 for unlimited)", c.name, c.n)
		}
	}
	for _, d := range []Duration{p.Within, p.WithinHourly, p.WithinDaily, p.WithinWeekly, p.WithinMonthly, p.WithinYearly} {
		if d.Years < 0 || d.Months < 0 || d.Days < 0 || d.Hours < 0 {
			return fmt.Errorf("keep-within: %s is negative", d)
		}
	}
	for _, t := range p.Tags {
		if len(t) == 0 {
			return errors.New("keep-tag: empty tag")
		}
	}
	return nil
}

// bucket functions map a time (in the caller's zone) and the snapshot's
// position to a bucket number; a snapshot is kept when its bucket differs
// from the previous kept one's.
func always(_ time.Time, nr int) int { return nr }
func hourly(t time.Time, _ int) int {
	return ((t.Year()*100+int(t.Month()))*100+t.Day())*100 + t.Hour()
}
func daily(t time.Time, _ int) int   { return (t.Year()*100+int(t.Month()))*100 + t.Day() }
func monthly(t time.Time, _ int) int { return t.Year()*100 + int(t.Month()) }
func yearly(t time.Time, _ int) int  { return t.Year() }
func weekly(t time.Time, _ int) int {
	y, w := t.ISOWeek()
	return y*100 + w
}

// Apply splits snaps (any order) into the snapshots p keeps and those it
// removes, both newest first (ties: by ID). reasons says why each kept
// snapshot is kept.
//
// Calendar buckets (hour, day, ISO week, month, year) are taken in now's
// time zone: pass time.Now() for the local zone. The within rules count
// back from the newest snapshot, not from now (as restic does), so a host
// that stopped backing up does not lose its last snapshots to --keep-within;
// a newest snapshot dated after now counts as now. An empty policy keeps
// everything.
func Apply(snaps []*snapshot.Record, p Policy, now time.Time) (keep, remove []*snapshot.Record, reasons map[hash.ID][]string) {
	list := make([]*snapshot.Record, len(snaps))
	copy(list, snaps)
	sort.SliceStable(list, func(i, j int) bool {
		if !list[i].Time.Equal(list[j].Time) {
			return list[i].Time.After(list[j].Time)
		}
		return list[i].ID.String() < list[j].ID.String()
	})
	reasons = make(map[hash.ID][]string)
	if len(list) == 0 {
		return nil, nil, reasons
	}
	if p.Empty() {
		for _, sn := range list {
			reasons[sn.ID] = []string{"policy is empty"}
		}
		return list, nil, reasons
	}
	loc := now.Location()

	buckets := []struct {
		count  int
		bucket func(time.Time, int) int
		last   int
		reason string
	}{
		{p.Last, always, -1, "last snapshot"},
		{p.Hourly, hourly, -1, "hourly snapshot"},
		{p.Daily, daily, -1, "daily snapshot"},
		{p.Weekly, weekly, -1, "weekly snapshot"},
		{p.Monthly, monthly, -1, "monthly snapshot"},
		{p.Yearly, yearly, -1, "yearly snapshot"},
	}
	within := []struct {
		d      Duration
		bucket func(time.Time, int) int
		last   int
		reason string
	}{
		{p.WithinHourly, hourly, -1, "hourly within"},
		{p.WithinDaily, daily, -1, "daily within"},
		{p.WithinWeekly, weekly, -1, "weekly within"},
		{p.WithinMonthly, monthly, -1, "monthly within"},
		{p.WithinYearly, yearly, -1, "yearly within"},
	}

	anchor := list[0].Time
	if anchor.After(now) {
		anchor = now
	}

	for nr, sn := range list {
		var why []string
		for _, t := range p.Tags {
			if t.Match(sn.Tags) {
				why = append(why, "has tag "+t.String())
			}
		}
		if !p.Within.IsZero() && sn.Time.After(p.Within.Before(anchor)) {
			why = append(why, "within "+p.Within.String())
		}
		t := sn.Time.In(loc)
		for i := range buckets {
			b := &buckets[i]
			if b.count == 0 {
				continue
			}
			if v := b.bucket(t, nr); v != b.last {
				b.last = v
				if b.count > 0 {
					b.count--
				}
				why = append(why, b.reason)
			}
		}
		for i := range within {
			b := &within[i]
			if b.d.IsZero() || !sn.Time.After(b.d.Before(anchor)) {
				continue
			}
			if v := b.bucket(t, nr); v != b.last {
				b.last = v
				why = append(why, b.reason+" "+b.d.String())
			}
		}
		if len(why) > 0 {
			keep = append(keep, sn)
			reasons[sn.ID] = why
		} else {
			remove = append(remove, sn)
		}
	}
	return keep, remove, reasons
}
