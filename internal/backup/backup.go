// Package backup saves file system trees (or standard input) as a snapshot.
//
// The pipeline: one walker goroutine lists directories in name order and
// hands regular files to file readers; each reader chunks its file and hands
// the chunks to blob savers, which hash, compress, encrypt and pack them
// (repo.Writer). A directory's tree is encoded and saved once all of its
// entries are done, so walking, reading and saving overlap across both
// cores while the number of chunk buffers in flight bounds memory.
package backup

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/floe-backup/floe/internal/chunker"
	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/fsmeta"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
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
	// IgnoreInode and IgnoreCtime loosen the comparison with the parent
	// (restic's flags of the same names): IgnoreInode ignores the inode
	// number and the ctime, IgnoreCtime only the ctime, so that a file
	// whose path, type, size and mtime match its parent node is not read.
	// For a clone's first backup against its golden image's snapshot,
	// whose files are the same but have new inodes and ctimes. The price:
	// a file changed without changing its size and mtime is missed.
	IgnoreInode, IgnoreCtime bool

	// ParentTrees loads the parent's trees (the repository, or for
	// write-only keys the local cache).
	ParentTrees snapshot.TreeLoader
	// Kin, when there is no parent, is another snapshot of this host whose
	// chunks' keys are learned first (FindKin), loaded from KinTrees.
	Kin      *snapshot.Record
	KinTrees snapshot.TreeLoader
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

	// Progress, if set, is told the files and bytes read, the totals of a
	// scan that runs alongside, and the file being read.
	Progress ui.Progress
	// NoScan skips that scan, for a caller that shows no totals: it lists
	// every directory and stats every file a second time.
	NoScan         bool
	ProgramVersion string
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
	w      *repo.Writer // nil in a dry run
	opts   Options
	params chunker.Params
	match  *pathmatch.Matcher
	marks  []marker // Options.ExcludeIfPresent

	itemMu sync.Mutex // one OnItem call at a time

	dryMu    sync.Mutex
	drySeen  map[hash.ID]bool // blobs a dry run would have added
	dryAdded uint64

	fileJobs  chan []*fileJob // batches (queueFile)
	chunkJobs chan *chunkJob
	bufs      chan []byte // chunk buffers: their number bounds memory

	// the walker's batch of small files not yet handed to the readers
	// (queueFile); open files, so batches and their queue are small
	batch     []*fileJob
	batchSize uint64

	mu        sync.Mutex
	errs      []*FileError
	changed   []string
	nChanged  int
	hardlinks map[[2]uint64]*fileJob

	filesNew, filesChanged, filesUnchanged, dirs, totalBytes atomic.Uint64

	zeroMu  sync.Mutex
	zeroIDs map[int]hash.ID

	// kinDone, when not nil, is closed once rememberKin, which runs
	// alongside the walk, has taught the repository the kin's keys:
	// saveBlob waits for it (see Run).
	kinDone chan struct{}

	// rebased is the parent's tree of its one path, compared with the one
	// path backed up when the two differ (see Run); nil otherwise.
	rebased *snapshot.Tree

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

type fileJob struct {
	path string // the original path
	src  string // where to read it (path unless Options.SourceRoot maps it)
	node *snapshot.Node
	// f is the file, opened by the walker (Dir.OpenFile), or nil: the
	// reader opens src. Whoever ends the job closes it.
	f       *fsmeta.File
	changed bool // the parent had this file (else new)
	image   bool // Options.Images
	done    chan struct{}
	err     error
}

// closeFile closes the file the walker opened for the job, if any.
func (j *fileJob) closeFile() {
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
}

type chunkJob struct {
	data    []byte
	slot    *hash.Ref
	wg      *sync.WaitGroup
	errp    *atomic.Pointer[error]
	release bool     // return data to the buffer pool
	known   *hash.ID // the key (K), when already known (zero chunks of holes)
	content compress.Content
}

// Run performs a backup and writes its snapshot.
func Run(ctx context.Context, r *repo.Repository, opts Options) (*Result, error) {
	start := time.Now()
	if opts.Retries == 0 {
		opts.Retries = 2
	}
	if opts.Progress == nil {
		opts.Progress = ui.NoProgress
	}
	opts.Progress.Phase("backup", 0, 0)
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
		fileJobs: make(chan []*fileJob, 8), chunkJobs: make(chan *chunkJob, 8),
		hardlinks: map[[2]uint64]*fileJob{}, zeroIDs: map[int]hash.ID{}, sources: sources}
	workers := runtime.GOMAXPROCS(0)
	nbufs := 2*workers + 2
	a.bufs = make(chan []byte, nbufs)
	for i := 0; i < nbufs; i++ {
		a.bufs <- nil // made when needed: see chunks.read
	}
	defer a.returnBufs()

	if !opts.DryRun {
		// packs an earlier backup sent but could not index (its server
		// went away) are indexed first, so that this one reuses them; a
		// failure here leaves their notes for the next backup, and the
		// backup finds out about the storage itself
		if _, err := r.IndexUnindexed(ctx); err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		a.w = r.StartWriting()
		if c, ok := opts.Progress.(ui.Counters); ok {
			// the progress line shows the uploads a slow link (or
			// --limit-upload) leaves pending after reading
			a.w.CountUploads(c)
		}
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
			// The scan only counts for the progress line, but it must end
			// before Run returns: its counts are the caller's to read.
			scanCtx, cancelScan := context.WithCancel(ctx)
			scanDone := make(chan struct{})
			if opts.NoScan {
				close(scanDone)
			} else {
				go func() { defer close(scanDone); a.scan(scanCtx, paths) }()
			}
			var parentRoot *snapshot.Tree
			if opts.Parent != nil && !opts.Force && opts.ParentTrees != nil {
				parentRoot, _ = opts.ParentTrees.LoadTree(ctx, opts.Parent.Tree)
				if parentRoot != nil {
					r.RememberRefs(repo.TreeBlob, opts.Parent.Tree)
				}
				if parentRoot != nil && len(paths) == 1 && len(opts.Parent.Paths) == 1 && paths[0] != opts.Parent.Paths[0] {
					// A parent of one other path (--parent): its contents
					// are compared with the one path backed up, as for a
					// clone's tree copied or mounted elsewhere.
					a.rebased = a.parentAt(ctx, parentRoot, opts.Parent.Paths[0])
				}
			}
			// The kin's keys are learned alongside the walk, which visits
			// the directories in the same order and far slower, so that
			// learning them (18 ms for the ~2,800 trees of bench's
			// smallstored copy) no longer holds the walk back on one core
			// while the other idles. A blob whose key is not known yet
			// waits in saveBlob until they are all learned: no chunk of
			// the kin is compressed and encrypted for want of its key.
			stopKin := func() {}
			if parentRoot == nil && !opts.Force && opts.Kin != nil && opts.KinTrees != nil {
				kinCtx, cancelKin := context.WithCancel(ctx)
				a.kinDone = make(chan struct{})
				go func() { defer close(a.kinDone); a.rememberKin(kinCtx) }()
				stopKin = func() { cancelKin(); <-a.kinDone }
			}
			f := a.saveRoot(ctx, paths, parentRoot)
			<-f.done
			stopKin() // its keys are of no more use
			root, rootErr = f.ref, f.err
			if rootErr != nil {
				cancelScan()
			}
			<-scanDone
			cancelScan()
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
		if a.w != nil {
			_ = a.w.Abort(context.WithoutCancel(ctx))
		}
		return nil, rootErr
	}
	var saved repo.SaveStats
	if !opts.DryRun {
		if err := a.w.Finish(ctx); err != nil {
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

func (a *archiver) report(it Item) {
	if a.opts.OnItem == nil {
		return
	}
	a.itemMu.Lock()
	defer a.itemMu.Unlock()
	a.opts.OnItem(it)
}

// saveBlob stores a blob, or in a dry run counts what storing it would add.
func (a *archiver) saveBlob(ctx context.Context, t repo.BlobType, c compress.Content, key hash.ID, data []byte) (hash.Ref, error) {
	if a.kinDone != nil {
		select {
		case <-a.kinDone:
		default:
			// the kin's keys are still being learned: a key they have
			// not taught yet may be among them
			if !a.r.KnowsKey(t, key) {
				select {
				case <-a.kinDone:
				case <-ctx.Done():
					return hash.Ref{}, ctx.Err()
				}
			}
		}
	}
	if a.w != nil {
		ref, _, _, err := a.w.SaveBlobOf(ctx, t, c, key, data)
		return ref, err
	}
	// a dry run encodes the blob to learn its ID (what a backup would
	// store), but stores nothing
	ref := a.r.RefOfContent(t, c, data)
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

func (a *archiver) fail(path string, err error) {
	a.opts.Progress.Fail()
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
