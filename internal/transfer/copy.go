package transfer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Copy copies snapshots from src into dst, oldest first, sending only the
// blobs dst lacks. Both need full keys (dst's, to see which snapshots it
// has and to verify). A snapshot that dst has already (by ID, or a copy of
// it: the same Original) is skipped. Each copy keeps the source's record
// (time, host, paths, tags, summary, consistency) with its new root tree,
// its parent mapped to the parent's copy if dst has one, and Original set
// to the source snapshot's Original, or its ID if it is not a copy itself.
//
// Blobs are durable and indexed in dst before the snapshot that needs them
// is written, and at least every Options.FlushInterval; when ctx ends or
// an error stops the copy, the packs already stored are indexed, so that
// running Copy again sends only what is still missing.
func Copy(ctx context.Context, src, dst *repo.Repository, snaps []*snapshot.Record, opts Options) (*Result, error) {
	if err := checkReadable(src, "source"); err != nil {
		return nil, err
	}
	if err := checkReadable(dst, "destination (copy needs a full key of it, to see which snapshots it has)"); err != nil {
		return nil, err
	}
	opts = opts.withConnections(src.Backend(), dst.Backend())
	snaps = uniqueByID(snaps)
	snapshot.SortByTime(snaps)
	existing, err := existingSnapshots(ctx, dst)
	if err != nil {
		return nil, err
	}
	before := dst.SavedStats()
	res := &Result{SharedKey: src.ChunkIDKey() == dst.ChunkIDKey()}
	// Blobs keep their IDs, and trees their bytes, only when both the
	// chunk ID key and the compression level are the same: the stored
	// bytes, hence the ID, of a blob depend on the level too. Otherwise a
	// tree copied as it is would name blobs the destination stores under
	// other IDs.
	res.ByID = res.SharedKey && src.CompressionLevel() == dst.CompressionLevel()
	prog := newProgress(opts.Progress)
	prog.phase("copy")
	prog.snapshots(len(snaps))

	c := newCopier(ctx, src, dst, res.ByID, opts, prog)
	copied := map[hash.ID]hash.ID{} // source ID -> destination ID, this run
	for _, sn := range snaps {
		if d, ok := lookupExisting(existing, sn); ok {
			res.Snapshots = append(res.Snapshots, Copied{Source: sn.ID, Destination: d, Skipped: true})
			copied[sn.ID] = d
			prog.snapshotDone()
			continue
		}
		root, err := c.copySnapshot(sn.Tree)
		if err == nil {
			err = c.flush()
		}
		if err != nil {
			c.abort()
			return nil, c.explain(ctx, sn, err)
		}
		rec := *sn.Snapshot
		rec.Tree = root
		rec.Original = originOf(sn)
		rec.Parent = hash.ID{}
		if !sn.Parent.IsNull() {
			if p, ok := copied[sn.Parent]; ok {
				rec.Parent = p
			} else if p, ok := existing[sn.Parent]; ok {
				rec.Parent = p
			}
		}
		id, err := snapshot.Save(ctx, dst, &rec)
		if err != nil {
			c.abort()
			return nil, fmt.Errorf("copy snapshot %s: %w", sn.ID.Short(), err)
		}
		existing[id] = id
		existing[rec.Original] = id
		copied[sn.ID] = id
		res.Snapshots = append(res.Snapshots, Copied{Source: sn.ID, Destination: id})
		prog.snapshotDone()
	}
	c.stop()
	if err := c.w.Finish(context.WithoutCancel(ctx)); err != nil { // nothing left to store: the last snapshot flushed
		return nil, fmt.Errorf("flush the destination: %w", err)
	}
	res.BlobsChecked = uint64(len(c.blobs))
	res.Saved = statsSince(dst.SavedStats(), before)
	if opts.Verify {
		if err := verifyInto(ctx, dst, res, opts.connections(), prog); err != nil {
			return res, err
		}
	}
	return res, nil
}

func lookupExisting(existing map[hash.ID]hash.ID, sn *snapshot.Record) (hash.ID, bool) {
	if d, ok := existing[sn.ID]; ok {
		return d, true
	}
	if !sn.Original.IsNull() {
		if d, ok := existing[sn.Original]; ok {
			return d, true
		}
	}
	return hash.ID{}, false
}

func uniqueByID(in []*snapshot.Record) []*snapshot.Record {
	seen := map[hash.ID]bool{}
	out := make([]*snapshot.Record, 0, len(in))
	for _, s := range in {
		if !seen[s.ID] {
			seen[s.ID] = true
			out = append(out, s)
		}
	}
	return out
}

func statsSince(now, before repo.SaveStats) repo.SaveStats {
	return repo.SaveStats{Blobs: now.Blobs - before.Blobs, RawBytes: now.RawBytes - before.RawBytes,
		StoredBytes: now.StoredBytes - before.StoredBytes, Packs: now.Packs - before.Packs}
}

// copier runs the copy pipeline. For each snapshot a walker goroutine
// visits the source trees depth first (each tree once per run) and hands
// the data blobs of each tree to the workers, then the tree itself, after
// its subtrees, to the finalizer (the caller's goroutine). Workers load a
// blob from the source and save it into the destination (after naming it
// with the destination's key, unless the keys are shared). The finalizer
// waits for a tree's blobs, rewrites the tree with the new IDs (unless the
// keys are shared) and saves it. So every tree is saved after everything
// it refers to, the source is read ahead while the destination is written,
// and memory is bounded by the queues.
type copier struct {
	ctx    context.Context
	cancel context.CancelFunc
	src    *repo.Repository
	dst    *repo.Repository
	w      *repo.Writer // into dst; replaced by flush
	shared bool
	opts   Options
	prog   *progress

	jobs      chan *blobJob
	workers   sync.WaitGroup
	errMu     sync.Mutex
	err       error // first worker error
	stopped   bool
	saveMu    sync.RWMutex // SaveBlob holds it for reading, flush for writing
	lastFlush time.Time

	// walker state; a walker runs only while copySnapshot does
	blobs  map[hash.Ref]*blobJob // by source data blob
	walked map[hash.Ref]bool     // source trees visited
	// finalizer state
	trees map[hash.Ref]hash.Ref // source tree -> destination tree
}

type blobJob struct {
	src  hash.Ref
	dst  hash.Ref // valid after done is closed, if err is nil
	err  error
	done chan struct{}
}

type treeJob struct {
	id   hash.Ref
	raw  []byte
	tree *snapshot.Tree
	deps []*blobJob // the data blobs of the tree's files, in node and content order
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func newCopier(ctx context.Context, src, dst *repo.Repository, shared bool, opts Options, prog *progress) *copier {
	cctx, cancel := context.WithCancel(ctx)
	c := &copier{ctx: cctx, cancel: cancel, src: src, dst: dst, w: dst.StartWriting(), shared: shared, opts: opts, prog: prog,
		jobs: make(chan *blobJob, 2*opts.connections()), lastFlush: time.Now(),
		blobs: map[hash.Ref]*blobJob{}, walked: map[hash.Ref]bool{}, trees: map[hash.Ref]hash.Ref{}}
	if c.opts.FlushInterval <= 0 {
		c.opts.FlushInterval = DefaultFlushInterval
	}
	for range opts.connections() {
		c.workers.Add(1)
		go c.worker()
	}
	return c
}

func (c *copier) fail(err error) {
	c.errMu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.errMu.Unlock()
	c.cancel()
}

func (c *copier) firstErr() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.err
}

func (c *copier) worker() {
	defer c.workers.Done()
	var buf []byte
	for job := range c.jobs {
		if err := c.ctx.Err(); err != nil {
			job.err = err
			close(job.done)
			continue
		}
		id, err := c.copyBlob(job.src, &buf)
		job.dst, job.err = id, err
		close(job.done)
		if err != nil {
			c.fail(err)
		}
	}
}

// copyBlob copies one data blob and returns its ref in the destination
// (the same as in the source when the chunk ID keys are shared: the
// stored bytes then move as they are, since the copied trees name the
// source's IDs, and a blob compressed anew could get another ID: a disk
// image's blobs are compressed at another level than files').
func (c *copier) copyBlob(src hash.Ref, buf *[]byte) (hash.Ref, error) {
	var plain, sealed []byte
	var err error
	if c.shared {
		plain, sealed, err = c.src.LoadBlobSealed(c.ctx, repo.DataBlob, src, *buf)
	} else {
		plain, err = c.src.LoadBlob(c.ctx, repo.DataBlob, src, *buf)
	}
	if err != nil {
		return hash.Ref{}, fmt.Errorf("load from the source: %w", err)
	}
	*buf = plain
	c.prog.read(len(plain))
	id, isNew := src, false
	c.saveMu.RLock()
	if c.shared {
		isNew, err = c.w.SaveRawBlob(c.ctx, repo.DataBlob, src.ID, sealed, len(plain), false)
	} else {
		id, isNew, _, err = c.w.SaveBlob(c.ctx, repo.DataBlob, c.dst.BlobKey(plain), plain)
	}
	c.saveMu.RUnlock()
	if err != nil {
		return hash.Ref{}, fmt.Errorf("save data blob %s into the destination: %w", id.Short(), err)
	}
	c.prog.blobDone()
	if isNew {
		c.prog.blobsSent(1)
		c.prog.sent(len(plain))
	}
	return id, nil
}

// copySnapshot copies the tree root and everything below it and returns
// the root's ID in the destination.
func (c *copier) copySnapshot(root hash.Ref) (hash.Ref, error) {
	if d, ok := c.trees[root]; ok {
		return d, nil
	}
	out := make(chan *treeJob, 64)
	fetch := newTreeFetcher(c.ctx, c.src, c.opts.connections())
	var walkErr error
	walkDone := make(chan struct{})
	go func() {
		defer close(walkDone)
		defer close(out)
		walkErr = c.walk(fetch, root, out)
		if walkErr != nil {
			c.fail(walkErr)
		}
	}()
	err := c.finalize(out)
	if err != nil {
		c.fail(err)
		for range out { // let the walker end
		}
	}
	<-walkDone
	fetch.wait()
	if err == nil {
		err = walkErr
	}
	if err == nil {
		err = c.firstErr()
	}
	if err != nil {
		return hash.Ref{}, err
	}
	d, ok := c.trees[root]
	if !ok {
		return hash.Ref{}, fmt.Errorf("root tree %s was not copied", root.Short())
	}
	return d, nil
}

// walk visits tree id and, depth first, the trees below it that this run
// has not visited yet, sending each tree after its subtrees.
func (c *copier) walk(fetch *treeFetcher, id hash.Ref, out chan<- *treeJob) error {
	c.walked[id] = true
	raw, t, err := fetch.take(id)
	if err != nil {
		if c.ctx.Err() != nil {
			return c.ctx.Err()
		}
		return fmt.Errorf("load tree %s from the source: %w", id.Short(), err)
	}
	for _, n := range t.Nodes {
		if n.Type == snapshot.TypeDir && !n.Subtree.IsNull() && !c.walked[n.Subtree] {
			fetch.prefetch(n.Subtree)
		}
	}
	job := &treeJob{id: id, raw: raw, tree: t}
	for _, n := range t.Nodes {
		for _, b := range n.Content {
			bj, ok := c.blobs[b]
			if !ok {
				bj = &blobJob{src: b}
				c.blobs[b] = bj
				if c.shared && c.dst.HasTrustedBlob(repo.BlobHandle{Type: repo.DataBlob, ID: b.ID}) {
					bj.dst, bj.done = b, closedChan
					c.prog.blobDone()
				} else {
					bj.done = make(chan struct{})
					select {
					case c.jobs <- bj:
					case <-c.ctx.Done():
						return c.ctx.Err()
					}
				}
			}
			job.deps = append(job.deps, bj)
		}
	}
	for _, n := range t.Nodes {
		if n.Type != snapshot.TypeDir || n.Subtree.IsNull() {
			continue
		}
		if c.walked[n.Subtree] {
			fetch.drop(n.Subtree)
			continue
		}
		if err := c.walk(fetch, n.Subtree, out); err != nil {
			return err
		}
	}
	select {
	case out <- job:
		return nil
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
}

// finalize saves the trees from the walker, in the order it sends them.
func (c *copier) finalize(in <-chan *treeJob) error {
	for job := range in {
		for _, d := range job.deps {
			select {
			case <-d.done:
			case <-c.ctx.Done():
				return c.ctx.Err()
			}
			if d.err != nil {
				return d.err
			}
		}
		raw, key := job.raw, job.id.Key
		if !c.shared {
			var err error
			if raw, err = c.rewrite(job); err != nil {
				return err
			}
			key = c.dst.BlobKey(raw)
		}
		c.saveMu.RLock()
		id, isNew, _, err := c.w.SaveBlob(c.ctx, repo.TreeBlob, key, raw)
		c.saveMu.RUnlock()
		if err != nil {
			return fmt.Errorf("save tree %s into the destination: %w", id.Short(), err)
		}
		if isNew {
			c.prog.sent(len(raw))
		}
		c.trees[job.id] = id
		if time.Since(c.lastFlush) >= c.opts.FlushInterval {
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// rewrite encodes a tree with the destination's IDs of its blobs and
// subtrees.
func (c *copier) rewrite(job *treeJob) ([]byte, error) {
	t := &snapshot.Tree{Nodes: make([]*snapshot.Node, len(job.tree.Nodes))}
	k := 0
	for i, n := range job.tree.Nodes {
		m := *n
		if len(n.Content) > 0 {
			m.Content = slices.Clone(n.Content)
			for j := range m.Content {
				m.Content[j] = job.deps[k].dst
				k++
			}
		}
		if n.Type == snapshot.TypeDir && !n.Subtree.IsNull() {
			d, ok := c.trees[n.Subtree]
			if !ok {
				return nil, fmt.Errorf("tree %s: subtree %s was not copied before it", job.id.Short(), n.Subtree.Short())
			}
			m.Subtree = d
		}
		t.Nodes[i] = &m
	}
	raw, err := snapshot.EncodeTree(t)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", job.id.Short(), err)
	}
	return raw, nil
}

// flush makes everything saved so far durable and indexed. A flush that
// has begun is finished even if the copy is interrupted meanwhile (it
// stores at most the open packs and an index file): else the packs it
// stored would be left out of the index, and sent again by the next run.
func (c *copier) flush() error {
	c.saveMu.Lock()
	defer c.saveMu.Unlock()
	c.lastFlush = time.Now()
	if err := c.ctx.Err(); err != nil {
		return err // abort indexes what was stored
	}
	err := c.w.Finish(context.WithoutCancel(c.ctx))
	c.w = c.dst.StartWriting()
	if err != nil {
		return fmt.Errorf("flush the destination: %w", err)
	}
	return nil
}

// stop ends the workers.
func (c *copier) stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	close(c.jobs)
	c.workers.Wait()
	c.cancel()
}

// abort ends the workers after an error or interruption and indexes the
// packs already stored, so that the next run need not send them again.
func (c *copier) abort() {
	c.cancel()
	c.stop()
	_ = c.w.Abort(context.WithoutCancel(c.ctx))
}

// explain wraps the error that stopped the copy of sn.
func (c *copier) explain(ctx context.Context, sn *snapshot.Record, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("copy snapshot %s: %w (what was stored is kept; run the copy again to continue)", sn.ID.Short(), ctx.Err())
	}
	if first := c.firstErr(); first != nil && errors.Is(err, context.Canceled) {
		err = first
	}
	return fmt.Errorf("copy snapshot %s: %w", sn.ID.Short(), err)
}
