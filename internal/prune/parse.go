package prune

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ParseGrace parses a grace period (Options.Grace): Go durations (90m,
// 24h, 0) and days or weeks (2d, 1w).
func ParseGrace(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return 0, errors.New("must not be negative")
		}
		return d, nil
	}
	for unit, d := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if n, ok := strings.CutSuffix(s, unit); ok {
			if v, err := strconv.ParseUint(n, 10, 16); err == nil {
				return time.Duration(v) * d, nil
			}
		}
	}
	return 0, fmt.Errorf("%q is not a duration (e.g. 24h, 90m, 2d, 1w, 0)", s)
}

// ParseMaxUnused parses Options.MaxUnused as a share of 1 from "10%",
// "10" (percent) or "unlimited".
func ParseMaxUnused(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "unlimited" {
		return 1, nil
	}
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if err != nil || v < 0 || v > 100 {
		return 0, fmt.Errorf("%q is not a percentage from 0 to 100 (or \"unlimited\")", s)
	}
	return v / 100, nil
}
