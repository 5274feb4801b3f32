package main

import (
	"errors"
	"math"
	"slices"
	"testing"
	"time"
)

const ms = time.Millisecond

type arrival struct {
	at   time.Duration
	size int
}

type outcome struct {
	verdict Verdict
	due     time.Duration // when Queued
}

func TestShaper(t *testing.T) {
	tests := []struct {
		name string
		cfg  ShapeConfig
		in   []arrival
		want []outcome
	}{
		{
			name: "delay only: each packet leaves delay after it came, however close together",
			cfg:  ShapeConfig{Delay: 50 * ms, Limit: 100},
			in:   []arrival{{0, 1500}, {0, 1500}, {1 * ms, 40}, {70 * ms, 1500}},
			want: []outcome{{Queued, 50 * ms}, {Queued, 50 * ms}, {Queued, 51 * ms}, {Queued, 120 * ms}},
		},
		{
			// 8 Mbit/s: 1000 bytes take 1 ms on the wire.
			name: "rate: a burst queues behind the bottleneck, a late packet does not",
			cfg:  ShapeConfig{Delay: 10 * ms, Rate: 8_000_000, Limit: 100},
			in:   []arrival{{0, 1000}, {0, 1000}, {0, 500}, {1 * ms, 1000}, {20 * ms, 1000}},
			want: []outcome{
				{Queued, 11 * ms}, // 0 + 1 ms + delay
				{Queued, 12 * ms}, // behind the first
				{Queued, 12*ms + 500*time.Microsecond},
				{Queued, 13*ms + 500*time.Microsecond}, // came at 1 ms, wire busy until 2.5 ms
				{Queued, 31 * ms},                      // wire idle again
			},
		},
		{
			name: "limit: held packets count until they leave; tail drop beyond",
			cfg:  ShapeConfig{Delay: 50 * ms, Limit: 2},
			in:   []arrival{{0, 100}, {1 * ms, 100}, {2 * ms, 100}, {51 * ms, 100}},
			// the third finds two held; at 51 ms the first has left
			// (the test takes due packets out before each arrival)
			want: []outcome{{Queued, 50 * ms}, {Queued, 51 * ms}, {Overflow, 0}, {Queued, 101 * ms}},
		},
		{
			name: "overflow takes no time on the wire",
			cfg:  ShapeConfig{Rate: 8_000_000, Limit: 1},
			in:   []arrival{{0, 1000}, {0, 1000}, {1 * ms, 1000}},
			want: []outcome{{Queued, 1 * ms}, {Overflow, 0}, {Queued, 2 * ms}},
		},
		{
			name: "loss 100%: everything lost, nothing queued",
			cfg:  ShapeConfig{Delay: ms, Loss: 1, Limit: 10},
			in:   []arrival{{0, 100}, {0, 100}},
			want: []outcome{{Lost, 0}, {Lost, 0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewShaper[int](tt.cfg)
			var out []int
			for i, a := range tt.in {
				out = s.Due(a.at, out)
				due, v := s.Offer(a.at, a.size, i)
				if v != tt.want[i].verdict || (v == Queued && due != tt.want[i].due) {
					t.Errorf("packet %d (at %v, %d bytes): verdict %v due %v, want %v due %v",
						i, a.at, a.size, v, due, tt.want[i].verdict, tt.want[i].due)
				}
			}
			// everything queued leaves, in arrival order, at its due time
			var queued []int
			for i, w := range tt.want {
				if w.verdict == Queued {
					queued = append(queued, i)
				}
			}
			for _, i := range queued {
				if slices.Contains(out, i) {
					continue
				}
				due := tt.want[i].due
				if got := s.Due(due-1, nil); len(got) > 0 && got[0] == i {
					t.Errorf("packet %d left before %v", i, due)
				}
				out = s.Due(due, out)
			}
			if len(out) != len(queued) {
				t.Fatalf("left: %v, want %v", out, queued)
			}
			for k := range out {
				if out[k] != queued[k] {
					t.Fatalf("left in order %v, want %v", out, queued)
				}
			}
			if s.Len() != 0 {
				t.Errorf("%d packets still held", s.Len())
			}
		})
	}
}

// The loss rate with a fixed seed is near the asked one, and the seed
// makes it repeatable.
func TestShaperLossRate(t *testing.T) {
	for _, p := range []float64{0.001, 0.01, 0.2} {
		const n = 200_000
		count := func(seed uint64) int {
			s := NewShaper[struct{}](ShapeConfig{Loss: p, Limit: n, Seed: seed})
			lost := 0
			for i := range n {
				if _, v := s.Offer(time.Duration(i), 1500, struct{}{}); v == Lost {
					lost++
				}
			}
			return lost
		}
		lost := count(42)
		// 5 standard deviations of the binomial
		tol := 5 * math.Sqrt(n*p*(1-p))
		if math.Abs(float64(lost)-n*p) > tol {
			t.Errorf("loss %g: %d of %d lost, want %v ± %.0f", p, lost, n, n*p, tol)
		}
		if again := count(42); again != lost {
			t.Errorf("loss %g: seed 42 lost %d, then %d", p, lost, again)
		}
	}
}

// A long backlog at the rate: departures are spaced by the wire time and
// the ring buffer grows without reordering.
func TestShaperBacklogGrows(t *testing.T) {
	s := NewShaper[int](ShapeConfig{Delay: 5 * ms, Rate: 1_000_000_000, Limit: 5000})
	const n = 3000 // more than the initial ring
	for i := range n {
		due, v := s.Offer(0, 1250, i) // 10 µs each at 1 Gbit/s
		if v != Queued {
			t.Fatalf("packet %d: %v", i, v)
		}
		if want := 5*ms + time.Duration(i+1)*10*time.Microsecond; due != want {
			t.Fatalf("packet %d due %v, want %v", i, due, want)
		}
	}
	got := s.Due(time.Hour, nil)
	if len(got) != n {
		t.Fatalf("%d left, want %d", len(got), n)
	}
	for i, v := range got {
		if v != i {
			t.Fatalf("position %d holds packet %d", i, v)
		}
	}
}

func TestParseRate(t *testing.T) {
	good := map[string]uint64{
		"1gbit": 1e9, "100mbit": 1e8, "1.5Mbit": 1.5e6, "125mbps": 1e9, "64kbit": 64e3,
		"9600": 9600, "0": 0, "0bit": 0, "8bit": 8,
	}
	for in, want := range good {
		if got, err := parseRate(in); err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "1gbits", "-1mbit", "1..2mbit", "4bit", "100tbit", "mbit"} {
		if got, err := parseRate(in); err == nil {
			t.Errorf("parseRate(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseLoss(t *testing.T) {
	good := map[string]float64{"0.1%": 0.001, "0.1": 0.001, "0": 0, "100%": 1, " 2% ": 0.02}
	for in, want := range good {
		if got, err := parseLoss(in); err != nil || math.Abs(got-want) > 1e-12 {
			t.Errorf("parseLoss(%q) = %g, %v; want %g", in, got, err, want)
		}
	}
	for _, in := range []string{"", "%", "abc", "-1%", "101", "NaN", "0.1%%"} {
		if got, err := parseLoss(in); err == nil {
			t.Errorf("parseLoss(%q) = %g, want an error", in, got)
		}
	}
}

func TestParseLinkFlags(t *testing.T) {
	cfg, err := parseLinkFlags([]string{"--a", "ta", "--b", "tb", "--delay", "50ms", "--rate", "1gbit", "--loss", "0.1%", "--limit", "1000", "--seed", "7"})
	if err != nil {
		t.Fatal(err)
	}
	want := ShapeConfig{Delay: 50 * ms, Rate: 1e9, Loss: 0.001, Limit: 1000, Seed: 7}
	if cfg.shape != want || cfg.a != "ta" || cfg.b != "tb" || cfg.mtu != 1500 {
		t.Errorf("got %+v", cfg)
	}
	bad := [][]string{
		{"--b", "tb"},
		{"--a", "ta"},
		{"--a", "same", "--b", "same"},
		{"--a", "ta", "--b", "a-name-longer-than-15"},
		{"--a", "t/a", "--b", "tb"},
		{"--a", "ta", "--b", "tb", "--delay", "-1ms"},
		{"--a", "ta", "--b", "tb", "--delay", "soon"},
		{"--a", "ta", "--b", "tb", "--rate", "quick"},
		{"--a", "ta", "--b", "tb", "--loss", "200%"},
		{"--a", "ta", "--b", "tb", "--limit", "0"},
		{"--a", "ta", "--b", "tb", "--mtu", "20"},
		{"--a", "ta", "--b", "tb", "extra"},
		{"--a", "ta", "--b", "tb", "--nope"},
	}
	for _, args := range bad {
		_, err := parseLinkFlags(args)
		var ue usageError
		if err == nil || !errors.As(err, &ue) {
			t.Errorf("parseLinkFlags(%q) = %v, want a usage error", args, err)
		}
	}
}
