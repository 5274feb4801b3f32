// Package backup saves file system trees (or standard input) as a snapshot.
//
// The pipeline: one walker goroutine lists directories in name order and
// hands regular files to file readers; each reader chunks its file and hands
// the chunks to blob savers, which hash, compress, encrypt and pack them
// (repo.SaveBlob). A directory's tree is encoded and saved once all of its
// entries are done, so walking, reading and saving overlap across both
// cores while the number of chunk buffers in flight bounds memory.
package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/floe-backup/floe/internal/chunker"
	"github.com/floe-backup/floe/internal/fsmeta"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Options describe one backup.
type Options struct {
	Paths []string
	// Images are block devices or raw image files (paths, as Paths) saved
	// as disk images: each is one regular file node of the device's size
	// (with its number and identity, snapshot.Node.DeviceID), zero runs
	// found by content cost nothing, and a device is read whole every time
	// (its node's times do not tell whether it changed).
	Images        []string
	Excludes      []string // patterns; see pathmatch.Matcher
	IExcludes     []string // patterns matched regardless of case
	ExcludeCaches bool     // skip the contents of directories with a valid CACHEDIR.TAG
	// ExcludeIfPresent skips the contents of directories that hold a file
	// of this name: "NAME", or "NAME:HEADER" for a file that starts with
	// HEADER (restic's --exclude-if-present).
	ExcludeIfPresent []string
	// ExcludeLargerThan skips regular files larger than this many bytes
	// below the paths given; 0: no limit.
	ExcludeLargerThan uint64
	OneFileSystem     bool

	// DryRun reads and chunks everything as a backup would, but writes
	// nothing to the repository: Result.ID is null and the snapshot's
	// DataAdded is what would have been added (before compression).
	DryRun bool
	// OnItem, if set, is told about every regular file as the backup
	// saves it (from several goroutines, one call at a time).
	OnItem func(Item)

	Stdin         io.Reader // back up this stream instead of Paths
	StdinFilename string

	Hostname string
	Tags     []string // "a,b" is two tags (snapshot.ParseTags)
	// Time is the snapshot's time; zero: when the backup starts.
	Time time.Time
	// Parent is the snapshot to compare with; nil means the newest snapshot
	// of the same host and paths. Force re-reads every file.
	Parent *snapshot.Record
	Force  bool

	// ParentTrees loads the parent's trees (the repository, or for
	// write-only keys the local cache).
	ParentTrees TreeLoader
	// OnTree, if set, receives every tree saved (the local cache keeps them).
	OnTree func(id hash.ID, plain []byte)

	// Retries is how often a file that changed while being read is read
	// again before it is kept as read and recorded as inconsistent.
	Retries int
	// Frozen says the sources are a frozen file system snapshot.
	Frozen bool
	// SourceRoot, if set, maps a backed-up path (or a directory below one)
	// to the directory its contents are read from, such as a mounted file
	// system snapshot (see package fssnap). The longest matching entry
	// wins. The snapshot's paths and nodes, excludes, progress and error
	// messages all use the original paths; only lstat, reading directories
	// and reading files use the mapped location.
	SourceRoot map[string]string

	Progress       *Progress
	ProgramVersion string
}

// TreeLoader loads trees of earlier snapshots.
type TreeLoader interface {
	LoadTree(ctx context.Context, ref hash.Ref) (*snapshot.Tree, error)
}

// Progress is updated while the backup runs; read it from another goroutine.
type Progress struct {
	FilesDone, BytesDone   atomic.Int64
	FilesTotal, BytesTotal atomic.Int64 // from a scan that runs alongside
	ScanDone               atomic.Bool
	Errors                 atomic.Int64
	current                atomic.Pointer[string]
}

// Current returns the file being read.
func (p *Progress) Current() string {
	if s := p.current.Load(); s != nil {
		return *s
	}
	return ""
}

// Item is a file a backup saved (Options.OnItem).
type Item struct {
	Path string
	// Action is "new", "changed" (read again), "unchanged" (taken from
	// the parent) or "hardlink" (another link to a file saved before).
	Action string
	Size   uint64
}

// FileError is a file that could not be read; the backup goes on without it.
type FileError struct {
	Path string
	Err  error
}

func (e *FileError) Error() string { return fmt.Sprintf("%s: %v", e.Path, e.Err) }
func (e *FileError) Unwrap() error { return e.Err }

// Result of a backup.
type Result struct {
	ID       hash.ID // null after a dry run
	Snapshot *snapshot.Snapshot
	Errors   []*FileError
	DryRun   bool // nothing was written
	// Forged are the stored copies whose bytes did not match their IDs
	// that this backup met (it stored its own copies instead).
	Forged []repo.ForgedCopy
}

// maxChangedListed bounds the consistency record's list of paths.
const maxChangedListed = 1000

type archiver struct {
	r      *repo.Repository
	opts   Options
	params chunker.Params
	match  *pathmatch.Matcher
	marks  []marker // Options.ExcludeIfPresent

	itemMu sync.Mutex // one OnItem call at a time

	dryMu    sync.Mutex
	drySeen  map[hash.ID]bool // blobs a dry run would have added
	dryAdded uint64

	fileJobs  chan *fileJob
	chunkJobs chan *chunkJob
	bufs      chan []byte // chunk buffers: their number bounds memory

	mu        sync.Mutex
	errs      []*FileError
	changed   []string
	nChanged  int
	hardlinks map[[2]uint64]*fileJob

	filesNew, filesChanged, filesUnchanged, dirs, totalBytes atomic.Uint64

	zeroMu  sync.Mutex
	zeroIDs map[int]hash.ID

	sources []sourceMapping // Options.SourceRoot, longest first
	images  map[string]bool // Options.Images, absolute
	// readRdev: the number of the device each image is read from (under
	// mu), which is its snapshot's with --fs-snapshot lvm
	readRdev map[string]uint64

	// anchors are open directories that deep paths are read through
	// (/proc/self/fd/N/rest), so that no path handed to the kernel exceeds
	// PATH_MAX however deep the tree is.
	anchorMu sync.Mutex
	anchors  map[string]*os.File // by full source path
}

// sourceMapping is one entry of Options.SourceRoot.
type sourceMapping struct{ from, to string }

type fileJob struct {
	path    string // the original path
	src     string // where to read it (path unless Options.SourceRoot maps it)
	node    *snapshot.Node
	changed bool // the parent had this file (else new)
	image   bool // Options.Images
	done    chan struct{}
	err     error
}

type chunkJob struct {
	data    []byte
	slot    *hash.Ref
	wg      *sync.WaitGroup
	errp    *atomic.Pointer[error]
	release bool     // return data to the buffer pool
	known   *hash.ID // the key (K), when already known (zero chunks of holes)
}

// future is a tree (or file) being completed.
type future struct {
	done chan struct{}
	ref  hash.Ref
	err  error
}

// Run performs a backup and writes its snapshot.
func Run(ctx context.Context, r *repo.Repository, opts Options) (*Result, error) {
	start := time.Now()
	if opts.Retries == 0 {
		opts.Retries = 2
	}
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	match, err := Excludes(opts.Excludes, opts.IExcludes)
	if err != nil {
		return nil, err
	}
	marks, err := parseMarkers(opts.ExcludeIfPresent)
	if err != nil {
		return nil, err
	}
	sources, err := sourceMappings(opts.SourceRoot)
	if err != nil {
		return nil, err
	}
	a := &archiver{r: r, opts: opts, params: r.ChunkerParams(), match: match, marks: marks, drySeen: map[hash.ID]bool{},
		fileJobs: make(chan *fileJob, 64), chunkJobs: make(chan *chunkJob, 8),
		hardlinks: map[[2]uint64]*fileJob{}, zeroIDs: map[int]hash.ID{}, sources: sources}
	workers := runtime.GOMAXPROCS(0)
	nbufs := 2*workers + 2
	a.bufs = make(chan []byte, nbufs)
	for i := 0; i < nbufs; i++ {
		a.bufs <- nil
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	// One blob saver more than cores: a saver briefly waits on the pack
	// lock or for the reader, and with only one per core a core idles then.
	// Measured on the 2 GiB large set: 20.3 s with 2 savers, 11.9 s with 3,
	// 13.3 s with 4 (more savers only contend for the zstd encoders).
	for i := 0; i < workers+1; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); a.blobSaver(ctx) }()
	}
	var fileWG sync.WaitGroup
	for i := 0; i < workers+1; i++ {
		fileWG.Add(1)
		go func() { defer fileWG.Done(); a.fileReader(ctx) }()
	}

	var paths []string
	var root hash.Ref
	var rootErr error
	if opts.Stdin != nil {
		paths = []string{opts.StdinFilename}
		root, rootErr = a.saveStdin(ctx)
	} else {
		a.images = map[string]bool{}
		for _, p := range opts.Images {
			abs, err := filepath.Abs(p)
			if err == nil {
				a.images[abs] = true
			}
		}
		paths, err = CleanPaths(append(append([]string(nil), opts.Paths...), opts.Images...))
		if err != nil {
			rootErr = err
		} else {
			go a.scan(ctx, paths)
			var parentRoot *snapshot.Tree
			if opts.Parent != nil && !opts.Force && opts.ParentTrees != nil {
				parentRoot, _ = opts.ParentTrees.LoadTree(ctx, opts.Parent.Tree)
				if parentRoot != nil {
					r.RememberRefs(repo.TreeBlob, opts.Parent.Tree)
				}
			}
			f := a.saveRoot(ctx, paths, parentRoot)
			<-f.done
			root, rootErr = f.ref, f.err
		}
	}
	close(a.fileJobs)
	fileWG.Wait()
	close(a.chunkJobs)
	wg.Wait()
	if rootErr != nil {
		// Index the packs that reached storage (a full disk or an
		// interruption stops a backup halfway), so that the retry
		// deduplicates against them instead of uploading them again. Its
		// error is most likely rootErr again (the storage's sticky error);
		// a pack left unindexed is only garbage that prune collects.
		_ = r.FlushStored(context.WithoutCancel(ctx))
		return nil, rootErr
	}
	var saved repo.SaveStats
	if !opts.DryRun {
		if err := r.Flush(ctx); err != nil {
			return nil, fmt.Errorf("store data: %w", err)
		}
		saved = r.SavedStats()
	} else {
		saved.RawBytes = a.dryAdded
	}
	snapTime := start
	if !opts.Time.IsZero() {
		snapTime = opts.Time
	}
	sn := &snapshot.Snapshot{
		Time: snapTime, Hostname: opts.Hostname, Paths: paths, Tags: snapshot.ParseTags(opts.Tags), Tree: root,
		ProgramVersion: opts.ProgramVersion,
		Summary: snapshot.Summary{
			FilesNew: a.filesNew.Load(), FilesChanged: a.filesChanged.Load(), FilesUnchanged: a.filesUnchanged.Load(),
			Dirs: a.dirs.Load(), Errors: uint64(len(a.errs)), TotalBytes: a.totalBytes.Load(),
			DataAdded: saved.RawBytes, DataAddedStored: saved.StoredBytes,
			DurationSeconds: time.Since(start).Seconds(),
		},
		Consistency: snapshot.Consistency{Checked: opts.Stdin == nil, Frozen: opts.Frozen,
			ChangedDuringRead: a.changed, ChangedCount: a.nChanged},
	}
	if opts.Parent != nil {
		sn.Parent = opts.Parent.ID
	}
	if u, err := user.Current(); err == nil {
		sn.Username = u.Username
	}
	sn.UID, sn.GID = uint32(os.Getuid()), uint32(os.Getgid())
	sort.Slice(a.errs, func(i, j int) bool { return a.errs[i].Path < a.errs[j].Path })
	if opts.DryRun {
		return &Result{Snapshot: sn, Errors: a.errs, DryRun: true}, nil
	}
	// A backup that ran longer than half the GC grace period may have
	// deduplicated against data a concurrent prune has since removed:
	// better no snapshot than a broken one.
	if err := r.VerifyReferences(ctx); err != nil {
		return nil, err
	}
	id, err := snapshot.Save(ctx, r, sn)
	if err != nil {
		return nil, err
	}
	return &Result{ID: id, Snapshot: sn, Errors: a.errs, Forged: r.ForgedCopies()}, nil
}

// Excludes compiles exclude patterns: excludes as given, iexcludes
// regardless of case.
func Excludes(excludes, iexcludes []string) (*pathmatch.Matcher, error) {
	m, err := pathmatch.New(excludes)
	if err != nil {
		return nil, fmt.Errorf("exclude %w", err)
	}
	if err := m.Add(iexcludes, true); err != nil {
		return nil, fmt.Errorf("iexclude %w", err)
	}
	return m, nil
}

// marker is one Options.ExcludeIfPresent entry.
type marker struct{ name, header string }

func parseMarkers(list []string) ([]marker, error) {
	var out []marker
	for _, s := range list {
		name, header, _ := strings.Cut(s, ":")
		if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
			return nil, fmt.Errorf("exclude-if-present %q: want a file name, optionally followed by :HEADER", s)
		}
		out = append(out, marker{name, header})
	}
	return out, nil
}

// marked reports whether the directory src (where it is read) holds one
// of the Options.ExcludeIfPresent files.
func (a *archiver) marked(src string) bool {
	for _, m := range a.marks {
		if pathmatch.HasFile(a.shorten(src), m.name, m.header) {
			return true
		}
	}
	return false
}

// tooLarge reports whether Options.ExcludeLargerThan leaves node out.
func (a *archiver) tooLarge(node *snapshot.Node) bool {
	return a.opts.ExcludeLargerThan > 0 && node.Type == snapshot.TypeFile && node.Size > a.opts.ExcludeLargerThan
}

func (a *archiver) report(it Item) {
	if a.opts.OnItem == nil {
		return
	}
	a.itemMu.Lock()
	defer a.itemMu.Unlock()
	a.opts.OnItem(it)
}

// saveBlob stores a blob, or in a dry run counts what storing it would add.
func (a *archiver) saveBlob(ctx context.Context, t repo.BlobType, key hash.ID, data []byte) (hash.Ref, error) {
	if !a.opts.DryRun {
		ref, _, _, err := a.r.SaveBlob(ctx, t, key, data)
		return ref, err
	}
	// a dry run encodes the blob to learn its ID (what a backup would
	// store), but stores nothing
	ref := a.r.RefOf(t, data)
	if a.r.HasBlob(repo.BlobHandle{Type: t, ID: ref.ID}) {
		return ref, nil
	}
	a.dryMu.Lock()
	if !a.drySeen[ref.ID] {
		a.drySeen[ref.ID] = true
		a.dryAdded += uint64(len(data))
	}
	a.dryMu.Unlock()
	return ref, nil
}

// CleanPaths makes the paths absolute and drops those inside another.
func CleanPaths(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, errors.New("nothing to back up: give at least one path")
	}
	var out []string
	for _, p := range in {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("path %s: %w", p, err)
		}
		if _, err := os.Lstat(abs); err != nil {
			return nil, fmt.Errorf("path %s: %w", p, err)
		}
		out = append(out, abs)
	}
	sort.Strings(out)
	kept := out[:0]
	for _, p := range out {
		if len(kept) > 0 {
			last := kept[len(kept)-1]
			if p == last || last == "/" || strings.HasPrefix(p, last+"/") {
				continue
			}
		}
		kept = append(kept, p)
	}
	return kept, nil
}

// sourceMappings checks Options.SourceRoot and sorts it longest first.
func sourceMappings(m map[string]string) ([]sourceMapping, error) {
	var out []sourceMapping
	for from, to := range m {
		if !filepath.IsAbs(from) || filepath.Clean(from) != from {
			return nil, fmt.Errorf("source root: %q is not an absolute, clean path", from)
		}
		if !filepath.IsAbs(to) {
			return nil, fmt.Errorf("source root of %s: %q is not an absolute path", from, to)
		}
		out = append(out, sourceMapping{from, filepath.Clean(to)})
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i].from) > len(out[j].from) })
	return out, nil
}

// src returns where to read the original path p: mapped by
// Options.SourceRoot, and shortened through an anchor when it is long.
func (a *archiver) src(p string) string {
	full := p
	for _, m := range a.sources {
		if pathmatch.Within(p, m.from) {
			full = pathmatch.Rebase(p, m.from, m.to)
			break
		}
	}
	return a.shorten(full)
}

// anchorAfter is the path length beyond which a directory becomes an
// anchor: its children's paths then stay far below PATH_MAX (4096), as a
// name is at most 255 bytes.
const anchorAfter = 1024

// shorten rewrites a long path to start at its nearest anchor.
func (a *archiver) shorten(full string) string {
	if len(full) <= anchorAfter {
		return full
	}
	a.anchorMu.Lock()
	defer a.anchorMu.Unlock()
	for dir := filepath.Dir(full); len(dir) > 1; dir = filepath.Dir(dir) {
		if f, ok := a.anchors[dir]; ok {
			return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) + full[len(dir):]
		}
	}
	return full
}

// anchor opens dir (an original path) as an anchor if its read path is
// long; the returned function closes it once its subtree is saved.
func (a *archiver) anchor(dir string) func() {
	sp := a.src(dir)
	if len(sp) <= anchorAfter {
		return func() {}
	}
	f, err := os.Open(sp)
	if err != nil {
		return func() {} // reading the directory reports the error
	}
	full := dir
	for _, m := range a.sources {
		if pathmatch.Within(dir, m.from) {
			full = pathmatch.Rebase(dir, m.from, m.to)
			break
		}
	}
	a.anchorMu.Lock()
	if a.anchors == nil {
		a.anchors = map[string]*os.File{}
	}
	a.anchors[full] = f
	a.anchorMu.Unlock()
	return func() {
		a.anchorMu.Lock()
		delete(a.anchors, full)
		a.anchorMu.Unlock()
		f.Close()
	}
}

// origErr rewrites an error about src, the location read for the original
// path orig, to name orig: users know their files by their real paths, not
// by a temporary snapshot mount.
func origErr(err error, orig, src string) error {
	if err == nil || orig == src {
		return err
	}
	var pe *os.PathError
	if errors.As(err, &pe) && pe == err && pathmatch.Within(pe.Path, src) {
		return &os.PathError{Op: pe.Op, Path: pathmatch.Rebase(pe.Path, src, orig), Err: pe.Err}
	}
	if msg := err.Error(); strings.Contains(msg, src) {
		return &renamedError{msg: strings.ReplaceAll(msg, src, orig), err: err}
	}
	return err
}

// renamedError is an error whose message names the original path.
type renamedError struct {
	msg string
	err error
}

func (e *renamedError) Error() string { return e.msg }
func (e *renamedError) Unwrap() error { return e.err }

func (a *archiver) fail(path string, err error) {
	a.opts.Progress.Errors.Add(1)
	a.mu.Lock()
	a.errs = append(a.errs, &FileError{Path: path, Err: err})
	a.mu.Unlock()
}

func (a *archiver) recordChanged(path string) {
	a.mu.Lock()
	a.nChanged++
	if len(a.changed) < maxChangedListed {
		a.changed = append(a.changed, path)
	}
	a.mu.Unlock()
}

// saveRoot builds the tree of "/" down to each backed-up path: parents are
// included with their metadata so that restore recreates the full paths.
func (a *archiver) saveRoot(ctx context.Context, paths []string, parent *snapshot.Tree) *future {
	type trie struct {
		children map[string]*trie
		target   bool
	}
	root := &trie{children: map[string]*trie{}}
	for _, p := range paths {
		t := root
		if p == "/" {
			t.target = true
			continue
		}
		for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
			next, ok := t.children[c]
			if !ok {
				next = &trie{children: map[string]*trie{}}
				t.children[c] = next
			}
			t = next
		}
		t.target = true
	}
	var build func(dir string, t *trie, parent *snapshot.Tree) *future
	build = func(dir string, t *trie, parent *snapshot.Tree) *future {
		if t.target {
			return a.saveDir(ctx, dir, parent, a.deviceOf(a.src(dir)))
		}
		names := make([]string, 0, len(t.children))
		for n := range t.children {
			names = append(names, n)
		}
		sort.Strings(names)
		var entries []entry
		for _, name := range names {
			p := filepath.Join(dir, name)
			sp := a.src(p)
			node, err := fsmeta.NodeFromPath(sp, name)
			if err != nil {
				return done(hash.Ref{}, fmt.Errorf("read %s: %w", p, origErr(err, p, sp)))
			}
			child := t.children[name]
			e := entry{node: node}
			if node.Type == snapshot.TypeDir {
				e.sub = build(p, child, a.parentSubtree(ctx, parent, name))
			} else if child.target {
				e = a.saveEntry(ctx, p, node, parent, 0)
			}
			entries = append(entries, e)
		}
		return a.finishTree(ctx, dir, entries)
	}
	return build("/", root, parent)
}

func (a *archiver) deviceOf(path string) uint64 {
	n, err := fsmeta.NodeFromPath(path, "x")
	if err != nil {
		return 0
	}
	return n.Device
}

func done(ref hash.Ref, err error) *future {
	f := &future{done: make(chan struct{}), ref: ref, err: err}
	close(f.done)
	return f
}

// entry is one child of a directory being saved.
type entry struct {
	node *snapshot.Node
	sub  *future  // directories
	file *fileJob // regular files being read
	link *fileJob // hard link to a file read elsewhere in this backup
}

func (a *archiver) parentSubtree(ctx context.Context, parent *snapshot.Tree, name string) *snapshot.Tree {
	if parent == nil || a.opts.ParentTrees == nil {
		return nil
	}
	pn := parent.Find(name)
	if pn == nil || pn.Type != snapshot.TypeDir || pn.Subtree.IsNull() {
		return nil
	}
	t, err := a.opts.ParentTrees.LoadTree(ctx, pn.Subtree)
	if err != nil {
		return nil // a missing parent tree only costs re-reading
	}
	// an unchanged directory encodes to the parent's tree: SaveBlob then
	// finds it by its key without compressing and encrypting it
	a.r.RememberRefs(repo.TreeBlob, pn.Subtree)
	return t
}

// saveDir saves the directory at path, whose entries are compared with
// parent (the same directory in the parent snapshot, or nil).
func (a *archiver) saveDir(ctx context.Context, path string, parent *snapshot.Tree, dev uint64) *future {
	if ctx.Err() != nil {
		return done(hash.Ref{}, ctx.Err())
	}
	a.dirs.Add(1)
	release := a.anchor(path)
	src := a.src(path)
	ents, err := fsmeta.ReadDir(src)
	if err != nil {
		a.fail(path, origErr(err, path, src))
		ents = nil
	}
	if a.opts.ExcludeCaches && pathmatch.HasCacheTag(src) {
		kept := ents[:0]
		for _, e := range ents {
			if e.Name() == pathmatch.CacheTag {
				kept = append(kept, e)
			}
		}
		ents = kept
	}
	if len(a.marks) > 0 && a.marked(src) {
		ents = nil
	}
	entries := make([]entry, 0, len(ents))
	for _, de := range ents {
		name := de.Name()
		p := path + "/" + name
		if path == "/" {
			p = "/" + name
		}
		if a.match.Match(p, de.IsDir()) {
			continue
		}
		sp := a.src(p)
		node, err := fsmeta.NodeFromPath(sp, name)
		if err != nil {
			a.fail(p, origErr(err, p, sp))
			continue
		}
		if a.tooLarge(node) {
			continue
		}
		entries = append(entries, a.saveEntry(ctx, p, node, parent, dev))
	}
	f := a.finishTree(ctx, path, entries)
	go func() { <-f.done; release() }()
	return f
}

// saveEntry starts saving one directory entry.
func (a *archiver) saveEntry(ctx context.Context, p string, node *snapshot.Node, parent *snapshot.Tree, dev uint64) entry {
	e := entry{node: node}
	if a.images[p] && node.Type != snapshot.TypeFile {
		return a.saveImage(ctx, p, node, parent)
	}
	switch node.Type {
	case snapshot.TypeDir:
		if a.opts.OneFileSystem && dev != 0 && node.Device != dev {
			e.sub = a.emptyTree(ctx)
			return e
		}
		e.sub = a.saveDir(ctx, p, a.parentSubtree(ctx, parent, node.Name), dev)
	case snapshot.TypeFile:
		a.totalBytes.Add(node.Size)
		if a.images[p] {
			return a.saveImage(ctx, p, node, parent)
		}
		var pn *snapshot.Node
		if parent != nil {
			pn = parent.Find(node.Name)
		}
		if node.Links > 1 {
			key := [2]uint64{node.Device, node.Inode}
			a.mu.Lock()
			first, seen := a.hardlinks[key]
			a.mu.Unlock()
			if seen {
				e.link = first
				return e
			}
		}
		if pn != nil && !a.opts.Force && unchanged(pn, node) && a.haveAll(pn.Content) {
			node.Content = pn.Content
			node.ChunkSizes = pn.ChunkSizes
			a.filesUnchanged.Add(1)
			a.opts.Progress.FilesDone.Add(1)
			a.opts.Progress.BytesDone.Add(int64(node.Size))
			a.report(Item{Path: p, Action: "unchanged", Size: node.Size})
			return e
		}
		if pn != nil && pn.Type == snapshot.TypeFile && len(pn.Content) > 0 {
			// a changed file keeps most of its chunks: SaveBlob finds
			// those by their keys without compressing and encrypting them
			a.r.RememberRefs(repo.DataBlob, pn.Content...)
		}
		job := &fileJob{path: p, src: a.src(p), node: node, changed: pn != nil, done: make(chan struct{})}
		if node.Links > 1 {
			a.mu.Lock()
			a.hardlinks[[2]uint64{node.Device, node.Inode}] = job
			a.mu.Unlock()
		}
		select {
		case a.fileJobs <- job:
		case <-ctx.Done():
			job.err = ctx.Err()
			close(job.done)
		}
		e.file = job
	}
	return e
}

// saveImage starts saving an image (Options.Images).
func (a *archiver) saveImage(ctx context.Context, p string, node *snapshot.Node, parent *snapshot.Tree) entry {
	src := a.src(p)
	wasFile := node.Type == snapshot.TypeFile
	node, err := a.prepareImage(p, src, node)
	if err != nil {
		a.fail(p, origErr(err, p, src))
		return entry{node: node, file: failedJob(p, err)}
	}
	if !wasFile {
		a.totalBytes.Add(node.Size)
	}
	e := entry{node: node}
	var pn *snapshot.Node
	if parent != nil {
		pn = parent.Find(node.Name)
	}
	// a device is always read: its node's times say nothing of its blocks
	if node.Rdev == 0 && pn != nil && !a.opts.Force && unchanged(pn, node) && a.haveAll(pn.Content) {
		node.Content, node.ChunkSizes, node.Sparse = pn.Content, pn.ChunkSizes, pn.Sparse
		a.filesUnchanged.Add(1)
		a.opts.Progress.FilesDone.Add(1)
		a.opts.Progress.BytesDone.Add(int64(node.Size))
		a.report(Item{Path: p, Action: "unchanged", Size: node.Size})
		return e
	}
	if pn != nil && pn.Type == snapshot.TypeFile && len(pn.Content) > 0 {
		a.r.RememberRefs(repo.DataBlob, pn.Content...)
	}
	job := &fileJob{path: p, src: src, node: node, changed: pn != nil, image: true, done: make(chan struct{})}
	select {
	case a.fileJobs <- job:
	case <-ctx.Done():
		job.err = ctx.Err()
		close(job.done)
	}
	e.file = job
	return e
}

// failedJob is a file that is left out, its error already reported.
func failedJob(p string, err error) *fileJob {
	j := &fileJob{path: p, err: err, done: make(chan struct{})}
	close(j.done)
	return j
}

// unchanged reports whether a file needs no reading: same size, mtime,
// ctime, inode and type as in the parent snapshot.
func unchanged(old, cur *snapshot.Node) bool {
	return old.Type == snapshot.TypeFile && old.Size == cur.Size && old.Inode == cur.Inode &&
		old.ModTime.Equal(cur.ModTime) && old.ChangeTime.Equal(cur.ChangeTime) &&
		uint64(len(old.Content)) > 0 == (cur.Size > 0)
}

func (a *archiver) haveAll(refs []hash.Ref) bool {
	for _, ref := range refs {
		if !a.r.HasBlob(repo.BlobHandle{Type: repo.DataBlob, ID: ref.ID}) {
			return false
		}
	}
	return true
}

func (a *archiver) emptyTree(ctx context.Context) *future {
	return a.finishTree(ctx, "", nil)
}

// finishTree waits (in its own goroutine) for the entries, then encodes
// and saves the tree.
func (a *archiver) finishTree(ctx context.Context, path string, entries []entry) *future {
	f := &future{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		tree := &snapshot.Tree{Nodes: make([]*snapshot.Node, 0, len(entries))}
		for _, e := range entries {
			switch {
			case e.sub != nil:
				<-e.sub.done
				if e.sub.err != nil {
					f.err = e.sub.err
					return
				}
				e.node.Subtree = e.sub.ref
			case e.file != nil:
				<-e.file.done
				if e.file.err != nil {
					if ctx.Err() != nil {
						f.err = ctx.Err()
						return
					}
					continue // reported; the file is left out
				}
				action := "new"
				if e.file.changed {
					action = "changed"
				}
				a.report(Item{Path: e.file.path, Action: action, Size: e.node.Size})
			case e.link != nil:
				<-e.link.done
				if e.link.err != nil {
					continue
				}
				a.report(Item{Path: filepath.Join(path, e.node.Name), Action: "hardlink", Size: e.node.Size})
				e.node.Content = e.link.node.Content
				e.node.ChunkSizes = e.link.node.ChunkSizes
			}
			tree.Nodes = append(tree.Nodes, e.node)
		}
		ref, err := a.saveTree(ctx, tree)
		if err != nil {
			f.err = fmt.Errorf("save tree of %s: %w", path, err)
			return
		}
		f.ref = ref
	}()
	return f
}

func (a *archiver) saveTree(ctx context.Context, tree *snapshot.Tree) (hash.Ref, error) {
	plain, err := snapshot.EncodeTree(tree)
	if err != nil {
		return hash.Ref{}, err
	}
	ref, err := a.saveBlob(ctx, repo.TreeBlob, a.r.BlobKey(plain), plain)
	if err != nil {
		return hash.Ref{}, err
	}
	if a.opts.OnTree != nil {
		a.opts.OnTree(ref.ID, plain)
	}
	return ref, nil
}

// scan counts files and bytes for the progress ETA.
func (a *archiver) scan(ctx context.Context, paths []string) {
	p := a.opts.Progress
	// walk counts below the original path root, reading from its source;
	// a directory mapped elsewhere (Options.SourceRoot) is walked on its own.
	var walk func(root string)
	walk = func(root string) {
		src := a.src(root)
		filepath.WalkDir(src, func(sp string, d os.DirEntry, err error) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			path := pathmatch.Rebase(sp, src, root)
			if err != nil || a.match.Match(path, d != nil && d.IsDir()) {
				if d != nil && d.IsDir() && path != root {
					return filepath.SkipDir
				}
				return nil
			}
			if d.IsDir() && path != root && a.src(path) != sp {
				walk(path)
				return filepath.SkipDir
			}
			if d.IsDir() && len(a.marks) > 0 && a.marked(sp) {
				return filepath.SkipDir
			}
			if d.Type().IsRegular() {
				if info, err := d.Info(); err == nil && (a.opts.ExcludeLargerThan == 0 || uint64(info.Size()) <= a.opts.ExcludeLargerThan) {
					p.FilesTotal.Add(1)
					p.BytesTotal.Add(info.Size())
				}
			}
			return nil
		})
	}
	for _, root := range paths {
		walk(root)
	}
	p.ScanDone.Store(true)
}
