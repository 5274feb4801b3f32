package prune

import (
	"testing"
	"time"
)

func TestParseGrace(t *testing.T) {
	for s, want := range map[string]time.Duration{"24h": 24 * time.Hour, " 90m": 90 * time.Minute, "0": 0, "2d": 48 * time.Hour, "1w": 7 * 24 * time.Hour} {
		if got, err := ParseGrace(s); err != nil || got != want {
			t.Errorf("ParseGrace(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"-1h", "x", "2x", "d", "-2d", ""} {
		if got, err := ParseGrace(s); err == nil {
			t.Errorf("ParseGrace(%q) = %v, want an error", s, got)
		}
	}
}

func TestParseMaxUnused(t *testing.T) {
	for s, want := range map[string]float64{"10%": 0.1, "25": 0.25, "0": 0, "100%": 1, "unlimited": 1} {
		if got, err := ParseMaxUnused(s); err != nil || got != want {
			t.Errorf("ParseMaxUnused(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"101%", "-1", "x", ""} {
		if got, err := ParseMaxUnused(s); err == nil {
			t.Errorf("ParseMaxUnused(%q) = %v, want an error", s, got)
		}
	}
}
