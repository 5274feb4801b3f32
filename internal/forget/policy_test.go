package forget

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

const layout = "2006-01-02 15:04"

// snap makes a record from "2026-03-01 12:00" (UTC) and optional tags; the
// ID is derived from the label, so every test snapshot has a distinct one.
func snap(t *testing.T, label string, tags ...string) *snapshot.Record {
	t.Helper()
	base, _, _ := strings.Cut(label, "#") // "#x" makes a second snapshot at the same time
	tm, err := time.ParseInLocation(layout, base, time.UTC)
	if err != nil {
		t.Fatal(err)
	}
	return &snapshot.Record{ID: hash.Sum([]byte(label)), Snapshot: &snapshot.Snapshot{
		Time: tm, Hostname: "h", Paths: []string{"/p"}, Tags: tags}}
}

func snaps(t *testing.T, labels ...string) []*snapshot.Record {
	var out []*snapshot.Record
	for _, l := range labels {
		out = append(out, snap(t, l))
	}
	return out
}

func labelOf(r *snapshot.Record, all []*snapshot.Record, labels []string) string {
	for i, s := range all {
		if s == r {
			return labels[i]
		}
	}
	return "?"
}

var now = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// daysOf returns one snapshot at noon on each of n days ending at end.
func daysOf(end string, n int) []string {
	tm, _ := time.Parse(layout, end)
	var out []string
	for i := n - 1; i >= 0; i-- {
		out = append(out, tm.AddDate(0, 0, -i).Format(layout))
	}
	return out
}

func TestApply(t *testing.T) {
	tests := []struct {
		name   string
		labels []string
		tags   map[string][]string // label -> tags
		policy Policy
		now    time.Time // zero: now
		want   map[string][]string
	}{
		{
			name:   "last",
			labels: daysOf("2026-03-10 12:00", 10),
			policy: Policy{Last: 3},
			want: map[string][]string{
				"2026-03-10 12:00": {"last snapshot"},
				"2026-03-09 12:00": {"last snapshot"},
				"2026-03-08 12:00": {"last snapshot"},
			},
		},
		{
			name:   "last more than there are",
			labels: []string{"2026-03-01 12:00", "2026-03-02 12:00"},
			policy: Policy{Last: 5},
			want: map[string][]string{
				"2026-03-01 12:00": {"last snapshot"},
				"2026-03-02 12:00": {"last snapshot"},
			},
		},
		{
			name:   "last unlimited",
			labels: []string{"2026-03-01 12:00", "2026-03-02 12:00"},
			policy: Policy{Last: Unlimited},
			want: map[string][]string{
				"2026-03-01 12:00": {"last snapshot"},
				"2026-03-02 12:00": {"last snapshot"},
			},
		},
		{
			name: "hourly keeps the newest of each hour",
			labels: []string{"2026-03-01 10:05", "2026-03-01 10:55", "2026-03-01 11:00", "2026-03-01 11:59",
				"2026-03-01 13:30"},
			policy: Policy{Hourly: 2},
			want: map[string][]string{
				"2026-03-01 13:30": {"hourly snapshot"},
				"2026-03-01 11:59": {"hourly snapshot"},
			},
		},
		{
			name: "daily counts only days that have snapshots",
			labels: []string{"2026-03-01 12:00", "2026-03-05 08:00", "2026-03-05 20:00", "2026-03-10 12:00",
				"2026-03-20 00:00", "2026-03-20 23:59"},
			policy: Policy{Daily: 3},
			want: map[string][]string{
				"2026-03-20 23:59": {"daily snapshot"},
				"2026-03-10 12:00": {"daily snapshot"},
				"2026-03-05 20:00": {"daily snapshot"},
			},
		},
		{
			// 2026-03-01 is a Sunday: it belongs to ISO week 9, Monday
			// 2026-03-02 starts week 10.
			name:   "weekly uses ISO weeks (Monday to Sunday)",
			labels: []string{"2026-02-23 12:00", "2026-02-28 12:00", "2026-03-01 23:00", "2026-03-02 01:00", "2026-03-08 12:00"},
			policy: Policy{Weekly: 2},
			want: map[string][]string{
				"2026-03-08 12:00": {"weekly snapshot"},
				"2026-03-01 23:00": {"weekly snapshot"},
			},
		},
		{
			// 2027-01-01 (a Friday) is in ISO week 53 of 2026, with 2026-12-28.
			name:   "weekly across a year boundary",
			labels: []string{"2026-12-27 12:00", "2026-12-28 12:00", "2027-01-01 12:00", "2027-01-04 12:00"},
			policy: Policy{Weekly: 3},
			want: map[string][]string{
				"2027-01-04 12:00": {"weekly snapshot"},
				"2027-01-01 12:00": {"weekly snapshot"},
				"2026-12-27 12:00": {"weekly snapshot"},
			},
		},
		{
			name:   "monthly",
			labels: []string{"2026-01-31 12:00", "2026-02-01 12:00", "2026-02-28 12:00", "2026-04-15 12:00", "2026-04-16 12:00"},
			policy: Policy{Monthly: 2},
			want: map[string][]string{
				"2026-04-16 12:00": {"monthly snapshot"},
				"2026-02-28 12:00": {"monthly snapshot"},
			},
		},
		{
			name:   "yearly",
			labels: []string{"2024-06-01 12:00", "2024-12-31 23:59", "2025-01-01 00:00", "2026-03-01 12:00"},
			policy: Policy{Yearly: 2},
			want: map[string][]string{
				"2026-03-01 12:00": {"yearly snapshot"},
				"2025-01-01 00:00": {"yearly snapshot"},
			},
		},
		{
			name:   "yearly unlimited",
			labels: []string{"2024-06-01 12:00", "2024-12-31 23:59", "2025-01-01 00:00", "2026-03-01 12:00"},
			policy: Policy{Yearly: Unlimited},
			want: map[string][]string{
				"2026-03-01 12:00": {"yearly snapshot"},
				"2025-01-01 00:00": {"yearly snapshot"},
				"2024-12-31 23:59": {"yearly snapshot"},
			},
		},
		{
			name:   "within counts back from the newest snapshot, not from now",
			labels: []string{"2026-03-01 11:00", "2026-03-01 12:00", "2026-03-02 12:00", "2026-03-03 12:00"},
			policy: Policy{Within: Duration{Days: 2}},
			want: map[string][]string{
				// 2026-03-01 12:00 is exactly 2 days old: not newer, removed
				"2026-03-02 12:00": {"within 2d"},
				"2026-03-03 12:00": {"within 2d"},
			},
		},
		{
			name:   "within with a snapshot dated in the future counts from now",
			labels: []string{"2026-03-01 12:00", "2026-03-02 12:00", "2026-03-10 12:00"},
			now:    time.Date(2026, 3, 3, 13, 0, 0, 0, time.UTC),
			policy: Policy{Within: Duration{Days: 2}},
			want: map[string][]string{
				"2026-03-02 12:00": {"within 2d"},
				"2026-03-10 12:00": {"within 2d"},
			},
		},
		{
			name:   "within months is calendar months",
			labels: []string{"2026-01-30 12:00", "2026-02-01 12:00", "2026-03-01 12:00"},
			policy: Policy{Within: Duration{Months: 1}},
			want: map[string][]string{
				"2026-03-01 12:00": {"within 1m"},
			},
		},
		{
			name: "within daily",
			labels: []string{"2026-02-20 12:00", "2026-03-01 10:00", "2026-03-01 11:00", "2026-03-02 09:00",
				"2026-03-02 10:00"},
			policy: Policy{WithinDaily: Duration{Days: 7}},
			want: map[string][]string{
				"2026-03-02 10:00": {"daily within 7d"},
				"2026-03-01 11:00": {"daily within 7d"},
			},
		},
		{
			name:   "tags: any listed tag, and a,b needs both",
			labels: []string{"2026-03-01 12:00", "2026-03-02 12:00", "2026-03-03 12:00", "2026-03-04 12:00"},
			tags: map[string][]string{
				"2026-03-01 12:00": {"keep"},
				"2026-03-02 12:00": {"a"},
				"2026-03-03 12:00": {"a", "b"},
			},
			policy: Policy{Tags: snapshot.ParseTagLists([]string{"keep", "a,b"})},
			want: map[string][]string{
				"2026-03-01 12:00": {"has tag keep"},
				"2026-03-03 12:00": {"has tag a,b"},
			},
		},
		{
			name: "combination: one snapshot kept by several rules",
			labels: []string{"2026-02-20 12:00", "2026-02-27 12:00", "2026-03-07 08:00", "2026-03-07 20:00",
				"2026-03-08 09:00", "2026-03-08 21:00"},
			tags:   map[string][]string{"2026-02-20 12:00": {"important"}, "2026-03-08 21:00": {"important"}},
			policy: Policy{Last: 2, Daily: 2, Weekly: 3, Monthly: 1, Tags: snapshot.ParseTagLists([]string{"important"})},
			want: map[string][]string{
				"2026-03-08 21:00": {"has tag important", "last snapshot", "daily snapshot", "weekly snapshot", "monthly snapshot"},
				"2026-03-08 09:00": {"last snapshot"},
				"2026-03-07 20:00": {"daily snapshot"},
				// 2026-03-07/08 are week 10; 2026-02-27 is week 9; 2026-02-20 is week 8
				"2026-02-27 12:00": {"weekly snapshot"},
				"2026-02-20 12:00": {"has tag important", "weekly snapshot"},
			},
		},
		{
			// restic's classic example shape: last 1, daily 3, weekly 2
			name:   "last, daily and weekly over two weeks",
			labels: daysOf("2026-03-15 12:00", 14), // 03-02 (Mon) .. 03-15 (Sun)
			policy: Policy{Last: 1, Daily: 3, Weekly: 2},
			want: map[string][]string{
				"2026-03-15 12:00": {"last snapshot", "daily snapshot", "weekly snapshot"},
				"2026-03-14 12:00": {"daily snapshot"},
				"2026-03-13 12:00": {"daily snapshot"},
				"2026-03-08 12:00": {"weekly snapshot"},
			},
		},
		{
			name:   "ties: same time, the smaller ID counts as newer",
			labels: []string{"2026-03-01 12:00#a", "2026-03-01 12:00#b", "2026-02-01 12:00"},
			policy: Policy{Last: 1, Daily: 2},
			want:   nil, // filled in below from the IDs
		},
		{
			// 23:30 UTC and 00:30 UTC the next day are one day in UTC+2
			// (01:30, 02:30 on 03-02); 21:30 UTC is 23:30 on 03-01 ...
			name:   "day boundaries follow now's zone (UTC+2)",
			labels: []string{"2026-03-01 21:30", "2026-03-01 23:30", "2026-03-02 00:30"},
			now:    time.Date(2030, 1, 1, 0, 0, 0, 0, time.FixedZone("UTC+2", 2*3600)),
			policy: Policy{Daily: 5},
			want: map[string][]string{
				"2026-03-02 00:30": {"daily snapshot"},
				"2026-03-01 21:30": {"daily snapshot"},
			},
		},
		{
			// ... while in UTC 23:30 and 00:30 are on two days
			name:   "day boundaries follow now's zone (UTC)",
			labels: []string{"2026-03-01 21:30", "2026-03-01 23:30", "2026-03-02 00:30"},
			policy: Policy{Daily: 5},
			want: map[string][]string{
				"2026-03-02 00:30": {"daily snapshot"},
				"2026-03-01 23:30": {"daily snapshot"},
			},
		},
		{
			name:   "day boundaries follow now's zone (UTC-5)",
			labels: []string{"2026-03-01 21:30", "2026-03-01 23:30", "2026-03-02 00:30", "2026-03-02 06:00"},
			now:    time.Date(2030, 1, 1, 0, 0, 0, 0, time.FixedZone("UTC-5", -5*3600)),
			policy: Policy{Daily: 5},
			want: map[string][]string{
				"2026-03-02 06:00": {"daily snapshot"}, // 01:00 local on 03-02
				"2026-03-02 00:30": {"daily snapshot"}, // 19:30 local on 03-01
			},
		},
		{
			name:   "empty policy keeps everything",
			labels: []string{"2026-03-01 12:00", "2026-03-02 12:00"},
			policy: Policy{},
			want: map[string][]string{
				"2026-03-01 12:00": {"policy is empty"},
				"2026-03-02 12:00": {"policy is empty"},
			},
		},
		{
			name:   "no snapshots",
			policy: Policy{Last: 1},
			want:   map[string][]string{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var all []*snapshot.Record
			for _, l := range tc.labels {
				all = append(all, snap(t, l, tc.tags[l]...))
			}
			want := tc.want
			if want == nil { // the ties case
				a, b := all[0], all[1]
				first := tc.labels[0]
				if b.ID.String() < a.ID.String() {
					first = tc.labels[1]
				}
				want = map[string][]string{first: {"last snapshot", "daily snapshot"}, "2026-02-01 12:00": {"daily snapshot"}}
			}
			n := tc.now
			if n.IsZero() {
				n = now
			}
			keep, remove, reasons := Apply(all, tc.policy, n)
			if len(keep)+len(remove) != len(all) {
				t.Fatalf("keep %d + remove %d != %d snapshots", len(keep), len(remove), len(all))
			}
			got := map[string][]string{}
			for _, k := range keep {
				got[labelOf(k, all, tc.labels)] = reasons[k.ID]
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("kept:\n got %v\nwant %v", got, want)
			}
			for _, r := range remove {
				if _, ok := reasons[r.ID]; ok {
					t.Errorf("removed %s has reasons", labelOf(r, all, tc.labels))
				}
			}
			for _, list := range [][]*snapshot.Record{keep, remove} {
				if !slices.IsSortedFunc(list, func(a, b *snapshot.Record) int { return b.Time.Compare(a.Time) }) {
					t.Errorf("not newest first")
				}
			}
		})
	}
}

func TestApplyDoesNotReorderInput(t *testing.T) {
	in := snaps(t, "2026-03-01 12:00", "2026-03-03 12:00", "2026-03-02 12:00")
	orig := slices.Clone(in)
	Apply(in, Policy{Last: 1}, now)
	if !slices.Equal(in, orig) {
		t.Fatal("Apply reordered its input")
	}
}

func TestApplyIsOrderIndependent(t *testing.T) {
	a := snaps(t, "2026-03-01 12:00", "2026-03-03 12:00", "2026-03-02 12:00", "2026-02-01 00:00")
	b := slices.Clone(a)
	slices.Reverse(b)
	p := Policy{Last: 1, Monthly: 2}
	k1, r1, _ := Apply(a, p, now)
	k2, r2, _ := Apply(b, p, now)
	if !slices.Equal(k1, k2) || !slices.Equal(r1, r2) {
		t.Fatal("result depends on input order")
	}
}

func TestPolicyEmptyAndValidate(t *testing.T) {
	if !(Policy{}).Empty() {
		t.Error("zero policy not empty")
	}
	for _, p := range []Policy{{Last: 1}, {Yearly: -1}, {Within: Duration{Hours: 1}}, {WithinYearly: Duration{Years: 1}}, {Tags: []snapshot.TagList{{"x"}}}} {
		if p.Empty() {
			t.Errorf("%+v reported empty", p)
		}
		if err := p.Validate(); err != nil {
			t.Errorf("%+v: %v", p, err)
		}
	}
	for _, p := range []Policy{{Last: -2}, {Daily: -5}, {Within: Duration{Days: -1}}, {Tags: snapshot.ParseTagLists([]string{","})}} {
		if err := p.Validate(); err == nil {
			t.Errorf("%+v: no error", p)
		}
	}
}

func TestParseDuration(t *testing.T) {
	good := map[string]Duration{
		"7d":     {Days: 7},
		"2w":     {Days: 14},
		"1m":     {Months: 1},
		"1y":     {Years: 1},
		"36h":    {Hours: 36},
		"1y6m2d": {Years: 1, Months: 6, Days: 2},
		"1w1d":   {Days: 8},
	}
	for s, want := range good {
		got, err := ParseDuration(s)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %+v, %v; want %+v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "7", "d", "7x", "-1d", "1.5d", "7d ", "99999999999999999999d"} {
		if _, err := ParseDuration(s); err == nil {
			t.Errorf("ParseDuration(%q): no error", s)
		}
	}
	if s := (Duration{Years: 1, Days: 2, Hours: 3}).String(); s != "1y2d3h" {
		t.Errorf("String = %q", s)
	}
	from := time.Date(2026, 3, 31, 12, 0, 0, 0, time.UTC)
	if got := (Duration{Months: 1, Hours: 12}).Before(from); !got.Equal(time.Date(2026, 3, 3, 0, 0, 0, 0, time.UTC)) {
		// 2026-02-31 normalises to 2026-03-03, as time.AddDate does
		t.Errorf("Before = %v", got)
	}
}
