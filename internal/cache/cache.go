// Package cache keeps, on the backed-up host, what its next backup needs
// from earlier snapshots: their records and trees. A write-only key cannot
// read them from the repository, and a full key saves decrypting them. The
// cache is an optimisation only: deleting it costs a slower next backup.
// Layout (docs/FORMAT.md "Local cache"):
//
//	<dir>/<repository id>/snapshots/<snapshot id>.json   snapshot record
//	<dir>/<repository id>/trees/<snapshot id>            trees of that snapshot
//	<dir>/<repository id>/index/table                    the index, built (repo's index cache)
package cache

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

// keepPerSeries is how many snapshots per host and path set keep their trees.
const keepPerSeries = 2

// Cache is the cache of one repository.
type Cache struct {
	dir string
}

// DefaultDir returns $XDG_CACHE_HOME/floe, or ~/.cache/floe.
func DefaultDir() (string, error) {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "floe"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory: set XDG_CACHE_HOME or HOME: %w", err)
	}
	return filepath.Join(home, ".cache", "floe"), nil
}

// Open opens (creating) the cache of repository repoID below base.
func Open(base, repoID string) (*Cache, error) {
	if _, err := hash.Parse(repoID); err != nil {
		return nil, fmt.Errorf("cache: bad repository id: %w", err)
	}
	dir := filepath.Join(base, repoID)
	for _, sub := range []string{"snapshots", "trees"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("create cache: %w", err)
		}
	}
	tag := filepath.Join(base, "CACHEDIR.TAG")
	if _, err := os.Stat(tag); errors.Is(err, os.ErrNotExist) {
		_ = os.WriteFile(tag, []byte("Signature: 8a477f597d28d172789f06886806bc55\n# This is a floe cache; see https://bford.info/cachedir/\n"), 0o600)
	}
	return &Cache{dir: dir}, nil
}

// IndexDir returns the directory of the index cache of repository repoID
// below base (repo.Repository.SetIndexCache), or "" for a repository id
// that is not one. The repository package keeps it: it alone knows the
// index.
func IndexDir(base, repoID string) string {
	if _, err := hash.Parse(repoID); err != nil {
		return ""
	}
	return filepath.Join(base, repoID, "index")
}

// TreeWriter collects the trees of a backup in progress.
type TreeWriter struct {
	mu    sync.Mutex
	f     *os.File
	w     *bufio.Writer
	seen  map[hash.ID]bool
	err   error
	cache *Cache
}

// NewTreeWriter starts collecting trees into a temporary file.
func (c *Cache) NewTreeWriter() (*TreeWriter, error) {
	f, err := os.CreateTemp(filepath.Join(c.dir, "trees"), ".tmp-")
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return &TreeWriter{f: f, w: bufio.NewWriterSize(f, 1<<20), seen: map[hash.ID]bool{}, cache: c}, nil
}

// Add records one tree (safe for concurrent use).
func (t *TreeWriter) Add(id hash.ID, plain []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err != nil || t.seen[id] {
		return
	}
	t.seen[id] = true
	var hdr [32 + binary.MaxVarintLen64]byte
	copy(hdr[:], id[:])
	n := binary.PutUvarint(hdr[32:], uint64(len(plain)))
	if _, err := t.w.Write(hdr[:32+n]); err != nil {
		t.err = err
		return
	}
	_, t.err = t.w.Write(plain)
}

// Abort drops the collected trees.
func (t *TreeWriter) Abort() {
	t.f.Close()
	os.Remove(t.f.Name())
}

// Commit stores the trees and the record of snapshot rec, then drops the
// trees of older snapshots of the same host and paths.
func (t *TreeWriter) Commit(rec *snapshot.Record) error {
	c := t.cache
	if t.err == nil {
		t.err = t.w.Flush()
	}
	if t.err == nil {
		t.err = t.f.Close()
	} else {
		t.f.Close()
	}
	if t.err != nil {
		os.Remove(t.f.Name())
		return fmt.Errorf("cache: %w", t.err)
	}
	if err := os.Rename(t.f.Name(), filepath.Join(c.dir, "trees", rec.ID.String())); err != nil {
		os.Remove(t.f.Name())
		return fmt.Errorf("cache: %w", err)
	}
	return c.AddSnapshot(rec)
}

// AddSnapshot records a snapshot (without trees) and trims old entries.
func (c *Cache) AddSnapshot(rec *snapshot.Record) error {
	b, err := snapshot.MarshalSnapshot(rec.Snapshot)
	if err != nil {
		return err
	}
	p := filepath.Join(c.dir, "snapshots", rec.ID.String()+".json")
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	c.trim(rec)
	return nil
}

// Snapshots lists the cached snapshot records, oldest first.
func (c *Cache) Snapshots() []*snapshot.Record {
	ents, _ := os.ReadDir(filepath.Join(c.dir, "snapshots"))
	var out []*snapshot.Record
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		id, err := hash.Parse(name)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(c.dir, "snapshots", e.Name()))
		if err != nil {
			continue
		}
		sn, err := snapshot.UnmarshalSnapshot(b)
		if err != nil {
			continue // a damaged cache entry only costs re-reading
		}
		out = append(out, &snapshot.Record{ID: id, Snapshot: sn})
	}
	snapshot.SortByTime(out)
	return out
}

// Latest returns the newest cached snapshot of host with exactly these
// paths whose trees are cached.
func (c *Cache) Latest(host string, paths []string) *snapshot.Record {
	all := c.Snapshots()
	for i := len(all) - 1; i >= 0; i-- {
		s := all[i]
		if s.Hostname == host && snapshot.SamePaths(s.Paths, paths) {
			if _, err := os.Stat(filepath.Join(c.dir, "trees", s.ID.String())); err == nil {
				return s
			}
		}
	}
	return nil
}

// trim removes trees of all but the newest keepPerSeries snapshots of the
// series of rec, and records of snapshots older than those.
func (c *Cache) trim(rec *snapshot.Record) {
	var series []*snapshot.Record
	for _, s := range c.Snapshots() {
		if s.Hostname == rec.Hostname && snapshot.SamePaths(s.Paths, rec.Paths) {
			series = append(series, s)
		}
	}
	for i := 0; i+keepPerSeries < len(series); i++ {
		os.Remove(filepath.Join(c.dir, "trees", series[i].ID.String()))
		os.Remove(filepath.Join(c.dir, "snapshots", series[i].ID.String()+".json"))
	}
}

// Trees loads the cached trees of a snapshot. A missing or damaged file
// gives an empty set (the backup then reads the files again).
func (c *Cache) Trees(snapID hash.ID) *Trees {
	f, err := os.Open(filepath.Join(c.dir, "trees", snapID.String()))
	if err != nil {
		return &Trees{m: map[hash.ID][]byte{}}
	}
	defer f.Close()
	m, err := DecodeTrees(bufio.NewReader(f))
	if err != nil {
		return &Trees{m: map[hash.ID][]byte{}}
	}
	return &Trees{m: m}
}

// DecodeTrees reads the tree file format: (id, uvarint length, bytes)*.
func DecodeTrees(r io.ByteReader) (map[hash.ID][]byte, error) {
	rd, ok := r.(io.Reader)
	if !ok {
		return nil, errors.New("DecodeTrees needs an io.Reader")
	}
	m := map[hash.ID][]byte{}
	for {
		var id hash.ID
		if _, err := io.ReadFull(rd, id[:1]); err == io.EOF {
			return m, nil
		} else if err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(rd, id[1:]); err != nil {
			return nil, fmt.Errorf("cached trees: %w", err)
		}
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, fmt.Errorf("cached trees: %w", err)
		}
		// The bound is the format's (the writer caches every tree a
		// backup stores): it was 64 MiB, so a snapshot with one tree
		// above that (a directory of a few hundred thousand files, or
		// a file of a million chunks) lost its whole cache at every
		// backup, and a host with a write-only key or a server backup
		// token then read all its files again each time.
		if n > snapshot.MaxTreeSize {
			return nil, fmt.Errorf("cached trees: tree of %d bytes is too large", n)
		}
		b, err := readClaimed(rd, int(n))
		if err != nil {
			return nil, fmt.Errorf("cached trees: %w", err)
		}
		m[id] = b
	}
}

// readClaimed reads n bytes that a length field claims, allocating as
// they come rather than what the length says (a cut-off file costs what
// it holds), and doubling up to exactly n (no slack kept).
func readClaimed(rd io.Reader, n int) ([]byte, error) {
	b := make([]byte, 0, min(n, 1<<20))
	for len(b) < n {
		if len(b) == cap(b) {
			b = append(make([]byte, 0, min(n, 2*cap(b))), b...)
		}
		k, err := rd.Read(b[len(b):cap(b)])
		b = b[:len(b)+k]
		if err == io.EOF && len(b) < n {
			return nil, io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			return nil, err
		}
	}
	return b, nil
}

// Trees are the cached trees of one snapshot.
type Trees struct {
	m map[hash.ID][]byte
}

// Len returns the number of trees.
func (t *Trees) Len() int { return len(t.m) }

// LoadTree returns a cached tree, verifying nothing but its encoding: the
// cache lives on the host that wrote it.
func (t *Trees) LoadTree(_ context.Context, ref hash.Ref) (*snapshot.Tree, error) {
	b, ok := t.m[ref.ID]
	if !ok {
		return nil, fmt.Errorf("tree %s not cached", ref.Short())
	}
	return snapshot.DecodeTree(b)
}

// Clear removes the whole cache of this repository.
func (c *Cache) Clear() error { return os.RemoveAll(c.dir) }

// Dir returns the cache directory.
func (c *Cache) Dir() string { return c.dir }
