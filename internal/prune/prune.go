// Package prune reclaims the space of data that no snapshot needs, by the
// lock-free two-phase garbage collection of docs/FORMAT.md ("Garbage
// collection"): a run first sweeps (deletes) what earlier runs marked, once
// their marks are older than the grace period and if still unneeded, and
// then marks what is unneeded now. Backups may run meanwhile: they do not
// deduplicate against marked packs (repo.Repository.HasBlob), and a backup
// that ran longer than half the grace period re-checks what it relies on
// before it writes its snapshot (repo.Repository.VerifyReferences).
//
// Only one prune, or repair, runs at a time: Run (but a dry run) holds
// the repository's prune lease (repo.Repository.HoldLease) while it works.
package prune

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
	"github.com/floe-backup/floe/internal/walk"
)

// Defaults of the CLI.
const (
	DefaultGrace     = repo.DefaultGCGrace
	DefaultMaxUnused = 0.10
)

// Options tune Run.
type Options struct {
	// Grace is how old a mark must be before its packs are deleted. Zero
	// deletes in the next run whatever this run marks: safe only when no
	// backup runs meanwhile (a backup that started before the mark and
	// writes its snapshot after the next run listed the snapshots loses
	// data that it deduplicated against).
	Grace time.Duration
	// MaxUnused is the share of a pack's bytes that may be unused before
	// the pack is repacked (its used blobs copied into new packs and the
	// pack marked). 0 repacks every pack with any unused byte; 1 or more
	// never repacks.
	MaxUnused float64
	// DryRun computes and reports the plan; nothing is written or deleted.
	DryRun bool
	// Progress, if set, is told what Run does as it works.
	Progress ui.Progress
	// Holder names this prune in its lease (docs/FORMAT.md "Prune
	// leases"); default the host name.
	Holder string
	// LeaseTTL is how long the lease counts without renewal (default
	// repo.DefaultLeaseTTL); it is renewed every third of it while Run works.
	LeaseTTL time.Duration

	// indexEntries is where the sweep splits its index files (default
	// packfile.MaxIndexEntries); tests set it small.
	indexEntries int
}

// Count is a number of packs and their stored bytes.
type Count struct {
	Packs int   `json:"packs"`
	Bytes int64 `json:"bytes"`
}

func (c *Count) add(size int64) {
	c.Packs++
	c.Bytes += size
}

// MarkInfo describes a mark found at the start of a run.
type MarkInfo struct {
	ID    string    `json:"id"`
	Time  time.Time `json:"time"`
	Packs int       `json:"packs"`
	Due   bool      `json:"due"`    // older than the grace period: swept by this run
	DueAt time.Time `json:"due_at"` // when it is older than the grace period
}

// SweepResult is what the sweep phase did (or, in a dry run, would do).
type SweepResult struct {
	Deleted Count `json:"deleted"` // marked packs deleted
	// Rescued are marked packs kept because a snapshot written since the
	// mark needs a blob that no other pack holds.
	Rescued Count `json:"rescued"`
	// Indexed are packs marked while no index file listed them that one
	// lists now (a backup was still writing them): kept.
	Indexed     Count `json:"indexed"`
	AlreadyGone int   `json:"already_gone"` // marked packs no longer in storage
	// IndexWritten is the last index file the sweep wrote (the one that
	// completes it); IndexFilesWritten how many it writes (it splits at
	// packfile.MaxIndexEntries entries).
	IndexWritten      string `json:"index_written,omitempty"`
	IndexFilesWritten int    `json:"index_files_written"`
	IndexFilesRemoved int    `json:"index_files_removed"`
	MarksRemoved      int    `json:"marks_removed"`
	// TempFilesRemoved are temporary files (half-written objects of
	// killed writers) older than the grace period that were deleted.
	TempFilesRemoved Count `json:"temp_files_removed"`
}

// MarkResult is what the mark phase did (or would do).
type MarkResult struct {
	Unused Count `json:"unused"` // packs no snapshot needs
	Repack Count `json:"repack"` // packs whose used blobs were copied before marking
	// RepackLiveBytes is the stored size of the blobs copied out of them.
	RepackLiveBytes int64 `json:"repack_live_bytes"`
	// Unindexed are packs that no index file lists (a backup was killed,
	// or is still uploading).
	Unindexed     Count  `json:"unindexed"`
	AlreadyMarked Count  `json:"already_marked"` // under marks not yet due
	NewPacks      int    `json:"new_packs"`      // written by the repack
	MarkID        string `json:"mark_id,omitempty"`
	// DeleteAfter is when a prune may delete what this run marked.
	DeleteAfter time.Time `json:"delete_after,omitzero"`
}

// Result is what Run did.
type Result struct {
	DryRun       bool        `json:"dry_run"`
	GraceSeconds float64     `json:"grace_seconds"`
	MaxUnused    float64     `json:"max_unused"`
	Snapshots    int         `json:"snapshots"`
	UsedBlobs    int         `json:"used_blobs"`
	Before       Count       `json:"before"` // packs in storage at the start
	Marks        []MarkInfo  `json:"marks"`
	Sweep        SweepResult `json:"sweep"`
	Mark         MarkResult  `json:"mark"`
	Kept         Count       `json:"kept"` // packs of Before that stay, unmarked (not counting new ones)
	// Undecodable are snapshot records that were read but do not decode
	// (damaged, or written by a write-only key that sealed garbage). They
	// reference nothing anyone can read, so prune goes on without them;
	// `floe repair` removes them.
	Undecodable []SkippedSnapshot `json:"undecodable_snapshots,omitempty"`
	Warnings    []string          `json:"warnings,omitempty"`
	// Forged lists index entries whose bytes did not match their IDs
	// (dropped: prune relies only on verified copies).
	Forged       []string      `json:"forged,omitempty"`
	Duration     time.Duration `json:"-"`
	DurationSecs float64       `json:"duration_seconds"`
}

// SkippedSnapshot is a snapshot record prune did not use, and why.
type SkippedSnapshot struct {
	ID    string `json:"id"`
	Error string `json:"error"`
}

// ErrUnsafe is wrapped by Run's error when the repository is in a state
// in which prune could delete data that snapshots need (damaged index
// files or snapshots, blobs missing from the index). Nothing was changed.
var ErrUnsafe = errors.New("prune refuses to run")

// pack is what the run knows of one pack.
type pack struct {
	id      hash.ID
	size    int64
	stored  bool // in storage
	indexed bool // listed by an index file in use
	blobs   []repo.PackedBlob
	// untrusted are the blobs that only unsigned index files (those of
	// write-only keys, or forged) list in this pack: load verifies them
	// by hashing before anything relies on them.
	untrusted map[repo.BlobHandle]bool
}

type pruner struct {
	r    *repo.Repository
	opts Options
	res  *Result

	snapIDs  []hash.ID
	marks    map[hash.ID]*repo.GCMark
	files    map[hash.ID]*repo.IndexFile
	replaced map[hash.ID]bool
	packs    map[hash.ID]*pack
	used     map[repo.BlobHandle]struct{}
	copies   map[repo.BlobHandle][]hash.ID // used blob -> indexed packs that hold it
	// reindex: entries were verified or dropped, so the sweep writes a
	// signed index file even when no mark is due.
	reindex bool
}

// Run prunes r: see the package documentation. It needs a full key.
func Run(ctx context.Context, r *repo.Repository, opts Options) (_ *Result, err error) {
	if r.WriteOnly() {
		return nil, repo.ErrWriteOnly
	}
	start := time.Now()
	if opts.Progress == nil {
		opts.Progress = ui.NoProgress
	}
	var held *repo.HeldLease
	if !opts.DryRun {
		// err is Run's result (not shadowed): Release tells why the
		// prune stopped if its lease could not be renewed
		held, ctx, err = r.HoldLease(ctx, repo.LeaseOptions{Task: repo.LeasePrune, Holder: opts.Holder, TTL: opts.LeaseTTL})
		if err != nil {
			return nil, err
		}
		defer func() { err = held.Release(err) }()
	}
	p := &pruner{r: r, opts: opts, res: &Result{DryRun: opts.DryRun, GraceSeconds: opts.Grace.Seconds(),
		MaxUnused: opts.MaxUnused, Marks: []MarkInfo{}}}
	if held != nil {
		p.res.Warnings = held.TakeOverNotes()
	}
	if err := p.load(ctx); err != nil {
		return nil, err
	}
	if err := p.findUsed(ctx); err != nil {
		return nil, err
	}
	sw := p.planSweep(time.Now())
	if !opts.DryRun {
		if err := p.sweep(ctx, sw); err != nil {
			return p.res, err
		}
	}
	p.applySweep(sw)
	if !opts.DryRun {
		p.removeTempFiles()
	}
	mk := p.planMark(sw)
	if !opts.DryRun {
		if err := p.mark(ctx, mk); err != nil {
			return p.res, err
		}
	}
	p.res.Duration = time.Since(start)
	p.res.DurationSecs = p.res.Duration.Seconds()
	return p.res, nil
}

// removeTempFiles deletes what killed writers left, once older than the
// grace period: a writer still filling a file is younger than that.
func (p *pruner) removeTempFiles() {
	c, ok := storage.As[storage.TempFiles](p.r.Backend())
	if !ok {
		return
	}
	n, size, err := c.RemoveTempFiles(p.opts.Grace)
	p.res.Sweep.TempFilesRemoved = Count{Packs: n, Bytes: size}
	if err != nil {
		p.res.Warnings = append(p.res.Warnings, err.Error())
	}
}

// load lists the snapshots, the packs, the marks and the index. The
// snapshots are listed first: each was written after its blobs were
// indexed, so the index read next lists all of them.
func (p *pruner) load(ctx context.Context) error {
	prog := p.opts.Progress
	prog.Phase("listing snapshots and packs", 0, 0)
	var err error
	if p.snapIDs, err = p.r.ListIDs(ctx, storage.Snapshot); err != nil {
		return err
	}
	sizes, err := p.r.ListPacks(ctx)
	if err != nil {
		return err
	}
	marks, damaged, err := p.r.LoadGCMarks(ctx)
	if err != nil {
		return fmt.Errorf("read gc marks: %w", err)
	}
	for _, e := range damaged {
		p.res.Warnings = append(p.res.Warnings, fmt.Sprintf("%v (ignored: it deletes nothing)", e))
	}
	p.marks = marks

	prog.Phase("loading index files", 0, 0)
	files, errs, err := p.r.LoadIndexFiles(ctx)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s cannot be loaded (%v); the packs listed there would look unused; `floe repair` rebuilds the index from the intact packs", ErrUnsafe, ui.Count(len(errs), "index file"), errors.Join(errs...))
	}
	p.files = files
	// Supersedes counts only in signed index files: otherwise a write-only
	// host could hide every other index file.
	p.replaced = repo.Superseded(files)
	p.packs = map[hash.ID]*pack{}
	// signed files first, so that where an unsigned file disagrees about a
	// blob of a pack, the signed entry is the one kept
	ids := sortedIDs(files)
	sort.SliceStable(ids, func(i, j int) bool { return files[ids[i]].EntriesTrusted() && !files[ids[j]].EntriesTrusted() })
	have := map[hash.ID]map[repo.BlobHandle]bool{}
	for _, id := range ids {
		f := files[id]
		if p.replaced[id] {
			continue
		}
		for _, pi := range f.Packs {
			pk := p.packs[pi.ID]
			if pk == nil {
				pk = &pack{id: pi.ID, indexed: true, untrusted: map[repo.BlobHandle]bool{}}
				p.packs[pi.ID] = pk
				have[pi.ID] = map[repo.BlobHandle]bool{}
			}
			for _, b := range pi.Blobs {
				h := repo.BlobHandle{Type: b.Type, ID: b.ID}
				if have[pi.ID][h] {
					continue
				}
				have[pi.ID][h] = true
				pk.blobs = append(pk.blobs, b)
				if !f.EntriesTrusted() {
					pk.untrusted[h] = true
				}
			}
		}
	}
	for id, size := range sizes {
		pk := p.packs[id]
		if pk == nil {
			pk = &pack{id: id}
			p.packs[id] = pk
		}
		pk.stored, pk.size = true, size
		p.res.Before.add(size)
	}
	if err := p.verifyUntrusted(ctx); err != nil {
		return err
	}
	marked := map[hash.ID]bool{}
	for _, m := range marks {
		for _, id := range m.Packs {
			marked[id] = true
		}
	}
	p.r.UseIndex(files, marked)
	return nil
}

// verifyUntrusted reads every stored pack that has blobs only unsigned
// index files list, and hashes those blobs: an entry whose bytes do not
// match its ID (a forged or damaged copy) is dropped and reported, so
// that prune never keeps such a copy in place of a genuine one, and the
// index file the sweep writes (signed) vouches only for verified entries.
func (p *pruner) verifyUntrusted(ctx context.Context) error {
	var todo []hash.ID
	for _, id := range sortedPacks(p.packs) {
		pk := p.packs[id]
		switch {
		case len(pk.untrusted) == 0:
		case pk.stored:
			todo = append(todo, id)
		default:
			// A missing pack cannot be verified, and its unvouched entries
			// must not reach the signed index: whoever wrote them could
			// upload a pack of that name later, with other bytes at the
			// offsets they name.
			kept := pk.blobs[:0]
			for _, b := range pk.blobs {
				if !pk.untrusted[repo.BlobHandle{Type: b.Type, ID: b.ID}] {
					kept = append(kept, b)
				}
			}
			pk.blobs, pk.untrusted = kept, nil
			pk.indexed = len(kept) > 0
			p.reindex = true
		}
	}
	if len(todo) == 0 {
		return nil
	}
	p.opts.Progress.Phase("verifying packs that only unsigned index files list", int64(len(todo)), 0)
	// In a fleet whose hosts hold write-only keys this is every pack
	// written since the last prune: read them on as many workers as cores
	// (more on slow storage), only the blobs to verify.
	workers := min(len(todo), max(runtime.NumCPU(), storage.Connections(2, p.r.Backend())))
	scanners := make([]*repo.PackScanner, workers)
	for i := range scanners {
		scanners[i] = p.r.NewPackScanner()
	}
	bads := make([]map[repo.PackedBlob]bool, len(todo))
	errs := make([]error, len(todo))
	par.For(ctx, len(todo), workers, func(w, i int) {
		pk := p.packs[todo[i]]
		var check []repo.PackedBlob
		for _, b := range pk.blobs {
			if pk.untrusted[repo.BlobHandle{Type: b.Type, ID: b.ID}] {
				check = append(check, b)
			}
		}
		bad := map[repo.PackedBlob]bool{}
		errs[i] = scanners[w].Blobs(ctx, todo[i], check, func(b repo.PackedBlob, _ []byte, err error) error {
			if err != nil {
				bad[b] = true // forged, damaged or past the end of the pack
			}
			return nil
		})
		bads[i] = bad
		p.opts.Progress.Done(1, 0)
	})
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, id := range todo {
		if errs[i] != nil {
			return fmt.Errorf("%w: pack %s, which only unsigned index files list, cannot be read to verify it: %w", ErrUnsafe, id.Short(), errs[i])
		}
		pk := p.packs[id]
		kept := pk.blobs[:0]
		dropped := 0
		for _, b := range pk.blobs {
			h := repo.BlobHandle{Type: b.Type, ID: b.ID}
			if pk.untrusted[h] {
				if bads[i][b] {
					dropped++
					p.res.Forged = append(p.res.Forged, fmt.Sprintf("%s blob %s in pack %s", b.Type, b.ID.Short(), id.Short()))
					continue
				}
				delete(pk.untrusted, h)
			}
			kept = append(kept, b)
		}
		pk.blobs = kept
		p.reindex = true
		if dropped > 0 {
			p.res.Warnings = append(p.res.Warnings, fmt.Sprintf("pack %s: %s (forged or damaged); the entries are dropped", id.Short(),
				ui.Count(dropped, "blob that only unsigned index files list does not match its ID", "blobs that only unsigned index files list do not match their IDs")))
		}
	}
	return nil
}

// findUsed loads the snapshots and walks every tree once: the blobs they
// reference are used.
func (p *pruner) findUsed(ctx context.Context) error {
	prog := p.opts.Progress
	prog.Phase("loading snapshots", int64(len(p.snapIDs)), 0)
	recs := make([]*snapshot.Record, len(p.snapIDs))
	errs := make([]error, len(p.snapIDs))
	par.For(ctx, len(p.snapIDs), 8, func(_, i int) {
		recs[i], errs[i] = snapshot.Load(ctx, p.r, p.snapIDs[i])
		prog.Done(1, 0)
	})
	if err := ctx.Err(); err != nil {
		return err
	}
	var roots []hash.Ref
	for i, rec := range recs {
		switch {
		case errs[i] == nil:
			roots = append(roots, rec.Tree)
			p.res.Snapshots++
		case storage.IsNotExist(errs[i]): // forgotten meanwhile
		case errors.Is(errs[i], repo.ErrDamagedSnapshot):
			p.res.Undecodable = append(p.res.Undecodable, SkippedSnapshot{ID: p.snapIDs[i].String(), Error: errs[i].Error()})
		default:
			if errors.Is(errs[i], storage.ErrDenied) {
				return errs[i] // the credential may not read snapshots
			}
			return fmt.Errorf("%w: %v; its data would look unused", ErrUnsafe, errs[i])
		}
	}

	prog.Phase("reading trees", 0, 0)
	used := map[repo.BlobHandle]struct{}{}
	// Read ahead by stretches of the tree packs: one request per tree
	// was most of a prune's reads through a server or S3.
	err := walk.EachTree(ctx, snapshot.NewReadAheadTrees(p.r), roots, 8, func(ref hash.Ref, t *snapshot.Tree, err error) error {
		if err != nil {
			return fmt.Errorf("%w: tree %s cannot be read: %v", ErrUnsafe, ref.Short(), err)
		}
		used[repo.BlobHandle{Type: repo.TreeBlob, ID: ref.ID}] = struct{}{}
		for _, node := range t.Nodes {
			for _, c := range node.Content {
				used[repo.BlobHandle{Type: repo.DataBlob, ID: c.ID}] = struct{}{}
			}
		}
		prog.Done(1, 0)
		return nil
	})
	if err != nil {
		return err
	}
	p.used = used
	p.res.UsedBlobs = len(used)

	p.copies = map[repo.BlobHandle][]hash.ID{}
	for _, id := range sortedPacks(p.packs) {
		pk := p.packs[id]
		if !pk.indexed {
			continue
		}
		for _, b := range pk.blobs {
			h := repo.BlobHandle{Type: b.Type, ID: b.ID}
			if _, ok := used[h]; ok {
				p.copies[h] = append(p.copies[h], id)
			}
		}
	}
	if missing := len(used) - len(p.copies); missing > 0 {
		return fmt.Errorf("%w: no index file lists %s that snapshots need, or only forged or damaged copies of them", ErrUnsafe, ui.Count(missing, "blob"))
	}
	return nil
}

// sweepPlan is what the sweep phase does.
type sweepPlan struct {
	due, notDue  map[hash.ID]bool // marks
	notDueMarked map[hash.ID]bool // packs named by marks not yet due
	delete       map[hash.ID]bool
	gone         map[hash.ID]bool // marked, no longer in storage
	// index is the new index, split into files to write first, in
	// order (repo.SplitIndexFile); nil: none needed
	index []*repo.IndexFile
	// supersede are the index files the new ones replace, deleted last
	supersede []hash.ID
}

func (p *pruner) planSweep(now time.Time) *sweepPlan {
	s := &sweepPlan{due: map[hash.ID]bool{}, notDue: map[hash.ID]bool{}, notDueMarked: map[hash.ID]bool{},
		delete: map[hash.ID]bool{}, gone: map[hash.ID]bool{}}
	cutoff := now.Add(-p.opts.Grace)
	for _, id := range sortedIDs(p.marks) {
		m := p.marks[id]
		due := !m.Time.After(cutoff)
		p.res.Marks = append(p.res.Marks, MarkInfo{ID: id.String(), Time: m.Time, Packs: len(m.Packs), Due: due,
			DueAt: m.Time.Add(p.opts.Grace)})
		if due {
			s.due[id] = true
		} else {
			s.notDue[id] = true
			for _, pk := range m.Packs {
				s.notDueMarked[pk] = true
			}
		}
	}
	if len(s.due) == 0 && !p.reindex {
		return s
	}
	cand := map[hash.ID]bool{}
	unindexedAtMark := map[hash.ID]bool{}
	var supersede []hash.ID
	for id := range s.due {
		m := p.marks[id]
		for _, pk := range m.Packs {
			cand[pk] = true
		}
		for _, pk := range m.Unindexed {
			unindexedAtMark[pk] = true
		}
		supersede = append(supersede, m.SupersedeIndex...)
	}
	res := &p.res.Sweep
	for _, id := range sortedSet(cand) {
		pk := p.packs[id]
		switch {
		case s.notDueMarked[id]:
			// a younger mark names it too: that mark decides
		case pk == nil || !pk.stored:
			s.gone[id] = true
			res.AlreadyGone++
		case !pk.indexed:
			// No index file lists it (a killed backup's upload, or a
			// pack this sweep dropped from the index before it was
			// killed): nothing can refer to it.
			s.delete[id] = true
		case unindexedAtMark[id]:
			// A backup indexed it after the mark: not garbage after all;
			// the mark phase looks at it again.
			res.Indexed.add(pk.size)
		default:
			s.delete[id] = true
		}
	}
	// A used blob needs a copy that stays: keep a marked pack that holds
	// a blob whose every other copy is going too.
	survives := func(q hash.ID) bool {
		pk := p.packs[q]
		return pk.stored && pk.indexed && !s.delete[q]
	}
	for _, id := range sortedSet(s.delete) {
		pk := p.packs[id]
		if !pk.indexed {
			continue
		}
		for _, b := range pk.blobs {
			h := repo.BlobHandle{Type: b.Type, ID: b.ID}
			if _, ok := p.used[h]; !ok {
				continue
			}
			safe := false
			for _, q := range p.copies[h] {
				if survives(q) {
					safe = true
					break
				}
			}
			if !safe {
				delete(s.delete, id)
				res.Rescued.add(pk.size)
				break
			}
		}
	}
	for id := range s.delete {
		res.Deleted.add(p.packs[id].size)
	}
	res.MarksRemoved = len(s.due)

	// The new index file is needed when an indexed pack goes, or to clean
	// up index files that are superseded already.
	need := len(supersede) > 0 || p.reindex
	for id := range s.delete {
		need = need || p.packs[id].indexed
	}
	for id := range s.gone {
		need = need || (p.packs[id] != nil && p.packs[id].indexed)
	}
	for id := range p.files {
		need = need || p.replaced[id]
	}
	if !need {
		return s
	}
	f := &repo.IndexFile{Packs: []repo.PackInfo{}}
	seen := map[hash.ID]bool{}
	for _, id := range sortedIDs(p.files) {
		f.Supersedes = append(f.Supersedes, id)
		seen[id] = true
	}
	for _, id := range supersede {
		if !seen[id] {
			seen[id] = true
			f.Supersedes = append(f.Supersedes, id)
		}
	}
	for _, id := range sortedPacks(p.packs) {
		pk := p.packs[id]
		if pk.indexed && !s.delete[id] && !s.gone[id] {
			f.Packs = append(f.Packs, repo.PackInfo{ID: id, Blobs: pk.blobs})
		}
	}
	split := p.opts.indexEntries
	if split == 0 {
		split = packfile.MaxIndexEntries
	}
	// A new file can have the content, and so the name, of an old one
	// (one that lists exactly one part's packs): the old file is then
	// kept, not superseded (a file superseding its own name would hide
	// itself). Dropping it from Supersedes changes the last files, so
	// split again until no part is an old file.
	for {
		s.index = repo.SplitIndexFile(f, split)
		same := map[hash.ID]bool{}
		for _, part := range s.index {
			if id, err := p.r.IndexFileID(part); err == nil && seen[id] {
				same[id] = true
			}
		}
		if len(same) == 0 {
			break
		}
		kept := f.Supersedes[:0:0]
		for _, id := range f.Supersedes {
			if !same[id] {
				kept = append(kept, id)
			}
		}
		f.Supersedes = kept
		for id := range same {
			seen[id] = false
		}
	}
	s.supersede = f.Supersedes
	res.IndexFilesRemoved = len(f.Supersedes)
	res.IndexFilesWritten = len(s.index)
	return s
}

// sweep carries out the sweep plan in the order that keeps a repository
// consistent at every instant: the new index files first, one after the
// other in the split's order (the files that supersede come last, after
// every pack is listed again: a sweep killed between two of them leaves
// the old files in force and packs listed twice, which the next run
// cleans up), then the packs (about to go, they are then in no index file
// in use), the index files the new ones supersede, and the marks last (a
// killed sweep is finished by the next).
func (p *pruner) sweep(ctx context.Context, s *sweepPlan) error {
	res := &p.res.Sweep
	written := map[hash.ID]bool{}
	if s.index != nil {
		p.opts.Progress.Phase("writing the index", int64(len(s.index)), 0)
		for _, f := range s.index {
			id, err := p.r.SaveIndexFile(ctx, f)
			if err != nil {
				return err
			}
			written[id] = true
			res.IndexWritten = id.String()
			p.opts.Progress.Done(1, 0)
		}
	}
	p.opts.Progress.Phase("deleting packs", int64(len(s.delete)), 0)
	// Several at once: on an object store or a floe server each removal
	// is a round trip. Their order does not matter (none is in an index
	// file in use any more); what follows waits for all of them.
	del := sortedSet(s.delete)
	errs := make([]error, len(del))
	par.For(ctx, len(del), storage.Connections(4, p.r.Backend()), func(_, i int) {
		errs[i] = p.r.RemovePack(ctx, del[i])
		p.opts.Progress.Done(1, 0)
	})
	for _, err := range errs {
		if err != nil {
			return err // the first; the others are likely the same
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.index != nil {
		p.opts.Progress.Phase("deleting index files", int64(len(s.supersede)), 0)
		for _, id := range s.supersede {
			if written[id] {
				continue // the same content as a file just written
			}
			if err := p.r.RemoveIndexFile(ctx, id); err != nil {
				return err
			}
			p.opts.Progress.Done(1, 0)
		}
	}
	for _, id := range sortedSet(s.due) {
		if err := p.r.RemoveGCMark(ctx, id); err != nil && !storage.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// applySweep updates what the run knows as if the sweep had happened (it
// did, unless this is a dry run).
func (p *pruner) applySweep(s *sweepPlan) {
	for id := range s.delete {
		p.packs[id].stored = false
		p.packs[id].indexed = false
	}
	for id := range s.gone {
		if pk := p.packs[id]; pk != nil {
			pk.indexed = false
		}
	}
}

// markPlan is what the mark phase does.
type markPlan struct {
	unused, repack, unindexed []hash.ID
	copy                      map[hash.ID][]repo.PackedBlob // of repacked packs
}

func (p *pruner) planMark(s *sweepPlan) *markPlan {
	m := &markPlan{copy: map[hash.ID][]repo.PackedBlob{}}
	res := &p.res.Mark
	live := func(q hash.ID) bool {
		pk := p.packs[q]
		return pk.stored && pk.indexed
	}
	// Each used blob is kept in one pack: preferably one not marked, then
	// the one with the most used bytes (so that full packs stay as they
	// are), then the lowest ID.
	usedBytes := map[hash.ID]int64{}
	for id, pk := range p.packs {
		if !live(id) {
			continue
		}
		for _, b := range pk.blobs {
			if _, ok := p.used[repo.BlobHandle{Type: b.Type, ID: b.ID}]; ok {
				usedBytes[id] += int64(b.Length)
			}
		}
	}
	keeper := make(map[repo.BlobHandle]hash.ID, len(p.copies))
	for h, qs := range p.copies {
		var best hash.ID
		found := false
		better := func(q hash.ID) bool {
			if !found {
				return true
			}
			if s.notDueMarked[q] != s.notDueMarked[best] {
				return !s.notDueMarked[q]
			}
			if usedBytes[q] != usedBytes[best] {
				return usedBytes[q] > usedBytes[best]
			}
			return string(q[:]) < string(best[:])
		}
		for _, q := range qs {
			if live(q) && better(q) {
				best, found = q, true
			}
		}
		if found {
			keeper[h] = best
		}
	}
	for _, id := range sortedPacks(p.packs) {
		pk := p.packs[id]
		if !pk.stored {
			continue
		}
		if s.notDueMarked[id] {
			res.AlreadyMarked.add(pk.size)
			continue
		}
		if !pk.indexed {
			m.unindexed = append(m.unindexed, id)
			res.Unindexed.add(pk.size)
			continue
		}
		var kept []repo.PackedBlob
		var keptLen []repo.PackedBlob
		var off, liveBytes int64
		seen := map[repo.BlobHandle]bool{}
		for _, b := range pk.blobs {
			h := repo.BlobHandle{Type: b.Type, ID: b.ID}
			if keeper[h] != id || seen[h] {
				continue
			}
			seen[h] = true
			kept = append(kept, b)
			keptLen = append(keptLen, repo.PackedBlob{Type: b.Type, ID: b.ID, Offset: uint32(off), Length: b.Length})
			off += int64(b.Length)
			liveBytes += int64(b.Length)
		}
		if len(kept) == 0 {
			m.unused = append(m.unused, id)
			res.Unused.add(pk.size)
			continue
		}
		// unused: what a pack of only the kept blobs would not hold
		waste := pk.size - repo.PackSizeFor(keptLen)
		if waste > 0 && float64(waste) > p.opts.MaxUnused*float64(pk.size) {
			m.repack = append(m.repack, id)
			m.copy[id] = kept
			res.Repack.add(pk.size)
			res.RepackLiveBytes += liveBytes
			continue
		}
		p.res.Kept.add(pk.size)
	}
	return m
}

// mark copies the used blobs of the packs to repack into new packs (which
// the Writer's Finish indexes), then writes one mark for the unused, repacked and
// unindexed packs.
func (p *pruner) mark(ctx context.Context, m *markPlan) error {
	res := &p.res.Mark
	if len(m.repack) > 0 {
		p.opts.Progress.Phase("repacking", 0, res.RepackLiveBytes)
		w := p.r.StartWriting()
		err := p.repack(ctx, w, m)
		if ferr := w.Finish(ctx); err == nil {
			err = ferr
		}
		res.NewPacks = int(w.Stats().Packs)
		if err != nil {
			return fmt.Errorf("repack: %w", err)
		}
	}
	all := append(append(append([]hash.ID(nil), m.unused...), m.repack...), m.unindexed...)
	if len(all) == 0 {
		return nil
	}
	sortIDs(all)
	p.opts.Progress.Phase("marking", 0, 0)
	mk := &repo.GCMark{Time: time.Now().UTC(), Packs: all, Unindexed: m.unindexed}
	id, err := p.r.SaveGCMark(ctx, mk)
	if err != nil {
		return err
	}
	res.MarkID = id.String()
	res.DeleteAfter = mk.Time.Add(p.opts.Grace)
	return nil
}

// repack copies the live blobs of the packs to repack into w, reading
// each pack once in large ranges (repo.PackScanner: a read per blob cost
// an open, a stat and a fresh buffer each) on as many workers as there
// are CPUs, and hashing each blob once: the stored bytes move as they
// are, since a blob's bytes are the same in every pack, and a copy whose
// bytes do not match its ID stops the repack.
func (p *pruner) repack(ctx context.Context, w *repo.Writer, m *markPlan) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers := min(len(m.repack), max(1, runtime.NumCPU()))
	errs := make([]error, len(m.repack))
	scanners := make([]*repo.PackScanner, workers)
	for i := range scanners {
		scanners[i] = p.r.NewPackScanner()
	}
	par.For(ctx, len(m.repack), workers, func(wk, i int) {
		id := m.repack[i]
		errs[i] = scanners[wk].Blobs(ctx, id, m.copy[id], func(b repo.PackedBlob, sealed []byte, err error) error {
			if err != nil {
				return err
			}
			if err := w.SaveScannedBlob(ctx, b, sealed); err != nil {
				return err
			}
			p.opts.Progress.Done(0, int64(b.Length))
			return nil
		})
		if errs[i] != nil {
			cancel()
		}
	})
	for i, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("pack %s: %w", m.repack[i].Short(), err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err // canceled from outside: every error says only that
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func sortIDs(ids []hash.ID) {
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
}

func sortedSet(m map[hash.ID]bool) []hash.ID {
	ids := make([]hash.ID, 0, len(m))
	for id, ok := range m {
		if ok {
			ids = append(ids, id)
		}
	}
	sortIDs(ids)
	return ids
}

func sortedIDs[V any](m map[hash.ID]V) []hash.ID {
	ids := make([]hash.ID, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sortIDs(ids)
	return ids
}

func sortedPacks(m map[hash.ID]*pack) []hash.ID { return sortedIDs(m) }
