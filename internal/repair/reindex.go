package repair

// Rebuilding index entries from the packs. An index file that cannot be
// loaded (bit rot, a truncated upload, a disk error), one deleted by
// mistake, or a backup killed between uploading packs and writing their
// index file leaves packs that no readable index file lists, while every
// byte of them is still there: a pack header is plaintext and names the
// type, ID and length of each blob (docs/FORMAT.md "Packs"). repair reads
// each such pack whole, once (repo.PackScanner, as check --read-data
// does), hashes every blob against its ID and the pack against its name,
// and lists the packs that verify in new index files signed by the
// authority. Only then does it remove the damaged index files: killed at
// any moment, it leaves the damaged files in force and some packs listed
// twice, and the next repair finishes.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// verifiedPack is a pack Find read and found intact: Apply lists these
// blobs without reading the pack again (it is immutable, named by its
// hash; readers hash every blob they read anyway).
type verifiedPack struct {
	size  int64
	blobs []repo.PackedBlob
}

// indexState is what the index files in storage say: the files that
// load, those that are damaged (the reason), and the packs that the files
// in use (loaded, not superseded) list.
type indexState struct {
	files   map[hash.ID]*repo.IndexFile
	damaged map[hash.ID]error
	listed  map[hash.ID]bool
}

// loadIndexState loads every index file. A file whose bytes were read and
// found bad is damaged; a file that vanished meanwhile (a prune superseded
// it) is skipped; any other error stops the repair, which never removes
// what it could not look at.
func loadIndexState(ctx context.Context, r *repo.Repository) (*indexState, error) {
	ids, err := r.ListIDs(ctx, storage.Index)
	if err != nil {
		return nil, err
	}
	files := make([]*repo.IndexFile, len(ids))
	errs := make([]error, len(ids))
	par.For(ctx, len(ids), 4, func(_, i int) {
		files[i], errs[i] = r.LoadIndexFile(ctx, ids[i])
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st := &indexState{files: map[hash.ID]*repo.IndexFile{}, damaged: map[hash.ID]error{}, listed: map[hash.ID]bool{}}
	for i, id := range ids {
		switch err := errs[i]; {
		case err == nil:
			st.files[id] = files[i]
		case storage.IsNotExist(err):
		case errors.Is(err, repo.ErrDamagedIndex), errors.Is(err, storage.ErrTooLarge):
			st.damaged[id] = err
		default:
			return nil, fmt.Errorf("index %s cannot be read (%w); repair removes only index files it read and found damaged: run it again once the storage reads it, or move the file away if it never will", id.Short(), err)
		}
	}
	replaced := repo.Superseded(st.files)
	for id, f := range st.files {
		if replaced[id] {
			continue
		}
		for _, p := range f.Packs {
			st.listed[p.ID] = true
		}
	}
	return st, nil
}

// packVerdict is what reading one pack that no index lists found.
type packVerdict struct {
	blobs []repo.PackedBlob // set when the pack verifies and is indexed
	bad   string            // why it will never be indexed (it is damaged or forged)
	err   error             // it could not be read: it may be fine
	gone  bool              // it was deleted meanwhile
}

// verifyPack reads pack id of size bytes whole: its header must decode,
// every blob must hash to its ID and the whole pack to its name. The
// blobs are hashed by the scanner that check --read-data uses.
func verifyPack(ctx context.Context, r *repo.Repository, sc *repo.PackScanner, id hash.ID, size int64) packVerdict {
	hdr, err := r.LoadPackHeader(ctx, id, size)
	switch {
	case err == nil:
	case storage.IsNotExist(err):
		return packVerdict{gone: true}
	case errors.Is(err, repo.ErrDamagedPackHeader):
		return packVerdict{bad: "its header does not decode: " + strings.TrimPrefix(err.Error(), "pack "+id.Short()+": ")}
	default:
		return packVerdict{err: err}
	}
	if len(hdr.Blobs) == 0 {
		return packVerdict{bad: "its header lists no blobs"}
	}
	var nbad int
	var first string
	scan, err := sc.Scan(ctx, id, hdr.Blobs, true, func(b repo.PackedBlob, _ []byte, err error) error {
		if err != nil {
			if nbad == 0 {
				first = fmt.Sprintf("%s blob %s", b.Type, b.ID.Short())
			}
			nbad++
		}
		return nil
	})
	switch {
	case storage.IsNotExist(err):
		return packVerdict{gone: true}
	case errors.Is(err, storage.ErrTooLarge):
		return packVerdict{bad: fmt.Sprintf("it is larger than any pack of this repository (%d bytes)", size)}
	case err != nil:
		return packVerdict{err: err}
	case nbad > 0:
		verb := "does not hash to its ID"
		if nbad > 1 {
			verb = "do not hash to their IDs"
		}
		return packVerdict{bad: fmt.Sprintf("%s of %d that its header lists %s (damaged or forged; first: %s)",
			ui.Count(nbad, "blob"), len(hdr.Blobs), verb, first)}
	case scan.Sum != id:
		return packVerdict{bad: "its content does not match its name (damaged)"}
	}
	return packVerdict{blobs: hdr.Blobs}
}

// verifyPacks verifies the given packs on a few goroutines, each with its
// own scanner (they reuse their buffers from pack to pack), telling prog
// (may be nil).
func verifyPacks(ctx context.Context, r *repo.Repository, ids []hash.ID, sizes map[hash.ID]int64, prog ui.Progress) ([]packVerdict, error) {
	if prog == nil {
		prog = ui.NoProgress
	}
	var total int64
	for _, id := range ids {
		total += sizes[id]
	}
	prog.Phase("reading the packs that no index file lists", int64(len(ids)), total)
	out := make([]packVerdict, len(ids))
	workers := min(4, max(2, runtime.NumCPU()))
	scanners := make([]*repo.PackScanner, workers)
	for w := range scanners {
		scanners[w] = r.NewPackScanner()
	}
	var mu sync.Mutex
	var denied error
	par.For(ctx, len(ids), workers, func(w, i int) {
		v := verifyPack(ctx, r, scanners[w], ids[i], sizes[ids[i]])
		prog.Done(1, sizes[ids[i]])
		if errors.Is(v.err, storage.ErrDenied) {
			mu.Lock()
			denied = v.err
			mu.Unlock()
		}
		out[i] = v
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if denied != nil {
		// the credential may not read packs: nothing can be verified
		return nil, fmt.Errorf("read the packs that no index file lists: %w", denied)
	}
	return out, nil
}

// findUnindexedPacks plans to index every stored pack that no readable
// index file in use lists (the damaged files' packs among them: their
// list is unknown), once its blobs verify, and to remove the index files
// that cannot be loaded.
func findUnindexedPacks(ctx context.Context, r *repo.Repository, p *Plan) error {
	// packs first, then the index: a pack a backup uploads meanwhile is
	// either not listed yet or already indexed, and indexing it twice is
	// harmless
	sizes, err := r.ListPacks(ctx)
	if err != nil {
		return err
	}
	st, err := loadIndexState(ctx, r)
	if err != nil {
		return err
	}
	p.index = st
	var cands []hash.ID
	for id := range sizes {
		if !st.listed[id] {
			cands = append(cands, id)
		}
	}
	slices.SortFunc(cands, compareIDs)
	verdicts, err := verifyPacks(ctx, r, cands, sizes, p.prog)
	if err != nil {
		return err
	}
	unreadable := 0
	for i, id := range cands {
		v := verdicts[i]
		switch {
		case v.gone:
		case v.err != nil:
			unreadable++
			p.Left = append(p.Left, Action{Kind: UnreadablePack, ID: id, Bytes: sizes[id],
				Reason: fmt.Sprintf("in no readable index file, and it cannot be read now (%v): repair indexes it once it can", trimPrefix(v.err, "pack", id))})
		case v.bad != "":
			p.Left = append(p.Left, Action{Kind: LeavePack, ID: id, Bytes: sizes[id],
				Reason: "in no readable index file, and not indexed: " + v.bad + "; prune removes it once no snapshot needs it"})
		default:
			if p.verified == nil {
				p.verified = map[hash.ID]verifiedPack{}
			}
			p.verified[id] = verifiedPack{size: sizes[id], blobs: v.blobs}
			p.Actions = append(p.Actions, Action{Kind: IndexPack, ID: id, Blobs: len(v.blobs), Bytes: sizes[id],
				Reason: fmt.Sprintf("in no readable index file; its %s %s verified by hashing", ui.Count(len(v.blobs), "blob"), isAre(len(v.blobs)))})
		}
	}
	damaged := make([]hash.ID, 0, len(st.damaged))
	for id := range st.damaged {
		damaged = append(damaged, id)
	}
	slices.SortFunc(damaged, compareIDs)
	for _, id := range damaged {
		why := trimPrefix(st.damaged[id], "index", id)
		if unreadable > 0 {
			// it may have listed a pack that could not be read: while it
			// stays, check warns not to prune and prune refuses to run
			p.Left = append(p.Left, Action{Kind: LeaveIndex, ID: id,
				Reason: fmt.Sprintf("%s; kept until every pack that no index file lists has been read", why)})
			continue
		}
		p.Actions = append(p.Actions, Action{Kind: RemoveDamagedIndex, ID: id, Reason: why})
	}
	return nil
}

func isAre(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

// trimPrefix returns err's message without the "pack 1a2b3c4d: " or
// "index 1a2b3c4d: " that repo's errors start with.
func trimPrefix(err error, what string, id hash.ID) string {
	return strings.TrimPrefix(err.Error(), what+" "+id.Short()+": ")
}

// indexPacks carries out the IndexPack actions of a plan at once, so
// that the new entries are split into index files as every writer splits
// them (repo.SaveIndexFiles): it checks again that each pack is stored
// and listed by no readable index file (a pack indexed meanwhile is
// done), verifies the packs Find did not, and writes signed index files
// that list them and supersede the index files that are still damaged.
// It returns one error (or nil) per action.
func indexPacks(ctx context.Context, r *repo.Repository, p *Plan, acts []Action) ([]error, error) {
	if r.WriteOnly() {
		return nil, repo.ErrWriteOnly
	}
	if !r.Authority() {
		return nil, repo.ErrNotAuthority
	}
	sizes, err := r.ListPacks(ctx)
	if err != nil {
		return nil, err
	}
	st, err := loadIndexState(ctx, r)
	if err != nil {
		return nil, err
	}
	errs := make([]error, len(acts))
	var todo []int // actions whose pack must be read first
	blobs := make([][]repo.PackedBlob, len(acts))
	for i, a := range acts {
		size, stored := sizes[a.ID]
		switch vp, ok := p.verified[a.ID]; {
		case st.listed[a.ID]: // indexed meanwhile: nothing to do
		case !stored:
			errs[i] = fmt.Errorf("pack %s no longer exists: not indexed", a.ID.Short())
		case ok && vp.size == size:
			blobs[i] = vp.blobs
		default:
			todo = append(todo, i)
		}
	}
	if len(todo) > 0 {
		ids := make([]hash.ID, len(todo))
		for j, i := range todo {
			ids[j] = acts[i].ID
		}
		verdicts, err := verifyPacks(ctx, r, ids, sizes, nil)
		if err != nil {
			return nil, err
		}
		for j, i := range todo {
			switch v := verdicts[j]; {
			case v.gone:
				errs[i] = fmt.Errorf("pack %s no longer exists: not indexed", acts[i].ID.Short())
			case v.err != nil:
				errs[i] = fmt.Errorf("%w: not indexed", v.err)
			case v.bad != "":
				errs[i] = fmt.Errorf("pack %s: %s: not indexed", acts[i].ID.Short(), v.bad)
			default:
				blobs[i] = v.blobs
			}
		}
	}
	nf := &repo.IndexFile{Packs: []repo.PackInfo{}}
	for i, a := range acts {
		if blobs[i] != nil {
			nf.Packs = append(nf.Packs, repo.PackInfo{ID: a.ID, Blobs: blobs[i]})
		}
	}
	if len(nf.Packs) == 0 {
		return errs, nil
	}
	// The files that are still damaged now: their packs are among those
	// listed (their list is unknown). A file that loads now is not
	// superseded, or its packs would be hidden.
	for _, a := range p.Actions {
		if _, ok := st.damaged[a.ID]; ok && a.Kind == RemoveDamagedIndex {
			nf.Supersedes = append(nf.Supersedes, a.ID)
		}
	}
	// split like every writer's: the supersedes come after every pack,
	// so a repair killed between two files leaves the damaged files in
	// force and no pack unlisted
	for _, part := range repo.SplitIndexFile(nf, packfile.MaxIndexEntries) {
		if err := saveNewIndexFile(ctx, r, st, part); err != nil {
			err = fmt.Errorf("save the index files that list the packs: %w", err)
			for i := range errs {
				if blobs[i] != nil {
					errs[i] = err
				}
			}
			break
		}
	}
	return errs, nil
}

// saveNewIndexFile stores f as a new object. Index files are named by
// their content, so f may be a file that a signed file supersedes (hidden,
// stored or not), or one whose stored bytes are damaged (f was their
// original content): saving it would change nothing, and the packs would
// stay unlisted. f then also supersedes that name, its twin, which lists
// the same packs: f gets a new name, and nothing is hidden.
func saveNewIndexFile(ctx context.Context, r *repo.Repository, st *indexState, f *repo.IndexFile) error {
	id, err := r.IndexFileID(f)
	if err != nil {
		return err
	}
	_, loads := st.files[id]
	_, damaged := st.damaged[id]
	if loads || damaged || repo.Superseded(st.files)[id] {
		f.Supersedes = append(f.Supersedes, id)
	}
	_, err = r.SaveIndexFile(ctx, f)
	return err
}

// removeDamagedIndex removes an index file that still cannot be loaded
// because its stored bytes are bad (never one the storage could not read:
// it may be fine).
func removeDamagedIndex(ctx context.Context, r *repo.Repository, id hash.ID) error {
	_, err := r.LoadIndexFile(ctx, id)
	switch {
	case err == nil:
		return fmt.Errorf("index %s loads now: not removed", id.Short())
	case storage.IsNotExist(err):
		return nil // gone already
	case !errors.Is(err, repo.ErrDamagedIndex) && !errors.Is(err, storage.ErrTooLarge):
		return fmt.Errorf("%w: not removed", err)
	}
	return r.RemoveIndexFile(ctx, id)
}

func compareIDs(a, b hash.ID) int { return bytes.Compare(a[:], b[:]) }
