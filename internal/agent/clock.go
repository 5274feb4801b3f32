package agent

import (
	"context"
	"time"
)

// Clock is the daemon's time: the real one, or for tests one that runs
// faster (ScaledClock), so that a day of schedules passes in seconds.
type Clock interface {
	Now() time.Time
	// SleepUntil returns at t, or with ctx's error when ctx ends first.
	SleepUntil(ctx context.Context, t time.Time) error
}

// RealClock is the wall clock.
type RealClock struct{}

func (RealClock) Now() time.Time { return time.Now() }

// SleepUntil wakes at least every minute to read the wall clock again:
// Go's timers run on the monotonic clock, which stops while the machine
// is suspended, and a run due meanwhile would otherwise be late by as
// long as the machine slept.
func (RealClock) SleepUntil(ctx context.Context, t time.Time) error {
	for {
		d := time.Until(t)
		if d <= 0 {
			return ctx.Err()
		}
		if err := sleepReal(ctx, min(d, time.Minute)); err != nil {
			return err
		}
	}
}

func sleepReal(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// ScaledClock starts at Start when made and runs Scale times faster than
// the wall clock: with Scale 600 a real second is ten minutes.
type ScaledClock struct {
	Start time.Time
	Scale float64
	real0 time.Time
}

// NewScaledClock returns a clock that reads start now.
func NewScaledClock(start time.Time, scale float64) *ScaledClock {
	return &ScaledClock{Start: start, Scale: scale, real0: time.Now()}
}

func (c *ScaledClock) Now() time.Time {
	return c.Start.Add(time.Duration(float64(time.Since(c.real0)) * c.Scale))
}

func (c *ScaledClock) SleepUntil(ctx context.Context, t time.Time) error {
	for {
		d := t.Sub(c.Now())
		if d <= 0 {
			return ctx.Err()
		}
		if err := sleepReal(ctx, time.Duration(float64(d)/c.Scale)+time.Millisecond); err != nil {
			return err
		}
	}
}
