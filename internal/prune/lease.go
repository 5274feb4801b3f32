package prune

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/repo"
)

// heldLease is the lease of a running prune and its renewal.
type heldLease struct {
	l     *repo.PruneLease
	mu    sync.Mutex
	first error // why renewal failed; the prune was cancelled
}

// takeLease takes r's prune lease, or fails with a *repo.LeaseHeldError
// naming the prune that holds it.
func takeLease(ctx context.Context, r *repo.Repository, opts Options) (*heldLease, error) {
	holder := opts.Holder
	if holder == "" {
		holder, _ = os.Hostname()
	}
	ttl := opts.LeaseTTL
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	l, err := r.AcquireLease(ctx, holder, os.Getpid(), ttl)
	if err != nil {
		return nil, err
	}
	return &heldLease{l: l}, nil
}

// keep renews the lease every third of its time to live until stop is
// called. If a renewal fails twice in a row the prune is cancelled: its
// lease may expire, and another prune may then start.
func (h *heldLease) keep(ctx context.Context, cancel context.CancelFunc) (stop func()) {
	lease := h.l.Lease()
	every := lease.Expires.Sub(lease.Time) / 3
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		failed := 0
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := h.l.Renew(ctx); err != nil {
				if failed++; failed >= 2 {
					h.mu.Lock()
					h.first = fmt.Errorf("prune stopped: its lease could not be renewed (another prune could start): %w", err)
					h.mu.Unlock()
					cancel()
					return
				}
				continue
			}
			failed = 0
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

func (h *heldLease) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.first
}
