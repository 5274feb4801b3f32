package repo

// Garbage-collection marks (docs/FORMAT.md "Garbage collection") and the
// few storage operations that prune needs beyond what backups do.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// DefaultGCGrace is the default grace period between marking a pack and
// deleting it. A backup whose view of the index is older than half of it
// re-checks, before it writes its snapshot, that what it relies on is
// still there (VerifyReferences).
const DefaultGCGrace = 24 * time.Hour

const (
	domainGCMark = "floe v2 gc mark"
	// maxGCMarkSize bounds a mark read from storage (a mark names at most
	// every pack: 66 bytes each in JSON).
	maxGCMarkSize = 256 << 20
)

// GCMark is the content of gc/<id>: packs that prune will delete once the
// mark is older than the grace period, unless a snapshot needs them then.
type GCMark struct {
	Time  time.Time `json:"time"`
	Packs []hash.ID `json:"packs"`
	// Unindexed lists the packs of Packs that no index file listed when
	// they were marked (left by a killed backup, or uploaded by a backup
	// that had not written its index yet). One that an index file lists
	// by the time of the sweep is not deleted.
	Unindexed []hash.ID `json:"unindexed,omitempty"`
	// SupersedeIndex lists index files that the sweep removes (the index
	// file it writes supersedes them).
	SupersedeIndex []hash.ID `json:"supersede_index,omitempty"`
}

// ErrDamagedMark is wrapped by LoadGCMark for a mark that does not decode
// or whose authority signature does not verify (a write-only key, or
// anyone with write access to the storage, may have made it). Prune and
// backups ignore such a mark, so it deletes nothing; check reports it.
var ErrDamagedMark = errors.New("gc mark is damaged")

// SaveGCMark signs and stores a mark and returns its ID. It needs a full
// key.
func (r *Repository) SaveGCMark(ctx context.Context, m *GCMark) (hash.ID, error) {
	if !r.Authority() {
		return hash.ID{}, fmt.Errorf("write a gc mark: %w", ErrNotAuthority)
	}
	plain, err := json.Marshal(m)
	if err != nil {
		return hash.ID{}, err
	}
	data := append(plain, r.secrets.AuthorityPrivate.Sign(domainGCMark, plain)...)
	id := hash.Sum(data)
	if err := r.be.Save(ctx, storage.Handle{Type: storage.GCMark, Name: id.String()}, data); err != nil {
		return id, fmt.Errorf("save gc mark %s: %w", id.Short(), err)
	}
	return id, nil
}

// LoadGCMark reads and verifies one mark. A damaged mark wraps
// ErrDamagedMark; a missing one storage.ErrNotExist.
func (r *Repository) LoadGCMark(ctx context.Context, id hash.ID) (*GCMark, error) {
	h := storage.Handle{Type: storage.GCMark, Name: id.String()}
	data, err := storage.LoadAll(ctx, r.be, h, maxGCMarkSize)
	if errors.Is(err, storage.ErrTooLarge) {
		return nil, fmt.Errorf("gc mark %s: %w: %w", id.Short(), err, ErrDamagedMark)
	}
	if err != nil {
		return nil, fmt.Errorf("gc mark %s: %w", id.Short(), err)
	}
	if hash.Sum(data) != id {
		return nil, fmt.Errorf("gc mark %s: content does not match its name: %w", id.Short(), ErrDamagedMark)
	}
	m, err := r.DecodeGCMark(data)
	if err != nil {
		if _, lerr := r.decodeLease(data); lerr == nil {
			return nil, fmt.Errorf("gc/%s: %w", id.Short(), ErrIsLease)
		}
		return nil, fmt.Errorf("gc mark %s: %w", id.Short(), err)
	}
	return m, nil
}

// ErrIsLease is wrapped by LoadGCMark's error for an object in gc/ that
// is a prune lease (lease.go), not a mark: neither a mark nor damaged, so
// that whoever reads marks one by one (repair) skips it.
var ErrIsLease = errors.New("a prune lease, not a mark")

// DecodeGCMark verifies the authority's signature over a stored mark (the
// JSON, then 64 bytes of signature) and decodes it. Errors wrap
// ErrDamagedMark.
func (r *Repository) DecodeGCMark(data []byte) (*GCMark, error) {
	if len(data) < crypto.SignatureSize {
		return nil, fmt.Errorf("too short: %w", ErrDamagedMark)
	}
	plain, sig := data[:len(data)-crypto.SignatureSize], data[len(data)-crypto.SignatureSize:]
	if !r.secrets.AuthorityPublic.Verify(domainGCMark, plain, sig) {
		return nil, fmt.Errorf("not signed by a full key of this repository: %w", ErrDamagedMark)
	}
	var m GCMark
	if err := json.Unmarshal(plain, &m); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrDamagedMark)
	}
	return &m, nil
}

// RemoveGCMark deletes a mark.
func (r *Repository) RemoveGCMark(ctx context.Context, id hash.ID) error {
	if err := r.be.Remove(ctx, storage.Handle{Type: storage.GCMark, Name: id.String()}); err != nil {
		return fmt.Errorf("remove gc mark %s: %w", id.Short(), err)
	}
	return nil
}

// LoadGCMarks reads every mark. Marks removed meanwhile (a prune swept
// them) are skipped; damaged ones are returned in damaged and skipped. A
// storage error is returned as err: a mark that cannot be read now may
// be swept later, so nobody may ignore it.
func (r *Repository) LoadGCMarks(ctx context.Context) (marks map[hash.ID]*GCMark, damaged []error, err error) {
	ids, err := r.ListIDs(ctx, storage.GCMark)
	if err != nil {
		return nil, nil, err
	}
	marks = map[hash.ID]*GCMark{}
	for _, id := range ids {
		m, err := r.LoadGCMark(ctx, id)
		switch {
		case err == nil:
			marks[id] = m
		case storage.IsNotExist(err), errors.Is(err, ErrIsLease):
		case errors.Is(err, ErrDamagedMark):
			damaged = append(damaged, err)
		default:
			return nil, nil, err
		}
	}
	return marks, damaged, nil
}

// markedPacks returns every pack that a readable mark names.
func (r *Repository) markedPacks(ctx context.Context) (map[hash.ID]bool, error) {
	marks, _, err := r.LoadGCMarks(ctx)
	if err != nil {
		return nil, fmt.Errorf("read gc marks: %w", err)
	}
	marked := map[hash.ID]bool{}
	for _, m := range marks {
		for _, p := range m.Packs {
			marked[p] = true
		}
	}
	return marked, nil
}

// SetGCGrace tells the repository the grace period that prunes of it use
// (DefaultGCGrace unless set), which decides when VerifyReferences has to
// look. Call it after LoadIndex.
func (r *Repository) SetGCGrace(d time.Duration) {
	if r.idx == nil {
		return
	}
	r.idx.mu.Lock()
	r.idx.grace = d
	r.idx.mu.Unlock()
}

// LoadIndexFiles loads every index file, as LoadIndex does, without
// making them the index; errs lists the files that cannot be loaded.
func (r *Repository) LoadIndexFiles(ctx context.Context) (files map[hash.ID]*IndexFile, errs []error, err error) {
	return r.loadIndexFiles(ctx)
}

// UseIndex makes the in-memory index the union of files minus the
// superseded ones, with the packs in marked treated as LoadIndex treats
// the packs that gc marks name.
func (r *Repository) UseIndex(files map[hash.ID]*IndexFile, marked map[hash.ID]bool) {
	idx := newIndex()
	if r.idx != nil {
		idx.grace = r.idx.grace
	}
	for p := range marked {
		idx.marked[p] = true
	}
	idx.addFiles(files)
	r.idx = idx
}

// ListPacks returns the size of every pack in storage.
func (r *Repository) ListPacks(ctx context.Context) (map[hash.ID]int64, error) {
	packs := map[hash.ID]int64{}
	err := r.be.List(ctx, storage.Pack, func(fi storage.FileInfo) error {
		if id, err := hash.Parse(fi.Name); err == nil {
			packs[id] = fi.Size
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	return packs, nil
}

// RemovePack deletes a pack (prune only). A missing pack is no error.
func (r *Repository) RemovePack(ctx context.Context, id hash.ID) error {
	err := r.be.Remove(ctx, storage.Handle{Type: storage.Pack, Name: id.String()})
	if err != nil && !storage.IsNotExist(err) {
		return fmt.Errorf("remove pack %s: %w", id.Short(), err)
	}
	return nil
}

// RemoveIndexFile deletes an index file (prune only, once another
// supersedes it). A missing file is no error.
func (r *Repository) RemoveIndexFile(ctx context.Context, id hash.ID) error {
	err := r.be.Remove(ctx, storage.Handle{Type: storage.Index, Name: id.String()})
	if err != nil && !storage.IsNotExist(err) {
		return fmt.Errorf("remove index %s: %w", id.Short(), err)
	}
	return nil
}

// ReferencesGoneError means that blobs a backup relies on may be deleted
// by a prune that runs concurrently: the backup must not write its
// snapshot.
type ReferencesGoneError struct {
	Blobs int           // blobs without a copy in a pack that is stored and not marked
	Packs []hash.ID     // the packs (marked or deleted) that held them, sorted
	Age   time.Duration // since the index was loaded
}

func (e *ReferencesGoneError) Error() string {
	var names []string
	for i, p := range e.Packs {
		if i == 3 {
			names = append(names, "...")
			break
		}
		names = append(names, p.Short())
	}
	verb := "are"
	if e.Blobs == 1 {
		verb = "is"
	}
	return fmt.Sprintf("%s that this backup relies on %s now only in packs that a concurrent prune marked for deletion or deleted (%s) while the backup ran (%s since it read the index); the snapshot was not written, to keep it from referring to deleted data: run the backup again",
		ui.Count(e.Blobs, "blob"), verb, strings.Join(names, ", "), e.Age.Round(time.Second))
}

// VerifyReferences checks, before a backup writes its snapshot, that
// every blob the backup relied on (HasBlob and SaveBlob found it in the
// index, or this repository stored it) still has a copy in a pack that is
// stored and that no gc mark names. It looks only when the index was
// loaded longer ago than half the grace period (SetGCGrace): a prune
// deletes a pack only a grace period after marking it, so a younger view
// is safe. It returns a *ReferencesGoneError when a blob has no such copy.
func (r *Repository) VerifyReferences(ctx context.Context) error {
	x := r.idx
	if x == nil {
		return nil
	}
	x.mu.RLock()
	loaded, grace := x.loaded, x.grace
	x.mu.RUnlock()
	age := time.Since(loaded)
	if !loaded.IsZero() && age < grace/2 {
		return nil
	}
	// Marks first, then packs: a prune deletes a pack after it marks it
	// and before it removes the mark, so a pack deleted before the listing
	// is either missing from it or named by a mark read.
	marked, err := r.markedPacks(ctx)
	if err != nil {
		return fmt.Errorf("verify the blobs the backup relies on: %w", err)
	}
	stored, err := r.ListPacks(ctx)
	if err != nil {
		return fmt.Errorf("verify the blobs the backup relies on: %w", err)
	}
	ok := func(p hash.ID) bool {
		_, present := stored[p]
		return present && !marked[p]
	}
	doubt := map[BlobHandle]hash.ID{} // blob -> the pack it was found in
	x.mu.RLock()
	x.blobs.each(func(h BlobHandle, e indexEntry) {
		if e.referenced && !ok(x.packs[e.pack].id) {
			doubt[h] = x.packs[e.pack].id
		}
	})
	x.mu.RUnlock()
	if len(doubt) == 0 {
		return nil
	}
	// Another copy may have been written since (prune copies the live
	// blobs of a pack before it marks it): read the index again.
	files, _, err := r.loadIndexFiles(ctx)
	if err != nil {
		return fmt.Errorf("verify the blobs the backup relies on: %w", err)
	}
	replaced := Superseded(files)
	for id, f := range files {
		if replaced[id] {
			continue
		}
		for _, p := range f.Packs {
			if !ok(p.ID) {
				continue
			}
			for _, b := range p.Blobs {
				delete(doubt, BlobHandle{b.Type, b.ID})
			}
		}
	}
	if len(doubt) == 0 {
		return nil
	}
	e := &ReferencesGoneError{Blobs: len(doubt), Age: age}
	if loaded.IsZero() {
		e.Age = 0
	}
	badPacks := map[hash.ID]bool{}
	for _, p := range doubt {
		if !badPacks[p] {
			badPacks[p] = true
			e.Packs = append(e.Packs, p)
		}
	}
	sort.Slice(e.Packs, func(i, j int) bool { return string(e.Packs[i][:]) < string(e.Packs[j][:]) })
	return e
}
