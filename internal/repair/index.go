package repair

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// badEntry is an index entry whose copy cannot be read as its blob.
type badEntry struct {
	pack hash.ID
	blob repo.PackedBlob
	why  string
}

func (b badEntry) String() string {
	return fmt.Sprintf("%s blob %s in pack %s %s", b.blob.Type, b.blob.ID.Short(), b.pack.Short(), b.why)
}

// entryVerifier hashes index entries against the stored packs, reading
// each pack once.
type entryVerifier struct {
	r     *repo.Repository
	sizes map[hash.ID]int64
	seen  map[hash.ID]map[repo.PackedBlob]string // pack -> entry -> why bad ("" good)
}

func newEntryVerifier(ctx context.Context, r *repo.Repository) (*entryVerifier, error) {
	sizes, err := r.ListPacks(ctx)
	if err != nil {
		return nil, err
	}
	return &entryVerifier{r: r, sizes: sizes, seen: map[hash.ID]map[repo.PackedBlob]string{}}, nil
}

// check returns the bad entries of one pack's list; the pack is read
// once for all its entries (of every index file).
func (v *entryVerifier) check(ctx context.Context, p repo.PackInfo) ([]badEntry, error) {
	known := v.seen[p.ID]
	if known == nil {
		known = map[repo.PackedBlob]string{}
		v.seen[p.ID] = known
	}
	var todo []repo.PackedBlob
	for _, b := range p.Blobs {
		if _, ok := known[b]; !ok {
			todo = append(todo, b)
		}
	}
	if len(todo) > 0 {
		if _, stored := v.sizes[p.ID]; !stored {
			for _, b := range todo {
				known[b] = "(the pack does not exist)"
			}
		} else {
			data, err := v.r.LoadPack(ctx, p.ID)
			if err != nil {
				// a pack that cannot be read now may be fine: repair
				// never drops what it could not look at
				return nil, err
			}
			for _, b := range todo {
				end := int64(b.Offset) + int64(b.Length)
				switch {
				case end > int64(len(data)):
					known[b] = fmt.Sprintf("(past the end of the %d-byte pack)", len(data))
				case repo.StoredBlobID(b.Type, data[b.Offset:end]) != b.ID:
					known[b] = "(its bytes do not hash to its ID: forged or damaged)"
				default:
					known[b] = ""
				}
			}
		}
	}
	var bad []badEntry
	for _, b := range p.Blobs {
		if why := known[b]; why != "" {
			bad = append(bad, badEntry{pack: p.ID, blob: b, why: why})
		}
	}
	return bad, nil
}

// badEntries returns the bad entries of an index file and how many it has.
func (v *entryVerifier) badEntries(ctx context.Context, f *repo.IndexFile) (bad []badEntry, total int, err error) {
	for _, p := range f.Packs {
		total += len(p.Blobs)
		b, err := v.check(ctx, p)
		if err != nil {
			return nil, 0, err
		}
		bad = append(bad, b...)
	}
	return bad, total, nil
}

func describeBad(bad []badEntry, total int) string {
	var ex []string
	for i, b := range bad {
		if i == 3 {
			ex = append(ex, fmt.Sprintf("and %d more", len(bad)-3))
			break
		}
		ex = append(ex, b.String())
	}
	return fmt.Sprintf("%d of its %d entries point to forged or missing copies: %s", len(bad), total, strings.Join(ex, "; "))
}

// findBadIndexEntries hashes every entry of the index files in use
// against the stored packs. The files that cannot be loaded are
// findUnindexedPacks' (their packs are indexed anew).
func findBadIndexEntries(ctx context.Context, r *repo.Repository, p *Plan) error {
	st := p.index
	if st == nil {
		var err error
		if st, err = loadIndexState(ctx, r); err != nil {
			return err
		}
	}
	files := st.files
	v, err := newEntryVerifier(ctx, r)
	if err != nil {
		return err
	}
	replaced := repo.Superseded(files)
	ids := make([]hash.ID, 0, len(files))
	for id := range files {
		if !replaced[id] {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	prog := p.prog
	if prog == nil {
		prog = ui.NoProgress
	}
	prog.Phase("hashing the entries of the index files", int64(len(ids)), 0)
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return err
		}
		bad, total, err := v.badEntries(ctx, files[id])
		prog.Done(1, 0)
		if err != nil {
			return fmt.Errorf("index %s: %w", id.Short(), err)
		}
		if len(bad) > 0 {
			signed := "unsigned"
			if files[id].Trusted {
				signed = "signed"
			}
			p.Actions = append(p.Actions, Action{Kind: RewriteIndex, ID: id, Reason: signed + " index file; " + describeBad(bad, total)})
		}
	}
	return nil
}

// rewriteIndex checks an index file's entries again, writes a signed
// index file that supersedes it with its good entries, and removes it.
func rewriteIndex(ctx context.Context, r *repo.Repository, id hash.ID) error {
	if r.WriteOnly() {
		return repo.ErrWriteOnly
	}
	f, err := r.LoadIndexFile(ctx, id)
	if err != nil {
		if storage.IsNotExist(err) {
			return nil // removed meanwhile (a prune superseded it)
		}
		return err
	}
	v, err := newEntryVerifier(ctx, r)
	if err != nil {
		return err
	}
	bad, _, err := v.badEntries(ctx, f)
	if err != nil {
		return err
	}
	if len(bad) == 0 {
		return fmt.Errorf("index %s has no bad entries now: not rewritten", id.Short())
	}
	drop := map[hash.ID]map[repo.PackedBlob]bool{}
	for _, b := range bad {
		if drop[b.pack] == nil {
			drop[b.pack] = map[repo.PackedBlob]bool{}
		}
		drop[b.pack][b.blob] = true
	}
	// the good entries were hashed just now: the authority may vouch
	// for them
	nf := &repo.IndexFile{Supersedes: []hash.ID{id}, Packs: []repo.PackInfo{}}
	for _, pi := range f.Packs {
		kept := repo.PackInfo{ID: pi.ID}
		for _, b := range pi.Blobs {
			if !drop[pi.ID][b] {
				kept.Blobs = append(kept.Blobs, b)
			}
		}
		if len(kept.Blobs) > 0 {
			nf.Packs = append(nf.Packs, kept)
		}
	}
	// split like every writer's (the supersede comes after every pack)
	if _, err := r.SaveIndexFiles(ctx, nf); err != nil {
		return fmt.Errorf("save the index file that replaces %s: %w", id.Short(), err)
	}
	// superseded now; removing it is tidiness (a prune would too)
	return r.RemoveIndexFile(ctx, id)
}

// findUnsignedMarks lists the gc marks whose signature does not verify.
func findUnsignedMarks(ctx context.Context, r *repo.Repository, p *Plan) error {
	ids, err := r.ListIDs(ctx, storage.GCMark)
	if err != nil {
		return err
	}
	for _, id := range ids {
		_, err := r.LoadGCMark(ctx, id)
		switch {
		case err == nil, storage.IsNotExist(err):
		case errors.Is(err, repo.ErrIsLease):
			// the lease of a prune or repair (running, or dead and
			// expired): neither a mark nor damaged; prune and repair
			// take leases over, --force-unlock removes them
		case errors.Is(err, repo.ErrDamagedMark):
			p.Actions = append(p.Actions, Action{Kind: RemoveMark, ID: id, Reason: err.Error() + "; prune and backups ignore it"})
		default:
			return fmt.Errorf("gc mark %s: %w", id.Short(), err)
		}
	}
	return nil
}

func removeUnsignedMark(ctx context.Context, r *repo.Repository, id hash.ID) error {
	_, err := r.LoadGCMark(ctx, id)
	switch {
	case err == nil:
		return fmt.Errorf("gc mark %s is signed now: not removed", id.Short())
	case storage.IsNotExist(err):
		return nil
	case !errors.Is(err, repo.ErrDamagedMark):
		return fmt.Errorf("gc mark %s: %w: not removed", id.Short(), err)
	}
	return r.RemoveGCMark(ctx, id)
}
