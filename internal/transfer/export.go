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
	Progress    ui.Progress
	// Limits, if set, applies to the export directory too.
	Limits *connect.Limits

	// NewKey, if set, gives the export one fresh key record of its own
	// instead of copies of all the source's key records, so that no
	// password or key file of the source opens it (docs: README "Export").
	// The record seals the source's master secrets, as every full key
	// does: blobs and trees are stored as in the source.
	NewKey *NewKey

	wrapOut func(storage.Backend) storage.Backend // tests: interrupt the export
}

// NewKey is the export's own credential: a passphrase, or, when Password
// is nil, a key file that Export hands to SaveKeyFile as soon as the key
// record exists (before any data is written, so that an interrupted
// export is never left without its key).
type NewKey struct {
	Password    []byte
	SaveKeyFile func(*repo.KeyFile) error
}

// ExportResult summarizes an export.
type ExportResult struct {
	Dir       string
	Manifest  *Manifest
	Packs     int    // packs in the export
	Copied    int    // packs written by this run (the others were there from an interrupted run)
	Bytes     uint64 // size of all the export's files
	Resumed   bool   // an interrupted export was continued
	BlobCount int    // blobs the snapshots need
	// KeyID is the export's own key record (NewKey). A continued export
	// keeps the key it has: KeyID is then empty.
	KeyID string
}

// Export writes the snapshots snaps of src to dir as a self-contained
// repository with src's config and keys (so the same password or key file
// opens it; or one key of its own, opts.NewKey): the blobs the snapshots
// need and nothing else, written into new packs by SaveBlob (the same
// stored bytes and IDs as in src), signed index files for them, and the
// snapshot records verbatim. Then it writes MANIFEST.json (every file's path, size and
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
	prog := newProgress(opts.Progress)
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

	prog.phase("export")
	// only the blobs the snapshots need, through the repository's own
	// write path: new packs, signed index files. Blobs are convergent,
	// so their IDs, the trees and the snapshot records stay the same, and
	// no other host's data rides along in a shared pack.
	exp, err := src.Sibling(ctx, out)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	// keys: the source's records, or one fresh record (NewKey)
	if err := e.writeKeys(ctx, exp, opts.NewKey, res); err != nil {
		return nil, err
	}
	if err := exp.LoadIndex(ctx); err != nil { // an interrupted run's packs count
		return nil, fmt.Errorf("export: %w", err)
	}
	prog.snapshots(len(snaps))
	before := exp.SavedStats()
	c := newCopier(ctx, src, exp, true, Options{Connections: conns}.withConnections(), prog)
	for _, s := range snaps {
		_, err := c.copySnapshot(s.Tree)
		if err == nil {
			err = c.flush()
		}
		if err != nil {
			c.abort()
			return nil, c.explain(ctx, s, err)
		}
	}
	c.stop()
	res.BlobCount = len(c.blobs) + len(c.trees)
	res.Copied = int(statsSince(exp.SavedStats(), before).Packs)
	for _, s := range snaps {
		if err := e.copyObject(ctx, storage.Handle{Type: storage.Snapshot, Name: s.ID.String()}); err != nil {
			return nil, err
		}
		prog.snapshotDone()
	}

	// the manifest, last
	prog.phase("manifest")
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
		if h.Type == storage.Pack {
			res.Packs++
		}
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
			return fmt.Errorf("export: the source's %s does not match its name (%w)", h, ErrSourceDamaged)
		}
		if err := e.to.Save(ctx, h, data); err != nil {
			return fmt.Errorf("export: %w", err)
		}
	}
	e.verifiedObject(h, len(data))
	return nil
}

// writeKeys gives the export its key records: copies of the source's,
// or one new record of nk's credential. An export continued keeps the
// records it has.
func (e *exporter) writeKeys(ctx context.Context, exp *repo.Repository, nk *NewKey, res *ExportResult) error {
	if nk == nil {
		keys, err := listNames(ctx, e.from, storage.Key)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := e.copyObject(ctx, storage.Handle{Type: storage.Key, Name: k}); err != nil {
				return err
			}
		}
		return nil
	}
	have, err := listNames(ctx, e.to, storage.Key)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if len(have) > 0 {
		return nil
	}
	id, kf, err := exp.AddKey(ctx, nk.Password, false)
	if err != nil {
		return fmt.Errorf("export: the new key: %w", err)
	}
	if kf != nil {
		if nk.SaveKeyFile == nil {
			return errors.New("export: a new key file, but nowhere to save it")
		}
		if err := nk.SaveKeyFile(kf); err != nil {
			_ = e.to.Remove(ctx, storage.Handle{Type: storage.Key, Name: id})
			return fmt.Errorf("export: save the new key file: %w", err)
		}
	}
	res.KeyID = id
	return nil
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
