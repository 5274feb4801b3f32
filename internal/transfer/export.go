package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
	"github.com/floe-backup/floe/internal/ui"
)

// ExportOptions tune Export.
type ExportOptions struct {
	// Connections is how many packs are copied at once (default as for
	// Options.Connections).
	Connections int
	Progress    *Progress
	// Limits, if set, applies to the export directory too.
	Limits *connect.Limits

	wrapOut func(storage.Backend) storage.Backend // tests: interrupt the export
}

// ExportResult summarizes an export.
type ExportResult struct {
	Dir       string
	Manifest  *Manifest
	Packs     int    // packs in the export
	Copied    int    // packs copied by this run (the others were there from an interrupted run)
	Bytes     uint64 // size of all the export's files
	Resumed   bool   // an interrupted export was continued
	BlobCount int    // blobs the snapshots need
}

// Export writes the snapshots snaps of src to dir as a self-contained
// repository with src's config and keys (so the same password or key file
// opens it): every pack that holds a blob the snapshots need, copied
// verbatim, a fresh index file for those packs, and the snapshot records
// verbatim. Then it writes MANIFEST.json (every file's path, size and
// BLAKE3 hash, the snapshot IDs, the time, the source repository's ID) and
// last MANIFEST.json.b3 (the BLAKE3 of the manifest, in b3sum's format), so
// that an export that did not finish has no valid manifest.
//
// dir must not exist, be empty, or hold an unfinished export of the same
// repository, which Export continues (keeping the objects that are there
// and intact). An export with a manifest is never changed.
func Export(ctx context.Context, src *repo.Repository, snaps []*snapshot.Record, dir string, opts ExportOptions) (*ExportResult, error) {
	if err := checkReadable(src, "source"); err != nil {
		return nil, err
	}
	snaps = uniqueByID(snaps)
	snapshot.SortByTime(snaps)
	if len(snaps) == 0 {
		return nil, errors.New("no snapshots to export")
	}
	prog := opts.Progress
	if prog == nil {
		prog = &Progress{}
	}
	srcBe := src.Backend()
	conns := Options{Connections: opts.Connections}.withConnections(srcBe).connections()
	cfg, err := repo.LoadWhole(ctx, srcBe, storage.Handle{Type: storage.Config})
	if err != nil {
		return nil, fmt.Errorf("read the source's config: %w", err)
	}
	out, resumed, err := prepareExportDir(ctx, dir, cfg)
	if err != nil {
		return nil, err
	}
	out = opts.Limits.Wrap(out)
	if opts.wrapOut != nil {
		out = opts.wrapOut(out)
	}
	defer out.Close()
	res := &ExportResult{Dir: dir, Resumed: resumed}
	e := &exporter{src: src, from: srcBe, to: out, verified: map[string]int64{}}
	e.verified["config"] = int64(len(cfg))

	// which packs the snapshots need
	prog.setPhase("scan")
	prog.SnapshotsTotal.Store(int64(len(snaps)))
	roots := make([]hash.Ref, len(snaps))
	for i, s := range snaps {
		roots[i] = s.Tree
	}
	packs := map[hash.ID]bool{}
	var missing errorList
	need := func(h repo.BlobHandle) {
		loc, ok := src.Index().Lookup(h)
		if !ok {
			missing.add("%s blob %s: %v", h.Type, h.ID.Short(), repo.ErrBlobNotFound)
			return
		}
		packs[loc.Pack] = true
	}
	blobs := map[repo.BlobHandle]bool{}
	err = walkTrees(ctx, src, roots, conns, func(id hash.Ref, t *snapshot.Tree) error {
		blobs[repo.BlobHandle{Type: repo.TreeBlob, ID: id.ID}] = true
		for _, n := range t.Nodes {
			for _, b := range n.Content {
				blobs[repo.BlobHandle{Type: repo.DataBlob, ID: b.ID}] = true
			}
		}
		return nil
	}, func(id hash.Ref, err error) error {
		return fmt.Errorf("load tree %s: %w (run `floe check` on the source)", id.Short(), err)
	})
	if err != nil {
		return nil, err
	}
	for h := range blobs {
		need(h)
	}
	res.BlobCount = len(blobs)
	if missing.count > 0 {
		return nil, fmt.Errorf("the source lacks %s the snapshots need (run `floe check` on it): %v", ui.Count(missing.count, "blob"), missing.list[0])
	}

	// keys, packs, index, snapshots
	prog.setPhase("export")
	keys, err := listNames(ctx, srcBe, storage.Key)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if err := e.copyObject(ctx, storage.Handle{Type: storage.Key, Name: k}); err != nil {
			return nil, err
		}
	}
	ids := make([]hash.ID, 0, len(packs))
	for p := range packs {
		ids = append(ids, p)
	}
	sort.Slice(ids, func(i, j int) bool { return string(ids[i][:]) < string(ids[j][:]) })
	infos, copied, err := e.copyPacks(ctx, ids, conns, prog)
	if err != nil {
		return nil, err
	}
	res.Packs, res.Copied = len(infos), copied
	idxID, err := src.SaveIndexFileTo(ctx, out, &repo.IndexFile{Packs: infos})
	if err != nil {
		return nil, err
	}
	if err := e.markVerified(ctx, storage.Handle{Type: storage.Index, Name: idxID.String()}); err != nil {
		return nil, err
	}
	for _, s := range snaps {
		if err := e.copyObject(ctx, storage.Handle{Type: storage.Snapshot, Name: s.ID.String()}); err != nil {
			return nil, err
		}
		prog.SnapshotsDone.Add(1)
	}

	// the manifest, last
	prog.setPhase("manifest")
	m := &Manifest{Version: manifestVersion, Created: time.Now().UTC(), SourceRepository: src.Config().ID}
	for _, s := range snaps {
		m.Snapshots = append(m.Snapshots, s.ID)
	}
	files, err := repositoryFiles(dir)
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	for _, p := range files {
		f := ManifestFile{Path: p}
		h, ok := parseObjectPath(p)
		if !ok {
			continue // misplaced: not part of the repository
		}
		if size, ok := e.verified[p]; ok && h.Type != storage.Config {
			f.Size, f.BLAKE3 = size, h.Name
		} else {
			// the config, or an object an interrupted run left that this
			// export does not need: hash it, and drop it if damaged
			if f.Size, f.BLAKE3, err = hashFile(filepath.Join(dir, filepath.FromSlash(p))); err != nil {
				return nil, fmt.Errorf("export %s: %w", p, err)
			}
			if h.Type != storage.Config && f.BLAKE3 != h.Name {
				if err := os.Remove(filepath.Join(dir, filepath.FromSlash(p))); err != nil {
					return nil, fmt.Errorf("export: remove damaged leftover %s: %w", p, err)
				}
				continue
			}
		}
		m.Files = append(m.Files, f)
		res.Bytes += uint64(f.Size)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := writeManifest(dir, m); err != nil {
		return nil, err
	}
	res.Manifest = m
	return res, nil
}

// prepareExportDir creates the export repository in dir, or opens the
// unfinished export of the same repository there.
func prepareExportDir(ctx context.Context, dir string, cfg []byte) (storage.Backend, bool, error) {
	if _, err := os.Lstat(filepath.Join(dir, ManifestSumName)); err == nil {
		return nil, false, fmt.Errorf("%s holds a finished export already; export into a new directory", dir)
	}
	old, err := os.ReadFile(filepath.Join(dir, "config"))
	switch {
	case err == nil:
		if !bytes.Equal(old, cfg) {
			return nil, false, fmt.Errorf("%s holds another repository; export into a new directory", dir)
		}
		// an unfinished export of this repository: continue it
		if err := os.Remove(filepath.Join(dir, ManifestName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, false, err
		}
		be, err := local.Open(dir)
		return be, true, err
	case !errors.Is(err, os.ErrNotExist):
		return nil, false, fmt.Errorf("export to %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("export to %s: %w", dir, err)
	}
	for _, e := range entries {
		switch e.Name() {
		case "lost+found", string(storage.Key), string(storage.Pack), string(storage.Index), string(storage.Snapshot), string(storage.GCMark):
			// a file system's root, or a layout an interrupted export made
		default:
			return nil, false, fmt.Errorf("%s is not empty (it holds %q); export into an empty or new directory", dir, e.Name())
		}
	}
	be, err := local.Create(dir)
	if err != nil {
		return nil, false, err
	}
	if err := be.Save(ctx, storage.Handle{Type: storage.Config}, cfg); err != nil {
		return nil, false, err
	}
	return be, false, nil
}

type exporter struct {
	src      *repo.Repository
	from, to storage.Backend
	mu       sync.Mutex
	verified map[string]int64 // objects whose content matches their name: path -> size
}

func (e *exporter) verifiedObject(h storage.Handle, size int) {
	e.mu.Lock()
	e.verified[objectPath(h)] = int64(size)
	e.mu.Unlock()
}

// present reports whether the export has h intact; a damaged copy (which
// an earlier run cannot have left, but a disk can) is removed.
func (e *exporter) present(ctx context.Context, h storage.Handle) ([]byte, bool, error) {
	data, err := repo.LoadWhole(ctx, e.to, h)
	if storage.IsNotExist(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if hash.Sum(data).String() == h.Name {
		return data, true, nil
	}
	if err := e.to.Remove(ctx, h); err != nil {
		return nil, false, err
	}
	return nil, false, nil
}

// markVerified records an object written by this run (an index file).
func (e *exporter) markVerified(ctx context.Context, h storage.Handle) error {
	data, ok, err := e.present(ctx, h)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("export: %s was not written", h)
	}
	e.verifiedObject(h, len(data))
	return nil
}

// copyObject copies one object verbatim (after checking it against its
// name), unless the export has it already.
func (e *exporter) copyObject(ctx context.Context, h storage.Handle) error {
	data, ok, err := e.present(ctx, h)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if !ok {
		if data, err = repo.LoadWhole(ctx, e.from, h); err != nil {
			return fmt.Errorf("export: %w", err)
		}
		if hash.Sum(data).String() != h.Name {
			return fmt.Errorf("export: the source's %s does not match its name (damaged; run `floe check`)", h)
		}
		if err := e.to.Save(ctx, h, data); err != nil {
			return fmt.Errorf("export: %w", err)
		}
	}
	e.verifiedObject(h, len(data))
	return nil
}

// copyPacks copies the packs verbatim, conns at a time, and returns their
// index entries, read from their headers, and how many it copied.
func (e *exporter) copyPacks(ctx context.Context, ids []hash.ID, conns int, prog *Progress) ([]repo.PackInfo, int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu     sync.Mutex
		infos  []repo.PackInfo
		copied int
		first  error
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
		cancel()
	}
	par.For(ctx, len(ids), conns, func(_, i int) {
		id := ids[i]
		h := storage.Handle{Type: storage.Pack, Name: id.String()}
		data, ok, err := e.present(ctx, h)
		if err != nil {
			fail(fmt.Errorf("export: %w", err))
			return
		}
		var info repo.PackInfo
		if ok {
			if info, err = repo.PackInfoFromBytes(id, data); err != nil {
				// intact bytes that do not decode: not from this source
				fail(fmt.Errorf("export: %s in the export directory: %w", h, err))
				return
			}
		} else {
			if data, err = repo.LoadWhole(ctx, e.from, h); err != nil {
				fail(fmt.Errorf("export: %w", err))
				return
			}
			prog.BytesRead.Add(int64(len(data)))
			if info, err = repo.PackInfoFromBytes(id, data); err != nil {
				fail(fmt.Errorf("export: the source's %w (run `floe check`)", err))
				return
			}
			if err := e.to.Save(ctx, h, data); err != nil {
				fail(fmt.Errorf("export: %w", err))
				return
			}
			prog.BytesSent.Add(int64(len(data)))
		}
		e.verifiedObject(h, len(data))
		mu.Lock()
		infos = append(infos, info)
		if !ok {
			copied++
		}
		mu.Unlock()
		prog.BlobsDone.Add(int64(len(info.Blobs)))
	})
	if first != nil {
		return nil, 0, first
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	sort.Slice(infos, func(i, j int) bool { return string(infos[i].ID[:]) < string(infos[j].ID[:]) })
	return infos, copied, nil
}

func listNames(ctx context.Context, be storage.Backend, t storage.FileType) ([]string, error) {
	var names []string
	err := be.List(ctx, t, func(fi storage.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	})
	sort.Strings(names)
	return names, err
}
