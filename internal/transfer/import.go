package transfer

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
	"github.com/floe-backup/floe/internal/ui"
)

// ImportOptions tune Import.
type ImportOptions struct {
	// Connections and Progress as for Copy. Import always verifies.
	Options
}

// ImportResult summarizes an import.
type ImportResult struct {
	*Result
	Manifest *Manifest
}

// Import checks the export in the directory export.Location against its
// manifest (VerifyExport;
// on any problem it returns an *ExportError and changes nothing), then
// copies the exported snapshots into dst with Copy and reads them back
// from dst. When dst has the same secrets as the export (it is the
// source repository, or shares its keys), the packs dst lacks are copied
// verbatim instead, with a new index file, and the snapshot records as
// they are. The export opens with export's credential (that of the
// repository it was exported from) and limits.
func Import(ctx context.Context, export connect.Target, dst *repo.Repository, opts ImportOptions) (*ImportResult, error) {
	dir := export.Location
	if err := checkReadable(dst, "destination (import needs a full key of it, to see which snapshots it has and verify them)"); err != nil {
		return nil, err
	}
	opts.Options = opts.Options.withConnections(dst.Backend())
	if opts.Progress == nil {
		opts.Progress = ui.NoProgress
	}
	newProgress(opts.Progress).phase("check export")
	m, err := VerifyExport(ctx, dir, opts.connections())
	if err != nil {
		return nil, err
	}
	be, err := local.Open(dir)
	if err != nil {
		return nil, err
	}
	exp, err := connect.OpenOn(ctx, be, export)
	if err != nil {
		return nil, fmt.Errorf("open the export %s: %w", dir, err)
	}
	defer exp.Close()
	if exp.Config().ID != m.SourceRepository {
		return nil, fmt.Errorf("export %s: the manifest names repository %s, the export holds %s", dir, m.SourceRepository, exp.Config().ID)
	}
	if err := exp.LoadIndex(ctx); err != nil {
		return nil, fmt.Errorf("export %s: %w", dir, err)
	}
	snaps := make([]*snapshot.Record, 0, len(m.Snapshots))
	for _, id := range m.Snapshots {
		s, err := snapshot.Load(ctx, exp, id)
		if err != nil {
			return nil, fmt.Errorf("export %s: %w", dir, err)
		}
		snaps = append(snaps, s)
	}
	opts.Verify = true
	var res *Result
	if exp.SameSecrets(dst) {
		res, err = importVerbatim(ctx, exp, dst, snaps, opts.Options)
	} else {
		res, err = Copy(ctx, exp, dst, snaps, opts.Options)
	}
	if res == nil {
		return nil, err
	}
	return &ImportResult{Result: res, Manifest: m}, err
}

// importVerbatim copies what dst lacks of snaps from exp, which has the
// same secrets: whole packs, a new index file for them, and the snapshot
// records, all as they are.
func importVerbatim(ctx context.Context, exp, dst *repo.Repository, snaps []*snapshot.Record, opts Options) (*Result, error) {
	prog := newProgress(opts.Progress)
	snaps = uniqueByID(snaps)
	snapshot.SortByTime(snaps)
	prog.phase("copy")
	prog.snapshots(len(snaps))
	existing, err := existingSnapshots(ctx, dst)
	if err != nil {
		return nil, err
	}
	res := &Result{SharedKey: true, ByID: true, Verbatim: true}
	var todo []*snapshot.Record
	var roots []hash.Ref
	for _, s := range snaps {
		if d, ok := lookupExisting(existing, s); ok {
			res.Snapshots = append(res.Snapshots, Copied{Source: s.ID, Destination: d, Skipped: true})
			prog.snapshotDone()
			continue
		}
		todo = append(todo, s)
		roots = append(roots, s.Tree)
	}

	// the packs that hold blobs dst lacks
	packs := map[hash.ID]bool{}
	var missing errorList
	var checked uint64
	need := func(h repo.BlobHandle) {
		if h.Type == repo.DataBlob {
			checked++
		}
		if dst.HasTrustedBlob(h) {
			return // an unvouched copy in dst may be forged: import the pack's
		}
		loc, ok := exp.Index().Lookup(h)
		if !ok {
			missing.add("%s blob %s: %v", h.Type, h.ID.Short(), repo.ErrBlobNotFound)
			return
		}
		packs[loc.Pack] = true
	}
	seen := map[hash.ID]bool{}
	rawSize := map[hash.ID]uint32{} // plaintext sizes from the trees, for the statistics
	err = walkTrees(ctx, exp, roots, opts.connections(), func(id hash.Ref, t *snapshot.Tree) error {
		need(repo.BlobHandle{Type: repo.TreeBlob, ID: id.ID})
		for _, n := range t.Nodes {
			for i, b := range n.Content {
				if !seen[b.ID] {
					seen[b.ID] = true
					need(repo.BlobHandle{Type: repo.DataBlob, ID: b.ID})
					rawSize[b.ID] = n.ChunkSizes[i]
				}
			}
		}
		return nil
	}, func(id hash.Ref, err error) error {
		return fmt.Errorf("load tree %s from the export: %w", id.Short(), err)
	})
	if err != nil {
		return nil, err
	}
	if missing.count > 0 {
		return nil, fmt.Errorf("the export lacks %s its snapshots need: %s", ui.Count(missing.count, "blob"), missing.list[0])
	}
	res.BlobsChecked = checked

	ids := make([]hash.ID, 0, len(packs))
	for p := range packs {
		ids = append(ids, p)
	}
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	infos, err := copyPacksVerbatim(ctx, exp, dst, ids, opts.connections(), prog)
	if len(infos) > 0 {
		// index what arrived, also after an error, so a new run skips it
		for _, f := range repo.SplitIndexFile(&repo.IndexFile{Packs: infos}, packfile.MaxIndexEntries) {
			id, ierr := dst.SaveIndexFile(context.WithoutCancel(ctx), f)
			if ierr != nil {
				if err == nil {
					err = ierr
				}
				break
			}
			dst.AddIndexFile(id, f)
		}
		for _, p := range infos {
			res.Saved.Packs++
			for _, b := range p.Blobs {
				res.Saved.Blobs++
				res.Saved.RawBytes += uint64(rawSize[b.ID])
				res.Saved.StoredBytes += uint64(b.Length)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	for _, s := range todo {
		h := storage.Handle{Type: storage.Snapshot, Name: s.ID.String()}
		data, err := repo.LoadWhole(ctx, exp.Backend(), h)
		if err != nil {
			return nil, fmt.Errorf("import snapshot %s: %w", s.ID.Short(), err)
		}
		if hash.Sum(data) != s.ID {
			return nil, fmt.Errorf("import snapshot %s: the record does not match its name (damaged)", s.ID.Short())
		}
		if err := dst.Backend().Save(ctx, h, data); err != nil && !errors.Is(err, storage.ErrExist) {
			return nil, fmt.Errorf("import snapshot %s: %w", s.ID.Short(), err)
		}
		res.Snapshots = append(res.Snapshots, Copied{Source: s.ID, Destination: s.ID})
		prog.snapshotDone()
	}
	if opts.Verify {
		if err := verifyInto(ctx, dst, res, opts.connections(), prog); err != nil {
			return res, err
		}
	}
	return res, nil
}

// copyPacksVerbatim copies packs from exp to dst as they are, conns at a
// time, and returns their index entries. A pack dst has already (left by
// an interrupted import, not indexed) is indexed from its header.
func copyPacksVerbatim(ctx context.Context, exp, dst *repo.Repository, ids []hash.ID, conns int, prog *progress) ([]repo.PackInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		infos []repo.PackInfo
		first error
	)
	par.For(ctx, len(ids), conns, func(_, i int) {
		info, err := copyPackVerbatim(ctx, exp, dst, ids[i], prog)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if first == nil {
				first = err
			}
			cancel()
			return
		}
		infos = append(infos, info)
	})
	if first == nil {
		first = ctx.Err()
	}
	return infos, first
}

func copyPackVerbatim(ctx context.Context, exp, dst *repo.Repository, id hash.ID, prog *progress) (repo.PackInfo, error) {
	h := storage.Handle{Type: storage.Pack, Name: id.String()}
	if fi, err := dst.Backend().Stat(ctx, h); err == nil {
		hdr, err := dst.LoadPackHeader(ctx, id, fi.Size)
		if err != nil {
			return repo.PackInfo{}, fmt.Errorf("import: the destination's %w (%w)", err, ErrDestinationDamaged)
		}
		return repo.PackInfo{ID: id, Blobs: hdr.Blobs}, nil
	} else if !storage.IsNotExist(err) {
		return repo.PackInfo{}, fmt.Errorf("import: %w", err)
	}
	data, err := repo.LoadWhole(ctx, exp.Backend(), h)
	if err != nil {
		return repo.PackInfo{}, fmt.Errorf("import: %w", err)
	}
	prog.read(len(data))
	info, err := repo.PackInfoFromBytes(id, data)
	if err != nil {
		return repo.PackInfo{}, fmt.Errorf("import: the export's %w", err)
	}
	if err := dst.Backend().Save(ctx, h, data); err != nil && !errors.Is(err, storage.ErrExist) {
		return repo.PackInfo{}, fmt.Errorf("import: %w", err)
	}
	prog.sent(len(data))
	prog.blobsSent(len(info.Blobs))
	return info, nil
}
