package transfer

import (
	"context"
	"fmt"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// loadTree loads a tree blob and decodes it, returning the plaintext too.
func loadTree(ctx context.Context, r *repo.Repository, id hash.Ref) ([]byte, *snapshot.Tree, error) {
	raw, err := r.LoadBlob(ctx, repo.TreeBlob, id, nil)
	if err != nil {
		return nil, nil, err
	}
	t, err := snapshot.DecodeTree(raw)
	if err != nil {
		return nil, nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	return raw, t, nil
}

// walkTrees loads every tree reachable from roots once, with workers
// loads at a time, and calls fn for each (one call at a time). A tree that
// cannot be loaded goes to onErr: its error stops the walk, nil skips the
// tree's contents. fn's error stops the walk.
func walkTrees(ctx context.Context, r *repo.Repository, roots []hash.Ref, workers int,
	fn func(id hash.Ref, t *snapshot.Tree) error, onErr func(id hash.Ref, err error) error) error {
	w := &treeWalk{seen: map[hash.Ref]bool{}}
	w.cond = sync.NewCond(&w.mu)
	for _, id := range roots {
		if !w.seen[id] {
			w.seen[id] = true
			w.queue = append(w.queue, id)
		}
	}
	var fnMu sync.Mutex
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				id, ok := w.next()
				if !ok {
					return
				}
				_, t, err := loadTree(ctx, r, id)
				if err != nil {
					if ctx.Err() != nil {
						w.done(nil, ctx.Err())
						continue
					}
					w.done(nil, onErr(id, err))
					continue
				}
				fnMu.Lock()
				err = fn(id, t)
				fnMu.Unlock()
				var children []hash.Ref
				for _, n := range t.Nodes {
					if n.Type == snapshot.TypeDir && !n.Subtree.IsNull() {
						children = append(children, n.Subtree)
					}
				}
				w.done(children, err)
			}
		}()
	}
	wg.Wait()
	return w.err
}

type treeWalk struct {
	mu     sync.Mutex
	cond   *sync.Cond
	queue  []hash.Ref // last in, first out: depth first keeps it short
	seen   map[hash.Ref]bool
	active int
	err    error
}

func (w *treeWalk) next() (hash.Ref, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for len(w.queue) == 0 && w.active > 0 && w.err == nil {
		w.cond.Wait()
	}
	if w.err != nil || len(w.queue) == 0 {
		w.cond.Broadcast()
		return hash.Ref{}, false
	}
	id := w.queue[len(w.queue)-1]
	w.queue = w.queue[:len(w.queue)-1]
	w.active++
	return id, true
}

func (w *treeWalk) done(children []hash.Ref, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.active--
	if err != nil && w.err == nil {
		w.err = err
	}
	for _, c := range children {
		if !w.seen[c] {
			w.seen[c] = true
			w.queue = append(w.queue, c)
		}
	}
	w.cond.Broadcast()
}

// treeFetcher loads trees for the copy walker, which visits them one at a
// time depth first: when a tree is taken, its subtrees are loaded ahead
// (a bounded number at a time), so that the latency of each load is
// hidden behind the work on its siblings.
type treeFetcher struct {
	ctx     context.Context
	r       *repo.Repository
	sem     chan struct{} // concurrent loads
	mu      sync.Mutex
	pending map[hash.Ref]*treeFuture
	wg      sync.WaitGroup
}

// maxPrefetched bounds the trees loaded ahead and not yet taken.
const maxPrefetched = 256

type treeFuture struct {
	done chan struct{}
	raw  []byte
	tree *snapshot.Tree
	err  error
}

func newTreeFetcher(ctx context.Context, r *repo.Repository, loads int) *treeFetcher {
	return &treeFetcher{ctx: ctx, r: r, sem: make(chan struct{}, max(loads, 1)), pending: map[hash.Ref]*treeFuture{}}
}

func (f *treeFetcher) start(id hash.Ref) *treeFuture {
	fut := &treeFuture{done: make(chan struct{})}
	f.pending[id] = fut
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(fut.done)
		select {
		case f.sem <- struct{}{}:
		case <-f.ctx.Done():
			fut.err = f.ctx.Err()
			return
		}
		fut.raw, fut.tree, fut.err = loadTree(f.ctx, f.r, id)
		<-f.sem
	}()
	return fut
}

// prefetch starts loading id unless it is loading or too many are.
func (f *treeFetcher) prefetch(id hash.Ref) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.pending[id]; ok || len(f.pending) >= maxPrefetched {
		return
	}
	f.start(id)
}

// take returns tree id, loading it now if it was not loaded ahead.
func (f *treeFetcher) take(id hash.Ref) ([]byte, *snapshot.Tree, error) {
	f.mu.Lock()
	fut, ok := f.pending[id]
	if !ok {
		fut = f.start(id)
	}
	f.mu.Unlock()
	select {
	case <-fut.done:
	case <-f.ctx.Done():
		return nil, nil, f.ctx.Err()
	}
	f.mu.Lock()
	delete(f.pending, id)
	f.mu.Unlock()
	return fut.raw, fut.tree, fut.err
}

// drop forgets a tree loaded ahead that will not be taken.
func (f *treeFetcher) drop(id hash.Ref) {
	f.mu.Lock()
	delete(f.pending, id)
	f.mu.Unlock()
}

// wait waits for the loads in flight (after the context ended).
func (f *treeFetcher) wait() { f.wg.Wait() }
