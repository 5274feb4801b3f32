package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// The manifest of an export (docs: `floe export --help`).
const (
	ManifestName     = "MANIFEST.json"
	ManifestSumName  = "MANIFEST.json.b3"
	manifestVersion  = 1
	maxManifestBytes = 1 << 30
)

// Manifest lists every file of an export with its size and BLAKE3-256
// hash, the exported snapshots and where they came from.
type Manifest struct {
	Version          int            `json:"version"`
	Created          time.Time      `json:"created"`
	SourceRepository string         `json:"source_repository"`
	Snapshots        []hash.ID      `json:"snapshots"`
	Files            []ManifestFile `json:"files"`
}

// ManifestFile is one file of an export; Path is relative to the export
// directory, with forward slashes.
type ManifestFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	BLAKE3 string `json:"blake3"`
}

// ErrBadExport is wrapped by the errors of VerifyExport.
var ErrBadExport = errors.New("the export is incomplete or damaged")

// ErrSourceDamaged and ErrDestinationDamaged are wrapped by errors about
// damage found in the source or destination repository of a transfer.
var (
	ErrSourceDamaged      = errors.New("the source repository is damaged")
	ErrDestinationDamaged = errors.New("the destination repository is damaged")
)

// ExportError lists what is wrong with an export directory.
type ExportError struct {
	Dir      string
	Problems []string
	Count    int
}

func (e *ExportError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "export %s: %v: %s; nothing was imported", e.Dir, ErrBadExport, ui.Count(e.Count, "problem"))
	listProblems(&b, e.Problems, e.Count, 20)
	return b.String()
}

func (e *ExportError) Unwrap() error { return ErrBadExport }

// objectPath is the file of h relative to a repository directory, as the
// local backend lays it out (docs/FORMAT.md "Layout").
func objectPath(h storage.Handle) string {
	switch h.Type {
	case storage.Config:
		return "config"
	case storage.Pack:
		return path.Join(string(h.Type), h.Name[:2], h.Name)
	default:
		return path.Join(string(h.Type), h.Name)
	}
}

// parseObjectPath is the reverse of objectPath; it accepts only the
// layout's names, so a hostile manifest cannot name other files.
func parseObjectPath(p string) (storage.Handle, bool) {
	if p == "config" {
		return storage.Handle{Type: storage.Config}, true
	}
	parts := strings.Split(p, "/")
	var h storage.Handle
	switch {
	case len(parts) == 2 && parts[0] != string(storage.Pack):
		h = storage.Handle{Type: storage.FileType(parts[0]), Name: parts[1]}
	case len(parts) == 3 && parts[0] == string(storage.Pack):
		h = storage.Handle{Type: storage.Pack, Name: parts[2]}
		if !strings.HasPrefix(parts[2], parts[1]) || len(parts[1]) != 2 {
			return h, false
		}
	default:
		return h, false
	}
	if h.Validate() != nil || h.Type == storage.Config {
		return h, false
	}
	return h, true
}

// writeFileAtomic writes data to dir/name through a synced temporary
// file and a rename, then syncs the directory.
func writeFileAtomic(dir, name string, data []byte) error {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, ".tmp-"+name+"-"+hex.EncodeToString(rnd[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", filepath.Join(dir, name), err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// writeManifest writes MANIFEST.json, then MANIFEST.json.b3 (in the
// format of b3sum, so `b3sum -c MANIFEST.json.b3` checks it too).
func writeManifest(dir string, m *Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if err := writeFileAtomic(dir, ManifestName, data); err != nil {
		return err
	}
	sum := hash.Sum(data)
	return writeFileAtomic(dir, ManifestSumName, []byte(hex.EncodeToString(sum[:])+"  "+ManifestName+"\n"))
}

// hashFile returns the size and BLAKE3-256 of a regular file (not
// following a symlink).
func hashFile(p string) (int64, string, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return 0, "", err
	}
	if !fi.Mode().IsRegular() {
		return 0, "", fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	f, err := os.Open(p)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := hash.NewWriter()
	n, err := io.Copy(h, f)
	if err != nil {
		return n, "", err
	}
	return n, h.Sum().String(), nil
}

// VerifyExport checks an export directory against its manifest: the
// manifest against MANIFEST.json.b3, then every listed file's presence,
// size and BLAKE3 hash (workers files at a time). Files the manifest does
// not list are a problem when the repository would read them (objects in
// config, keys, data, index, snapshots, gc); others (lost+found, a
// desktop's trash) are ignored. All problems are returned together in an
// *ExportError.
func VerifyExport(ctx context.Context, dir string, workers int) (*Manifest, error) {
	bad := func(format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		return &ExportError{Dir: dir, Problems: []string{msg}, Count: 1}
	}
	sumData, err := os.ReadFile(filepath.Join(dir, ManifestSumName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if _, serr := os.Stat(dir); serr != nil {
				return nil, fmt.Errorf("export %s: %w", dir, serr)
			}
			return nil, bad("%s is missing: the export was not finished (interrupted?), or this is not an export directory", ManifestSumName)
		}
		return nil, fmt.Errorf("export %s: %w", dir, err)
	}
	fields := strings.Fields(string(sumData))
	want, err := hex.DecodeString(firstOr(fields, ""))
	if err != nil || len(want) != 32 {
		return nil, bad("%s does not hold a BLAKE3 hash", ManifestSumName)
	}
	fi, err := os.Lstat(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, bad("%s: %v", ManifestName, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxManifestBytes {
		return nil, bad("%s is not a regular file of a sane size", ManifestName)
	}
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, bad("%s: %v", ManifestName, err)
	}
	if sum := hash.Sum(data); !bytes.Equal(sum[:], want) {
		return nil, bad("%s does not match its checksum in %s (truncated or altered)", ManifestName, ManifestSumName)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, bad("%s: %v", ManifestName, err)
	}
	if m.Version != manifestVersion {
		return nil, bad("%s: version %d is not supported (this floe reads version %d)", ManifestName, m.Version, manifestVersion)
	}

	var problems errorList
	listed := map[string]bool{}
	var files []ManifestFile
	hasConfig := false
	for _, f := range m.Files {
		h, ok := parseObjectPath(f.Path)
		if !ok {
			problems.add("%s: the manifest lists a path that is not part of a repository", strconv.Quote(f.Path))
			continue
		}
		if listed[f.Path] {
			problems.add("%s: listed twice in the manifest", f.Path)
			continue
		}
		listed[f.Path] = true
		if h.Type == storage.Config {
			hasConfig = true
		} else if f.BLAKE3 != h.Name {
			// objects are named by the BLAKE3 of their bytes
			problems.add("%s: the manifest's hash does not match the object's name", f.Path)
			continue
		}
		files = append(files, f)
	}
	if !hasConfig {
		problems.add("config: not listed in the manifest")
	}
	for _, id := range m.Snapshots {
		if !listed[objectPath(storage.Handle{Type: storage.Snapshot, Name: id.String()})] {
			problems.add("snapshot %s: exported, but its record is not listed in the manifest", id.Short())
		}
	}

	// every listed file: present, complete, unaltered
	par.For(ctx, len(files), max(workers, 1), func(_, i int) {
		f := files[i]
		size, sum, err := hashFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		switch {
		case errors.Is(err, os.ErrNotExist):
			problems.add("%s: missing", f.Path)
		case err != nil:
			problems.add("%s: %v", f.Path, err)
		case size != f.Size:
			problems.add("%s: %d bytes, the manifest says %d (truncated or altered)", f.Path, size, f.Size)
		case sum != f.BLAKE3:
			problems.add("%s: content does not match the manifest's BLAKE3 hash (altered or damaged)", f.Path)
		}
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// objects the manifest does not list
	unlisted, err := repositoryFiles(dir)
	if err != nil {
		return nil, fmt.Errorf("export %s: %w", dir, err)
	}
	for _, p := range unlisted {
		if !listed[p] {
			problems.add("%s: not listed in the manifest (added after the export?)", p)
		}
	}
	if problems.count > 0 {
		sort.Strings(problems.list)
		return nil, &ExportError{Dir: dir, Problems: problems.list, Count: problems.count}
	}
	return &m, nil
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

// repositoryFiles lists the paths (relative, with forward slashes) of the
// files in dir that a repository would read: the config and the objects
// with valid names. Temporary files and anything else are left out.
func repositoryFiles(dir string) ([]string, error) {
	var out []string
	if fi, err := os.Lstat(filepath.Join(dir, "config")); err == nil && !fi.IsDir() {
		out = append(out, "config")
	}
	for _, t := range storage.AllTypes {
		top := filepath.Join(dir, string(t))
		var dirs []string
		if t == storage.Pack {
			entries, err := os.ReadDir(top)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
			for _, e := range entries {
				if e.IsDir() && len(e.Name()) == 2 {
					dirs = append(dirs, filepath.Join(top, e.Name()))
				}
			}
		} else {
			dirs = []string{top}
		}
		for _, d := range dirs {
			entries, err := os.ReadDir(d)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, err
			}
			for _, e := range entries {
				h := storage.Handle{Type: t, Name: e.Name()}
				if h.Validate() != nil {
					continue
				}
				rel, err := filepath.Rel(dir, filepath.Join(d, e.Name()))
				if err != nil {
					return nil, err
				}
				out = append(out, filepath.ToSlash(rel))
			}
		}
	}
	return out, nil
}
