package check

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// Options select what Run checks.
type Options struct {
	// ReadData reads every pack in full: every blob must match its ID and
	// every data blob a tree refers to must decrypt, decompress and match
	// the ref; a pack with a problem must also hash to its name (readPack).
	ReadData bool
	// Subset, if set, limits ReadData to some packs (and implies ReadData).
	Subset *Subset
	// Workers is how many packs are checked at once (default 4; 2 to 4
	// when reading data, by the number of CPUs).
	Workers int
	// Progress, if set, is told what Run does as it works.
	Progress ui.Progress
}

// Run checks the repository r (opened, index not needed: Run loads it
// itself). report, if not nil, is called with each problem as it is found,
// from one goroutine at a time; the problem's Affected list is filled in
// later, before Run returns. Run returns an error only when the check
// itself cannot go on (storage cannot be listed, ctx canceled); damage is
// reported as problems, never as an error or a panic.
func Run(ctx context.Context, r *repo.Repository, opts Options, report func(*Problem)) (*Result, error) {
	start := time.Now()
	if opts.Subset != nil {
		opts.ReadData = true
	}
	if opts.Progress == nil {
		opts.Progress = ui.NoProgress
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
		if opts.ReadData {
			opts.Workers = min(4, max(2, runtime.NumCPU()))
		}
	}
	c := &checker{
		r: r, be: r.Backend(), opts: opts, reportFn: report, res: &Result{},
		packStates: map[hash.ID]*packState{},
		altCopies:  map[repo.BlobHandle][]hash.ID{},
		orphans:    map[repo.BlobHandle]hash.ID{},
		trees:      map[hash.ID][]damage{},
		treeLoader: snapshot.NewReadAheadTrees(r),
		walking:    map[hash.ID]bool{},
	}
	c.res.Summary.ReadData = opts.ReadData
	if opts.Subset != nil {
		c.res.Summary.Subset = opts.Subset.String()
	}
	steps := []func(context.Context) error{
		c.checkKeys,
		c.checkLeftovers,
		c.loadIndex,
		c.loadSnapshots,
		c.collectRefs,
		c.checkPacks,
		c.walkSnapshots,
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	c.finish()
	c.res.Summary.DurationSeconds = time.Since(start).Seconds()
	return c.res, nil
}

type checker struct {
	r  *repo.Repository
	be storage.Backend
	// treeLoader loads the trees walkSnapshots walks, read ahead by
	// stretches of their packs (one request per tree was most of a
	// check through a server or S3), verified as snapshot.LoadTree
	// verifies them, with its errors.
	treeLoader snapshot.TreeLoader
	opts       Options
	reportFn   func(*Problem)
	mu         sync.Mutex // guards res.Problems and reportFn calls
	res        *Result

	packSizes     map[hash.ID]int64 // packs in storage
	indexFiles    map[hash.ID]*repo.IndexFile
	indexDamaged  int
	packRefs      map[hash.ID][]packRef         // from the index files in use
	packStates    map[hash.ID]*packState        // only packs with problems
	altCopies     map[repo.BlobHandle][]hash.ID // packs holding a blob beside the one the index serves
	orphans       map[repo.BlobHandle]hash.ID   // blobs that only unreferenced packs hold
	missingProb   *Problem                      // blobs that snapshots need and no index lists
	missingCount  map[repo.BlobType]int         // of missingProb
	missingSeen   map[repo.BlobHandle]bool      // of missingProb
	snapshots     []*snapshot.Record            // loaded, oldest first
	damagedSnaps  map[hash.ID]bool              // snapshot records that do not load
	trees         map[hash.ID][]damage          // walked trees: what is damaged below them
	walking       map[hash.ID]bool              // trees on the current walk path (cycles)
	treeProblems  map[hash.ID]*Problem          // by tree ID
	missingOrphan int                           // missing blobs found in unreferenced packs
	// refs are, with --read-data, the refs the trees hold for each data
	// blob (usually one; a hostile tree may name another key or size), so
	// that reading a pack also decrypts what it holds; refBad says which
	// of them the blob's plaintext does not match.
	refs   map[repo.BlobHandle][]blobRef
	refBad map[blobRef]string
}

// blobRef is a tree's reference to a data blob and the size it says.
type blobRef struct {
	ref  hash.Ref
	size uint32
}

// packRef is one index file's entry for a pack.
type packRef struct {
	index  hash.ID
	signed bool // the index file carries a valid authority signature
	info   *repo.PackInfo
}

// add records and reports a problem.
func (c *checker) add(p *Problem) *Problem {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.res.Problems = append(c.res.Problems, p)
	if c.reportFn != nil {
		c.reportFn(p)
	}
	return p
}

func (c *checker) problem(sev Severity, kind, object, format string, args ...any) *Problem {
	return c.add(&Problem{Severity: sev, Kind: kind, Object: object, Message: fmt.Sprintf(format, args...)})
}

// checkKeys reads the config again (repo.Open verified it, but that may
// have been a while ago) and loads every key record.
func (c *checker) checkKeys(ctx context.Context) error {
	c.opts.Progress.Phase("checking config and keys", 0, 0)
	if err := c.r.CheckConfig(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.problem(Error, KindConfig, "config", "%v", err)
	}
	ids, damaged, err := repo.CheckKeyRecords(ctx, c.be)
	if err != nil {
		return err
	}
	c.res.Summary.Keys = len(ids)
	for _, id := range ids {
		if err, ok := damaged[id]; ok {
			c.problem(Error, KindKey, "keys/"+id, "%v; this key can no longer open the repository (other keys still can)", err)
		}
	}
	return nil
}

func (c *checker) checkLeftovers(ctx context.Context) error {
	ll, ok := storage.As[storage.TempFiles](c.be)
	if !ok {
		return nil
	}
	paths, err := ll.LeftoverTempFiles()
	for _, p := range paths {
		c.problem(Warning, KindLeftover, p, "leftover temporary file %s (left by a crashed or killed save; safe to delete)", p)
	}
	if err != nil {
		c.problem(Warning, KindIncomplete, "", "could not look for leftover temporary files: %v", err)
	}
	return nil
}

// loadIndex lists the packs, loads every index file (reporting damaged
// ones by name), and makes the good ones the repository's index.
func (c *checker) loadIndex(ctx context.Context) error {
	c.packSizes = map[hash.ID]int64{}
	err := c.be.List(ctx, storage.Pack, func(fi storage.FileInfo) error {
		id, err := hash.Parse(fi.Name)
		if err == nil {
			c.packSizes[id] = fi.Size
			c.res.Summary.PackBytes += fi.Size
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list packs: %w", err)
	}
	c.res.Summary.Packs = len(c.packSizes)

	ids, err := c.r.ListIDs(ctx, storage.Index)
	if err != nil {
		return err
	}
	c.res.Summary.IndexFiles = len(ids)
	c.opts.Progress.Phase("loading index files", int64(len(ids)), 0)
	files := make([]*repo.IndexFile, len(ids))
	errs := make([]error, len(ids))
	par.For(ctx, len(ids), 4, func(_, i int) {
		files[i], errs[i] = c.r.LoadIndexFile(ctx, ids[i])
		c.opts.Progress.Done(1, 0)
	})
	if err := ctx.Err(); err != nil {
		return err
	}
	c.indexFiles = map[hash.ID]*repo.IndexFile{}
	for i, id := range ids {
		if errs[i] != nil {
			c.indexDamaged++
			if errors.Is(errs[i], repo.ErrDamagedIndex) || errors.Is(errs[i], storage.ErrTooLarge) {
				c.problem(Error, KindIndex, "index/"+id.String(), "%v; do not prune: `floe repair` rebuilds the index from the intact packs", errs[i])
				continue
			}
			c.problem(Error, KindIndex, "index/"+id.String(), "%v", errs[i])
			continue
		}
		c.indexFiles[id] = files[i]
	}
	c.r.UseIndexFiles(c.indexFiles)
	idx := c.r.Index()
	c.res.Summary.Blobs = idx.Len()

	replaced := repo.Superseded(c.indexFiles)
	c.packRefs = map[hash.ID][]packRef{}
	for id, f := range c.indexFiles {
		if replaced[id] {
			continue
		}
		for i := range f.Packs {
			p := &f.Packs[i]
			c.packRefs[p.ID] = append(c.packRefs[p.ID], packRef{index: id, signed: f.Trusted, info: p})
			for _, b := range p.Blobs {
				h := repo.BlobHandle{Type: b.Type, ID: b.ID}
				if loc, ok := idx.Lookup(h); ok && loc.Pack != p.ID && !slices.Contains(c.altCopies[h], p.ID) {
					c.altCopies[h] = append(c.altCopies[h], p.ID)
				}
			}
		}
	}
	return c.checkMarks(ctx)
}

// checkMarks reports gc marks that prune and backups ignore: those not
// signed by a full key (made by a write-only key or by whoever can write
// to the storage) and damaged ones.
func (c *checker) checkMarks(ctx context.Context) error {
	_, damaged, err := c.r.LoadGCMarks(ctx)
	if err != nil {
		c.problem(Warning, KindIncomplete, "", "could not read the gc marks: %v", err)
		return nil
	}
	for _, e := range damaged {
		c.problem(Warning, KindGCMark, "gc", "%v; prune and backups ignore it (it deletes nothing); remove it once you know where it came from", e)
	}
	return nil
}

// loadSnapshots loads every snapshot record.
func (c *checker) loadSnapshots(ctx context.Context) error {
	c.damagedSnaps = map[hash.ID]bool{}
	if c.r.WriteOnly() {
		c.problem(Warning, KindIncomplete, "", "the key in use is write-only: snapshots, trees and blob contents were not checked (use a full key)")
		return nil
	}
	ids, err := c.r.ListIDs(ctx, storage.Snapshot)
	if err != nil {
		return err
	}
	c.res.Summary.Snapshots = len(ids)
	c.opts.Progress.Phase("loading snapshots", int64(len(ids)), 0)
	recs := make([]*snapshot.Record, len(ids))
	errs := make([]error, len(ids))
	par.For(ctx, len(ids), 8, func(_, i int) {
		recs[i], errs[i] = snapshot.Load(ctx, c.r, ids[i])
		c.opts.Progress.Done(1, 0)
	})
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, id := range ids {
		if errors.Is(errs[i], storage.ErrDenied) {
			return errs[i] // the credential may not read snapshots: nothing to check
		}
		if errs[i] != nil {
			c.damagedSnaps[id] = true
			c.problem(Error, KindSnapshot, "snapshots/"+id.String(), "%v; this snapshot cannot be restored", errs[i])
			continue
		}
		c.snapshots = append(c.snapshots, recs[i])
	}
	snapshot.SortByTime(c.snapshots)
	return c.checkFuture(ctx)
}

func aheadString(d time.Duration) string {
	if d > 48*time.Hour {
		return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
	}
	return d.Round(time.Second).String()
}

// checkFuture reports snapshots dated in the future: more than
// snapshot.FutureSkew after they arrived at the storage (a floe server
// records arrivals), or after now. A wrong clock, or a host writing
// snapshots that claim to be newer than they are, so that forget keeps
// them instead of real ones (forget on a server counts from the arrival).
func (c *checker) checkFuture(ctx context.Context) error {
	origins, _, err := snapshot.Origins(ctx, c.r)
	if err != nil {
		if errors.Is(err, storage.ErrDenied) {
			return err
		}
		c.problem(Warning, KindIncomplete, "", "%v: snapshot times were checked against now only", err)
	}
	now := time.Now()
	for _, sn := range c.snapshots {
		if og, ok := origins[sn.ID]; ok {
			if ahead := sn.Time.Sub(og.Received); ahead > snapshot.FutureSkew {
				c.problem(Warning, KindFuture, "snapshots/"+sn.ID.String(), "snapshot %s of host %s is dated %s, %s after the server received it (%s, from %s): a wrong clock, or a forged time; forget counts it from its arrival",
					sn.ID.Short(), sn.Hostname, sn.Time.UTC().Format(time.RFC3339), aheadString(ahead), og.Received.UTC().Format(time.RFC3339), og.Host)
			}
			continue
		}
		if ahead := sn.Time.Sub(now); ahead > snapshot.FutureSkew {
			c.problem(Warning, KindFuture, "snapshots/"+sn.ID.String(), "snapshot %s of host %s is dated %s, %s in the future: a wrong clock, or a forged time",
				sn.ID.Short(), sn.Hostname, sn.Time.UTC().Format(time.RFC3339), aheadString(ahead))
		}
	}
	return nil
}

// finish reports the blobs missing from the index and fills in the summary.
func (c *checker) finish() {
	if c.missingProb != nil {
		var parts []string
		for _, t := range []repo.BlobType{repo.DataBlob, repo.TreeBlob} {
			if n := c.missingCount[t]; n > 0 {
				parts = append(parts, ui.Count(n, fmt.Sprintf("%s blob", t)))
			}
		}
		total := c.missingCount[repo.DataBlob] + c.missingCount[repo.TreeBlob]
		msg := strings.Join(parts, " and ") + " that snapshots need " + isAre(total) + " in no index file"
		switch {
		case c.missingOrphan == 1 && total == 1:
			msg += "; it is still in an unreferenced pack (its index file is damaged or lost): do not prune; `floe repair` rebuilds the index from the intact packs"
		case c.missingOrphan == total:
			msg += "; all are still in unreferenced packs (their index file is damaged or lost): do not prune; `floe repair` rebuilds the index from the intact packs"
		case c.missingOrphan > 0:
			msg += fmt.Sprintf("; %d of them %s still in unreferenced packs (their index file is damaged or lost): do not prune; `floe repair` rebuilds the index from the intact packs", c.missingOrphan, isAre(c.missingOrphan))
		case c.indexDamaged > 0:
			msg += "; a damaged index file may have listed them"
		}
		c.missingProb.Message = msg
		c.add(c.missingProb)
	}
	s := &c.res.Summary
	for _, p := range c.res.Problems {
		if p.Severity == Error {
			s.Errors++
		} else {
			s.Warnings++
		}
	}
	damaged := map[hash.ID]bool{}
	for id := range c.damagedSnaps {
		damaged[id] = true
	}
	for _, a := range c.res.Affected {
		damaged[a.Snapshot] = true
	}
	// oldest first: loaded snapshots by time, then lost ones by ID
	s.DamagedSnapshots = []string{}
	for _, sn := range c.snapshots {
		if damaged[sn.ID] {
			s.DamagedSnapshots = append(s.DamagedSnapshots, sn.ID.String())
		}
	}
	var lost []string
	for id := range c.damagedSnaps {
		lost = append(lost, id.String())
	}
	sort.Strings(lost)
	s.DamagedSnapshots = append(s.DamagedSnapshots, lost...)
	s.AffectedPaths = len(c.res.Affected)
}

func isAre(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}
