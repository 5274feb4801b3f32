package main

import (
	"math/rand/v2"
	"time"
)

// Verdict is what a Shaper does with an offered packet.
type Verdict int

const (
	// Queued: the packet leaves at the due time Offer returned.
	Queued Verdict = iota
	// Lost: dropped by the random loss, as netem's "loss random" does
	// (before the rate: a lost packet takes no time on the wire).
	Lost
	// Overflow: dropped at the tail because limit packets were held.
	Overflow
)

// Shaper is one direction of the link, without I/O: given arrival times
// and sizes it says which packets are dropped and when the others leave,
// with netem's semantics (delay, rate, loss, limit). Times are durations
// since an origin the caller chooses (the real link: its start; tests: a
// fake clock). It holds the queued items itself, in a FIFO: the delay is
// the same for every packet and the rate serialises them, so due times
// never decrease and the head is always the next to leave. Not safe for
// concurrent use; the link guards it with a mutex.
type Shaper[T any] struct {
	delay time.Duration
	rate  uint64 // bits per second; 0: no rate limit
	loss  float64
	limit int
	rng   *rand.Rand

	// lastTx is when the last queued packet finished its serialisation
	// (its due time minus the delay): the next one cannot start before.
	lastTx time.Duration

	// ring buffer of held packets
	q          []held[T]
	head, size int
}

type held[T any] struct {
	due time.Duration
	v   T
}

// ShapeConfig is one direction's parameters.
type ShapeConfig struct {
	Delay time.Duration // one-way delay, ≥ 0
	Rate  uint64        // bits per second; 0: unlimited
	Loss  float64       // probability of loss, 0 ≤ Loss ≤ 1
	Limit int           // packets held at most (delayed or waiting for the rate), ≥ 1
	Seed  uint64        // of the loss's random numbers
}

// NewShaper returns a shaper for cfg, which the caller has checked
// (parseFlags does).
func NewShaper[T any](cfg ShapeConfig) *Shaper[T] {
	return &Shaper[T]{
		delay: cfg.Delay,
		rate:  cfg.Rate,
		loss:  cfg.Loss,
		limit: cfg.Limit,
		rng:   rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		q:     make([]held[T], min(cfg.Limit, 1024)),
	}
}

// txTime is how long size bytes take on the wire at the rate.
func (s *Shaper[T]) txTime(size int) time.Duration {
	if s.rate == 0 {
		return 0
	}
	// size ≤ 64 KiB, so size*8e9 fits easily in 64 bits.
	return time.Duration((uint64(size)*8*uint64(time.Second) + s.rate - 1) / s.rate)
}

// Offer takes a packet of size bytes arriving at now. When the verdict
// is Queued the packet is held until due (≥ now + delay); otherwise the
// caller keeps v (to recycle its buffer).
//
// netem computes time_to_send = max(now + delay, tail's time_to_send) +
// len/rate; with a constant delay that is the same as serialising first,
// txEnd = max(now, lastTx) + len/rate, and adding the delay after.
func (s *Shaper[T]) Offer(now time.Duration, size int, v T) (due time.Duration, verdict Verdict) {
	if s.loss > 0 && s.rng.Float64() < s.loss {
		return 0, Lost
	}
	if s.size >= s.limit {
		return 0, Overflow
	}
	txEnd := max(now, s.lastTx) + s.txTime(size)
	s.lastTx = txEnd
	due = txEnd + s.delay
	if s.size == len(s.q) {
		s.grow()
	}
	s.q[(s.head+s.size)%len(s.q)] = held[T]{due: due, v: v}
	s.size++
	return due, Queued
}

func (s *Shaper[T]) grow() {
	n := min(2*len(s.q), s.limit)
	q := make([]held[T], n)
	for i := range s.size {
		q[i] = s.q[(s.head+i)%len(s.q)]
	}
	s.q, s.head = q, 0
}

// Len is the number of held packets.
func (s *Shaper[T]) Len() int { return s.size }

// Next is the due time of the head, if any packet is held.
func (s *Shaper[T]) Next() (time.Duration, bool) {
	if s.size == 0 {
		return 0, false
	}
	return s.q[s.head].due, true
}

// Due appends to out every held packet due at or before now, in order,
// and removes them.
func (s *Shaper[T]) Due(now time.Duration, out []T) []T {
	var zero T
	for s.size > 0 && s.q[s.head].due <= now {
		out = append(out, s.q[s.head].v)
		s.q[s.head].v = zero // the buffer belongs to the caller now
		s.head = (s.head + 1) % len(s.q)
		s.size--
	}
	return out
}
