// Package par runs loops on several goroutines. It is a thin layer over
// golang.org/x/sync/errgroup (which bounds the goroutines with SetLimit)
// that adds what a dozen call sites would otherwise repeat: stopping when
// the context ends and naming each running call with a worker index, so
// callers can keep one buffer per worker.
package par

import (
	"context"

	"golang.org/x/sync/errgroup"
)

// For calls fn(w, i) for i in 0..n-1, at most workers at a time; w
// (0..workers-1) is unique among the calls running at once, so callers can
// keep a buffer per worker. It stops handing out work when ctx is canceled
// and returns when every call has returned.
func For(ctx context.Context, n, workers int, fn func(w, i int)) {
	workers = max(min(workers, n), 1)
	var g errgroup.Group
	g.SetLimit(workers)
	// free worker indexes: g.Go starts a call only when fewer than
	// workers run, so one is always free when a call starts
	free := make(chan int, workers)
	for w := range workers {
		free <- w
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		g.Go(func() error {
			w := <-free
			defer func() { free <- w }()
			fn(w, i)
			return nil
		})
	}
	_ = g.Wait()
}
