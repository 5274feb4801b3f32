package forget

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a calendar duration for --keep-within: years, months, days
// and hours, applied with time.AddDate so that "1m" is one calendar month
// and "1y" one calendar year, as in restic.
type Duration struct {
	Years, Months, Days, Hours int
}

// IsZero reports whether d is empty (the rule is off).
func (d Duration) IsZero() bool { return d == Duration{} }

// Before returns t moved back by d.
func (d Duration) Before(t time.Time) time.Time {
	return t.AddDate(-d.Years, -d.Months, -d.Days).Add(-time.Duration(d.Hours) * time.Hour)
}

// String formats d like its input: "1y2m3d4h"; zero is "0h".
func (d Duration) String() string {
	var b strings.Builder
	for _, p := range []struct {
		n    int
		unit string
	}{{d.Years, "y"}, {d.Months, "m"}, {d.Days, "d"}, {d.Hours, "h"}} {
		if p.n != 0 {
			b.WriteString(strconv.Itoa(p.n) + p.unit)
		}
	}
	if b.Len() == 0 {
		return "0h"
	}
	return b.String()
}

// ParseDuration parses a sequence of numbers with units: y (years),
// m (months), w (weeks = 7 days), d (days), h (hours), e.g. "7d", "2w",
// "1m", "1y6m", "36h".
func ParseDuration(s string) (Duration, error) {
	var d Duration
	if s == "" {
		return d, errors.New("empty duration")
	}
	rest := s
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i == len(rest) {
			return Duration{}, fmt.Errorf("invalid duration %q: want numbers with units y, m (months), w, d, h, e.g. 7d, 2w, 1m, 1y, 36h", s)
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil || n > 1_000_000 {
			return Duration{}, fmt.Errorf("invalid duration %q: number too large", s)
		}
		switch rest[i] {
		case 'y':
			d.Years += n
		case 'm':
			d.Months += n
		case 'w':
			d.Days += 7 * n
		case 'd':
			d.Days += n
		case 'h':
			d.Hours += n
		default:
			return Duration{}, fmt.Errorf("invalid duration %q: unknown unit %q (want y, m, w, d or h)", s, rest[i])
		}
		rest = rest[i+1:]
	}
	return d, nil
}
