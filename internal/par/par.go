// Package par runs loops on several goroutines.
package par

import (
	"context"
	"sync"
)

// For calls fn(w, i) for i in 0..n-1 on up to workers goroutines; w
// (0..workers-1) names the goroutine, so callers can keep a buffer per
// worker. It stops handing out work when ctx is canceled and returns when
// every call has returned.
func For(ctx context.Context, n, workers int, fn func(w, i int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(workers, n); w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := range next {
				fn(w, i)
			}
		}(w)
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}
