// Package restore writes a snapshot's files back to disk with their
// metadata. Everything is created through an os.Root on the target
// directory, so no name in a snapshot and no symlink, in the snapshot or
// already in the target, can make restore write outside the target.
package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/fsmeta"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/par"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/slab"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
	"github.com/floe-backup/floe/internal/walk"
)

// Options describe one restore.
type Options struct {
	Target   string
	Includes []string // restore only paths these patterns select (and their parents)
	Excludes []string
	Verify   bool // read back every file written and compare with the snapshot
	// Overwrite decides what happens to files already in the target:
	// "if-changed" (the default: a file whose content already matches the
	// snapshot is left alone, so an interrupted restore resumes where it
	// stopped), "always", or "never" (existing files are kept as they are).
	Overwrite string
	// Delete removes files in the restored directories that the snapshot
	// does not have, so the target matches the snapshot.
	Delete bool
	// NumericOwner restores uid/gid as stored instead of by user/group name.
	NumericOwner bool
	// Untrusted restores a snapshot that may be hostile (any host with a
	// write-only key can write one) without what would give its writer
	// privileges here: no device nodes, no setuid bit (nor setgid on
	// anything but a directory), no security.* or trusted.* extended
	// attributes (file capabilities, SELinux labels). Result.Withheld
	// counts the entries concerned.
	Untrusted bool
	// Progress hears of the restore: one phase, "restore", whose items
	// are the files and bytes their contents; the totals grow as the
	// snapshot's trees are walked (nil: ui.NoProgress). If it keeps
	// counters (ui.Counters), repo.CountFetched counts the bytes of streamed
	// ranges as they arrive.
	Progress ui.Progress
	Workers  int
	// BufferedIO writes every file through the page cache; by default
	// files of directThreshold bytes and more are written around it
	// (O_DIRECT) where the file system allows.
	BufferedIO bool
}

// Overwrite modes.
const (
	OverwriteIfChanged = "if-changed"
	OverwriteAlways    = "always"
	OverwriteNever     = "never"
)

// Result summarizes a restore.
type Result struct {
	Files, Dirs, Others uint64
	Bytes               uint64
	Skipped             uint64 // existing files left alone (identical, or --overwrite never)
	Deleted             uint64 // entries removed by Delete
	Verified            uint64 // files read back and found identical
	Withheld            uint64 // entries of which Untrusted left something out
	Errors              []error
}

// ErrUnsafeName means a snapshot holds a name that could escape the target.
var ErrUnsafeName = errors.New("unsafe name in snapshot")

// ErrSizeMismatch means a file's size in the snapshot disagrees with the
// length of its content: the tree is damaged or hostile.
var ErrSizeMismatch = errors.New("file size disagrees with its content")

type restorer struct {
	r     *repo.Repository
	opts  Options
	root  *os.Root
	incl  *pathmatch.Matcher
	excl  *pathmatch.Matcher
	res   Result
	mu    sync.Mutex
	dirs  []dirMeta
	links map[[2]uint64]entryRef // (device, inode) -> first restored name
	files []*fileJob
	seen  []dirNames

	// dtab holds the directories of the target the plan uses, dtab[0]
	// the target itself: each by its parent's number and its name, not
	// its path. Paths kept per directory and file cost memory quadratic
	// in the depth (a chain of 3,000 directories of 255-byte names, a 1
	// MB snapshot, took gigabytes); they are built where needed, mostly
	// for messages. Appended to by plan only, read by everything after.
	dtab []dirEnt
	// spBuf holds the snapshot path of the directory plan is in.
	spBuf []byte

	// trees loads the trees plan walks, reading each directory's
	// subtrees ahead by stretches of their packs (snapshot.ReadAheadTrees,
	// as every walk of a snapshot does): loaded each by itself, a tree was
	// a request per directory (1,671 for GOROOT), most of what a restore
	// cost a floe server or S3 besides the file contents.
	trees *snapshot.ReadAheadTrees

	dirsMu   sync.Mutex
	dirRoot  map[dirID]*dirHandle
	dirClock uint64   // orders uses of dirRoot's handles (least recent is closed first)
	dirIdle  [2]int   // handles of dirRoot that nobody holds: [0] others, [1] checkpoints
	rootDir  *os.File // the target opened as a file (acquireDirFd)
	rootInfo dirInfo
}

// dirID numbers a directory of the target in restorer.dtab; 0 is the
// target.
type dirID int32

// dirEnt is a directory of the target.
type dirEnt struct {
	parent dirID
	name   string
	depth  int32 // 1 for an entry of the target
	// fresh: this restore created it (or it is the target, and was
	// empty): nothing can be in the way inside it, so its entries need
	// no look at what exists.
	fresh bool
	// freshInfo is the dirInfo of a directory this restore created
	// where its parent's tells it (inheritDirInfo): two system calls per
	// directory fewer, and its owner is known (no lchown). Its known is
	// false where not.
	freshInfo dirInfo
}

// entryRef names an entry of the target: a name in a directory.
type entryRef struct {
	dir  dirID
	name string
}

// relDir returns the path of directory dir relative to the target ("" for
// the target).
func (rs *restorer) relDir(dir dirID) string {
	if dir == 0 {
		return ""
	}
	n := 0
	for d := dir; d != 0; d = rs.dtab[d].parent {
		n += len(rs.dtab[d].name) + 1
	}
	b := make([]byte, n-1)
	at := n - 1
	for d := dir; d != 0; d = rs.dtab[d].parent {
		name := rs.dtab[d].name
		at -= len(name)
		copy(b[at:], name)
		if at > 0 {
			at--
			b[at] = '/'
		}
	}
	return string(b)
}

// rel returns the path of name in directory dir relative to the target.
func (rs *restorer) rel(dir dirID, name string) string {
	if dir == 0 {
		return name
	}
	return rs.relDir(dir) + "/" + name
}

// relOf returns e's path relative to the target.
func (rs *restorer) relOf(e entryRef) string { return rs.rel(e.dir, e.name) }

// dirHandle is a directory of the target opened once (as an os.Root) for
// everything done in it. A directory is opened from its parent's handle,
// one component, and the handles of recently used directories stay open:
// reaching every directory from the target root instead resolves every
// component of its path again, which made restore quadratic in the depth
// (a chain of 5,000 directories took minutes).
//
// Directory metadata is applied deepest first, walking back up: so that a
// handle missing from the cache never costs more than a few opens, the
// directories at every dirCheckpoint-th level are kept longer than the
// others (a square-root decomposition of the path).
type dirHandle struct {
	root *os.Root
	fd   int // the directory opened raw, for openat (acquireDirFd); -1 until then
	info dirInfo
	refs int
	used uint64
	cp   int // 1 at a checkpoint depth (isCheckpoint)
}

// Bounds of the idle directory handles kept open for reuse, far below any
// file descriptor limit: the last maxIdleDirs directories used, and
// maxIdleCheckpoints directories at depths that are multiples of
// dirCheckpoint (a chain of 16,384 directories is reached from some
// checkpoint in at most dirCheckpoint opens).
const (
	maxIdleDirs        = 64
	maxIdleCheckpoints = 256
	dirCheckpoint      = 64
)

// isCheckpoint reports whether directory dir is at a checkpoint depth.
func (rs *restorer) isCheckpoint(dir dirID) int {
	if rs.dtab[dir].depth%dirCheckpoint == 0 {
		return 1
	}
	return 0
}

// acquireDir returns the handle of directory dir (0 is the target); the
// caller calls releaseDir(dir) when done with it.
func (rs *restorer) acquireDir(dir dirID) (*os.Root, error) {
	rs.dirsMu.Lock()
	defer rs.dirsMu.Unlock()
	return rs.acquireDirLocked(dir)
}

func (rs *restorer) acquireDirLocked(dir dirID) (*os.Root, error) {
	if dir == 0 {
		return rs.root, nil
	}
	if rs.dirRoot == nil {
		rs.dirRoot = map[dirID]*dirHandle{}
	}
	rs.dirClock++
	if d, ok := rs.dirRoot[dir]; ok {
		if d.refs == 0 {
			rs.dirIdle[d.cp]--
		}
		d.refs++
		d.used = rs.dirClock
		return d.root, nil
	}
	// Opened raw from the parent's descriptor, one component that must be
	// a directory and not a symlink (so inside the target), and made an
	// os.Root through /proc: the parent's Root.OpenRoot would do the same
	// but name the new Root by its full path, which every handle of the
	// cache then held (memory quadratic in the depth).
	parent := rs.dtab[dir].parent
	pfd, _, err := rs.acquireDirFdLocked(parent, false)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Openat(pfd, rs.dtab[dir].name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	rs.releaseDirLocked(parent)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: rs.relDir(dir), Err: err}
	}
	r, err := os.OpenRoot("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	rs.dirRoot[dir] = &dirHandle{root: r, fd: fd, refs: 1, used: rs.dirClock, cp: rs.isCheckpoint(dir)}
	return r, nil
}

func (rs *restorer) releaseDir(dir dirID) {
	rs.dirsMu.Lock()
	defer rs.dirsMu.Unlock()
	rs.releaseDirLocked(dir)
}

func (rs *restorer) releaseDirLocked(dir dirID) {
	d := rs.dirRoot[dir]
	if d == nil {
		return
	}
	if d.refs--; d.refs > 0 {
		return
	}
	cp := d.cp
	rs.dirIdle[cp]++
	if rs.dirIdle[cp] <= [2]int{maxIdleDirs, maxIdleCheckpoints}[cp] {
		return
	}
	// close the least recently used idle handle of the same class
	var oldest dirID
	var oldestUse uint64
	for r, h := range rs.dirRoot {
		if h.refs == 0 && h.cp == cp && (oldest == 0 || h.used < oldestUse) {
			oldest, oldestUse = r, h.used
		}
	}
	rs.dirRoot[oldest].close()
	delete(rs.dirRoot, oldest)
	rs.dirIdle[cp]--
}

// closeDirs closes every handle (at the end of Run).
func (rs *restorer) closeDirs() {
	rs.dirsMu.Lock()
	defer rs.dirsMu.Unlock()
	for dir, h := range rs.dirRoot {
		h.close()
		delete(rs.dirRoot, dir)
	}
	rs.dirIdle = [2]int{}
	if rs.rootDir != nil {
		rs.rootDir.Close()
		rs.rootDir = nil
	}
}

func (d *dirHandle) close() {
	if d.fd >= 0 {
		unix.Close(d.fd)
	}
	d.root.Close()
}

// dirInfo is what decides the owner and mode of a file created in a
// directory: its group (which a new file gets instead of ours where the
// directory is setgid or the file system is mounted grpid) and whether it
// has a default ACL (which a new file's mode follows instead of the umask).
type dirInfo struct {
	known      bool // looked up (dirInfoOf)
	gid        uint32
	setgid     bool
	defaultACL bool
}

// dirInfoOf looks up fd's dirInfo: two system calls per directory, which
// spare an fchown and an fchmod per file in it (openFile.open).
func dirInfoOf(fd int) dirInfo {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return dirInfo{}
	}
	_, err := unix.Fgetxattr(fd, "system.posix_acl_default", nil)
	// no such attribute, or a file system without ACLs: the umask applies
	acl := !(errors.Is(err, unix.ENODATA) || errors.Is(err, unix.EOPNOTSUPP))
	return dirInfo{known: true, gid: st.Gid, setgid: st.Mode&unix.S_ISGID != 0, defaultACL: acl}
}

// acquireDirFd is acquireDir for a raw descriptor of the directory, to
// create files with openat: an *os.File per restored file would register
// each one with the runtime's poller (two fcntl calls and a failing
// epoll_ctl per file), which regular files gain nothing from. The caller
// calls releaseDir(dir) when done with it.
func (rs *restorer) acquireDirFd(dir dirID) (int, error) {
	rs.dirsMu.Lock()
	defer rs.dirsMu.Unlock()
	fd, _, err := rs.acquireDirFdLocked(dir, false)
	return fd, err
}

// acquireDirFdInfo is acquireDirFd that also returns the directory's
// dirInfo (looked up once per handle).
func (rs *restorer) acquireDirFdInfo(dir dirID) (int, dirInfo, error) {
	rs.dirsMu.Lock()
	defer rs.dirsMu.Unlock()
	return rs.acquireDirFdLocked(dir, true)
}

func (rs *restorer) acquireDirFdLocked(dir dirID, wantInfo bool) (int, dirInfo, error) {
	r, err := rs.acquireDirLocked(dir)
	if err != nil {
		return -1, dirInfo{}, err
	}
	d := rs.dirRoot[dir]
	if d == nil || r != d.root {
		// the target itself
		if rs.rootDir == nil {
			if rs.rootDir, err = r.Open("."); err != nil {
				return -1, dirInfo{}, err
			}
		}
		fd := int(rs.rootDir.Fd())
		if wantInfo && !rs.rootInfo.known {
			rs.rootInfo = dirInfoOf(fd)
		}
		return fd, rs.rootInfo, nil
	}
	if d.fd < 0 {
		// Opened raw from the parent's descriptor, one component that
		// must be a directory and not a symlink (so, like the handle's
		// os.Root, inside the target): Root.Open(".") would make an
		// *os.File and register it with the poller, five more system
		// calls per directory.
		parent := rs.dtab[dir].parent
		pfd, _, err := rs.acquireDirFdLocked(parent, false)
		if err == nil {
			d.fd, err = unix.Openat(pfd, rs.dtab[dir].name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			rs.releaseDirLocked(parent)
			if err != nil {
				d.fd = -1
				err = &os.PathError{Op: "open", Path: rs.relDir(dir), Err: err}
			}
		}
		if err != nil {
			rs.releaseDirLocked(dir)
			return -1, dirInfo{}, err
		}
	}
	if wantInfo && !d.info.known {
		if info := rs.dtab[dir].freshInfo; info.known {
			d.info = info
		} else {
			d.info = dirInfoOf(d.fd)
		}
	}
	return d.fd, d.info, nil
}

// inParent calls fn with the handle of e's directory and e's name.
func (rs *restorer) inParent(e entryRef, fn func(dir *os.Root, name string) error) error {
	d, err := rs.acquireDir(e.dir)
	if err != nil {
		return err
	}
	defer rs.releaseDir(e.dir)
	return fn(d, e.name)
}

type dirMeta struct {
	dir  dirID
	node *snapshot.Node
}

type fileJob struct {
	entryRef
	node *snapshot.Node
	// exists: a regular file of the same size is already there; with
	// if-changed its content is compared before anything is written.
	exists bool
	skip   bool
	// link: a hard link (node.Type 0) to first, made after every file
	link  bool
	first entryRef
}

// dirNames records, per restored directory, the names the snapshot has
// (for Delete).
type dirNames struct {
	dir   dirID
	names map[string]bool
}

// Run restores the tree rootTree. subpath ("" or "/" for everything)
// selects a directory or file of the snapshot: a directory's contents are
// restored into the target, a file is restored as target/<name>.
func Run(ctx context.Context, r *repo.Repository, rootTree hash.Ref, subpath string, opts Options) (*Result, error) {
	if r.WriteOnly() {
		return nil, repo.ErrWriteOnly
	}
	if opts.Progress == nil {
		opts.Progress = ui.NoProgress
	}
	opts.Progress.Phase("restore", 0, 0)
	if opts.Workers <= 0 {
		opts.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if !opts.BufferedIO {
		// large files are written direct, and a worker waiting for the
		// disk keeps its P: two spare ones measured best (one and two tried)
		defer directio.SpareProcs(2)()
	}
	incl, excl, err := checkOptions(&opts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Target, 0o700); err != nil {
		return nil, fmt.Errorf("create target: %w", err)
	}
	root, err := os.OpenRoot(opts.Target)
	if err != nil {
		return nil, fmt.Errorf("open target: %w", err)
	}
	defer root.Close()
	rs := &restorer{r: r, opts: opts, root: root, incl: incl, excl: excl, links: map[[2]uint64]entryRef{}, dtab: []dirEnt{{}}}
	defer rs.closeDirs()
	if names, err := root.FS().(fs.ReadDirFS).ReadDir("."); err == nil && len(names) == 0 {
		rs.dtab[0].fresh = true
	}

	tree, snapDir, err := subtree(ctx, snapshot.RepoTrees{Repo: r}, rootTree, subpath)
	if err != nil {
		return nil, err
	}
	rs.trees = snapshot.NewReadAheadTrees(r)
	rs.trees.Hint(tree)
	rs.spBuf = []byte(snapDir)
	rs.plan(ctx, tree, 0)
	rs.trees = nil          // what it holds is not needed past the plan
	opts.Progress.Counted() // the plan holds every file
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.Delete {
		rs.deleteExtra()
	}
	if testHookAfterPlan != nil {
		testHookAfterPlan(opts.Target)
	}
	rs.skipIdentical(ctx)
	rs.restoreFiles(ctx)
	// Directory metadata last, deepest first: writing into a directory
	// changes its mtime.
	for i := len(rs.dirs) - 1; i >= 0; i-- {
		d := rs.dirs[i]
		opts := fsmeta.ApplyOptions{NumericOwner: rs.opts.NumericOwner}
		if info := rs.dtab[d.dir].freshInfo; info.known {
			// made by this restore: owned by us, its group known
			euid, _ := fsmeta.EffectiveIDs()
			opts.Created = &fsmeta.Created{UID: uint32(euid), GID: info.gid, Mode: fsmeta.ModeUnknown}
		}
		if err := rs.applyOpts(entryRef{rs.dtab[d.dir].parent, rs.dtab[d.dir].name}, d.node, opts); err != nil {
			rs.fail(err)
		}
	}
	if opts.Verify && ctx.Err() == nil {
		rs.verify(ctx)
	}
	return &rs.res, ctx.Err()
}

// testHookAfterPlan, when set (by tests), is called with the target once
// the plan has made directories and special files, before any file is
// read back or written: what a case-insensitive directory would have made
// of two names of the snapshot, tests make there.
var testHookAfterPlan func(target string)

// checkOptions fills in the default overwrite mode, rejects an unknown one
// and compiles the include and exclude patterns: Run and DryRun must agree
// on what a restore would touch.
func checkOptions(opts *Options) (incl, excl *pathmatch.Matcher, err error) {
	switch opts.Overwrite {
	case "":
		opts.Overwrite = OverwriteIfChanged
	case OverwriteIfChanged, OverwriteAlways, OverwriteNever:
	default:
		return nil, nil, fmt.Errorf("overwrite mode %q: want always, if-changed or never", opts.Overwrite)
	}
	if incl, err = pathmatch.New(opts.Includes); err != nil {
		return nil, nil, err
	}
	if excl, err = pathmatch.New(opts.Excludes); err != nil {
		return nil, nil, err
	}
	return incl, excl, nil
}

// subtree finds the snapshot's subpath ("" or "/" for everything) and
// returns what a restore of it walks: the directory's tree and its path
// in the snapshot, or, for a file, a tree of that one node and the path of
// its parent directory.
func subtree(ctx context.Context, l snapshot.TreeLoader, rootTree hash.Ref, subpath string) (*snapshot.Tree, string, error) {
	tree, err := l.LoadTree(ctx, rootTree)
	if err != nil {
		return nil, "", fmt.Errorf("load root tree: %w", err)
	}
	snapPath := "/"
	comps := strings.Split(strings.Trim(path.Clean("/"+subpath), "/"), "/")
	for i, c := range comps {
		if c == "" {
			continue
		}
		n := tree.Find(c)
		if n == nil {
			// walk's error, as ls and dump say it, so that the CLI's hint follows
			return nil, "", fmt.Errorf("path %s: %w", path.Join(snapPath, c), walk.ErrNotFound)
		}
		snapPath = path.Join(snapPath, c)
		if n.Type != snapshot.TypeDir {
			if i < len(comps)-1 {
				// like ls and dump: a path through a symlink or file
				// names nothing (symlinks are not followed)
				return nil, "", fmt.Errorf("path %s: %s is a %s, not a directory", path.Clean("/"+subpath), snapPath, n.Type)
			}
			return &snapshot.Tree{Nodes: []*snapshot.Node{n}}, path.Dir(snapPath), nil
		}
		if tree, err = l.LoadTree(ctx, n.Subtree); err != nil {
			return nil, "", fmt.Errorf("load tree of %s: %w", snapPath, err)
		}
	}
	return tree, snapPath, nil
}

func (rs *restorer) fail(err error) {
	rs.mu.Lock()
	rs.res.Errors = append(rs.res.Errors, err)
	rs.mu.Unlock()
}

// selected applies includes and excludes to a snapshot path.
func (rs *restorer) selected(snapPath string, isDir bool) (restore, descend bool) {
	if rs.excl.Match(snapPath, isDir) {
		return false, false
	}
	if rs.incl.Empty() || rs.incl.Match(snapPath, isDir) {
		return true, isDir
	}
	// Not selected itself; a directory is entered in case something below is.
	return false, isDir
}

// plan creates directories and special files and collects regular files.
// It returns whether anything was restored below (so that directories are
// created only when needed with --include).
func (rs *restorer) plan(ctx context.Context, tree *snapshot.Tree, dir dirID) bool {
	any := false
	if rs.opts.Delete {
		names := make(map[string]bool, len(tree.Nodes))
		for _, n := range tree.Nodes {
			names[n.Name] = true
		}
		rs.seen = append(rs.seen, dirNames{dir, names})
	}
	// rs.spBuf holds this directory's snapshot path; each entry's is
	// built after it, and only for as long as the entry needs it
	spLen := len(rs.spBuf)
	defer func() { rs.spBuf = rs.spBuf[:spLen] }()
	for _, n := range tree.Nodes {
		if ctx.Err() != nil {
			return any
		}
		if err := snapshot.CheckName(n.Name); err != nil {
			rs.fail(fmt.Errorf("%s: %w: %v", path.Join(string(rs.spBuf[:spLen]), n.Name), ErrUnsafeName, err))
			continue
		}
		rs.spBuf = rs.spBuf[:spLen]
		if spLen == 0 || rs.spBuf[spLen-1] != '/' {
			rs.spBuf = append(rs.spBuf, '/')
		}
		rs.spBuf = append(rs.spBuf, n.Name...)
		sp := string(rs.spBuf)
		e := entryRef{dir, n.Name}
		restore, descend := rs.selected(sp, n.Type == snapshot.TypeDir)
		if rs.opts.Untrusted && (restore || descend) {
			safe, withheld := untrustedNode(n)
			if withheld && restore {
				rs.res.Withheld++
			}
			if safe == nil {
				continue // a device node: not made
			}
			n = safe
		}
		if n.Type == snapshot.TypeDir {
			if !restore && !descend {
				continue
			}
			if restore || rs.incl.Empty() {
				sub, err := rs.mkdir(e)
				if err != nil {
					rs.fail(err)
					continue
				}
				rs.dirs = append(rs.dirs, dirMeta{sub, n})
				rs.res.Dirs++
				any = true
				if t, err := rs.trees.LoadTree(ctx, n.Subtree); err != nil {
					rs.fail(fmt.Errorf("%s: %w", sp, err))
				} else {
					rs.plan(ctx, t, sub)
				}
				continue
			}
			// Only an include below may select something: create the
			// directory afterwards if it did.
			t, err := rs.trees.LoadTree(ctx, n.Subtree)
			if err != nil {
				rs.fail(fmt.Errorf("%s: %w", sp, err))
				continue
			}
			idx := len(rs.dirs)
			sub, err := rs.mkdir(e)
			if err != nil {
				rs.fail(err)
				continue
			}
			if rs.plan(ctx, t, sub) {
				rs.dirs = append(rs.dirs[:idx], append([]dirMeta{{sub, n}}, rs.dirs[idx:]...)...)
				rs.res.Dirs++
				any = true
			} else {
				// empty: nothing selected below
				rs.inParent(e, func(d *os.Root, name string) error { return d.Remove(name) })
			}
			continue
		}
		if !restore {
			continue
		}
		any = true
		if n.Type == snapshot.TypeFile {
			// before anything in the target is touched for it
			if err := checkContent(n, rs.r.ChunkerParams().Max); err != nil {
				rs.fail(fmt.Errorf("restore %s: %w", rs.relOf(e), err))
				continue
			}
		}
		var existing, keep bool
		if !rs.dtab[dir].fresh {
			var err error
			if existing, keep, err = rs.prepareEntry(e, n); err != nil {
				rs.fail(err)
				continue
			}
		}
		if keep {
			rs.res.Skipped++
			continue
		}
		if n.Links > 1 && n.Type != snapshot.TypeDir {
			key := [2]uint64{n.Device, n.Inode}
			if first, ok := rs.links[key]; ok {
				rs.linkLater(e, first)
				continue
			}
			rs.links[key] = e
		}
		switch n.Type {
		case snapshot.TypeFile:
			rs.files = append(rs.files, &fileJob{entryRef: e, node: n, exists: existing})
			rs.opts.Progress.Grow(1, int64(n.Size))
		case snapshot.TypeSymlink:
			if err := rs.inParent(e, func(dir *os.Root, name string) error { return dir.Symlink(n.LinkTarget, name) }); err != nil {
				rs.fail(fmt.Errorf("restore symlink %s: %w", rs.relOf(e), err))
				continue
			}
			rs.res.Others++
			if err := rs.apply(e, n); err != nil {
				rs.fail(err)
			}
		default:
			if err := rs.special(e, n); err != nil {
				rs.fail(err)
				continue
			}
			rs.res.Others++
		}
	}
	return any
}

// untrustedNode returns n as Options.Untrusted restores it: nil for a
// device node (not made), else n without the setuid bit (and setgid, but
// on directories, where it only decides new files' group) and without
// security.* and trusted.* extended attributes. withheld says whether
// anything was left out. What stays (owners, permissions, ACLs, user.*
// attributes) gives no one more than mode bits can.
func untrustedNode(n *snapshot.Node) (safe *snapshot.Node, withheld bool) {
	if n.Type == snapshot.TypeCharDev || n.Type == snapshot.TypeBlockDev {
		return nil, true
	}
	drop := uint32(unix.S_ISUID)
	if n.Type != snapshot.TypeDir {
		drop |= unix.S_ISGID
	}
	privileged := func(x snapshot.Xattr) bool {
		return strings.HasPrefix(x.Name, "security.") || strings.HasPrefix(x.Name, "trusted.")
	}
	xattrs := n.Xattrs
	if slices.ContainsFunc(xattrs, privileged) {
		xattrs = slices.DeleteFunc(slices.Clone(xattrs), privileged)
	}
	if n.Mode&drop == 0 && len(xattrs) == len(n.Xattrs) {
		return n, false
	}
	c := *n
	c.Mode &^= drop
	c.Xattrs = xattrs
	return &c, true
}

// checkContent refuses a file whose chunks cannot be its content, as a
// damaged or hostile tree can say: chunk sizes that do not add up to its
// size (the file would be cut short or padded, and a size far beyond the
// content would make restore create, and for sparse files hash, that
// much), or a chunk longer than any the repository's chunker makes (a
// resumed restore, --verify and --dry-run read files back in buffers of
// a chunk's size: up to 4 GiB each).
func checkContent(n *snapshot.Node, maxChunk uint32) error {
	var sum uint64
	for _, size := range n.ChunkSizes {
		if size > maxChunk {
			return fmt.Errorf("%w: a chunk of %d bytes, larger than any chunk (%d); not restored", ErrSizeMismatch, size, maxChunk)
		}
		sum += uint64(size)
	}
	if len(n.ChunkSizes) != len(n.Content) || sum != n.Size {
		return fmt.Errorf("%w: the snapshot says %d bytes but its content holds %d; not restored", ErrSizeMismatch, n.Size, sum)
	}
	return nil
}

// hard links are made after the first copy's content is written.
func (rs *restorer) linkLater(e, first entryRef) {
	rs.files = append(rs.files, &fileJob{entryRef: e, node: &snapshot.Node{Name: e.name}, link: true, first: first})
}

// mkdir makes directory e (or keeps the one there) and returns its number.
func (rs *restorer) mkdir(e entryRef) (dirID, error) {
	id := dirID(len(rs.dtab))
	rs.dtab = append(rs.dtab, dirEnt{parent: e.dir, name: e.name, depth: rs.dtab[e.dir].depth + 1})
	err := rs.inParent(e, func(dir *os.Root, name string) error {
		err := dir.Mkdir(name, 0o700)
		if err == nil {
			rs.dtab[id].fresh = true
			if info, ok := rs.inheritDirInfo(id); ok {
				rs.dtab[id].freshInfo = info
			}
			return nil
		}
		if errors.Is(err, os.ErrExist) {
			fi, lerr := dir.Lstat(name)
			if lerr == nil && fi.IsDir() {
				return nil
			}
			// a file or symlink where the snapshot has a directory: replace it
			if rerr := dir.Remove(name); rerr != nil {
				return rerr
			}
			err = dir.Mkdir(name, 0o700)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("restore directory %s: %w", rs.relOf(e), err)
	}
	return id, nil
}

// inheritDirInfo tells the dirInfo of directory dir, just created, from
// its parent's: a new directory inherits its parent's default ACL, and its
// group and setgid bit where the parent is setgid; otherwise its group is
// ours, unless a grpid mount gives it the parent's, which is the same
// when the parent's group is ours. ok is false when that does not decide.
func (rs *restorer) inheritDirInfo(dir dirID) (dirInfo, bool) {
	parent := rs.dtab[dir].parent
	var p dirInfo
	if parent == 0 {
		rs.dirsMu.Lock()
		_, p, _ = rs.acquireDirFdLocked(0, true)
		rs.dirsMu.Unlock()
	} else {
		p = rs.dtab[parent].freshInfo
	}
	_, egid := fsmeta.EffectiveIDs()
	switch {
	case !p.known:
		return dirInfo{}, false
	case p.setgid:
		return dirInfo{known: true, gid: p.gid, setgid: true, defaultACL: p.defaultACL}, true
	case p.gid == uint32(egid):
		return dirInfo{known: true, gid: p.gid, defaultACL: p.defaultACL}, true
	}
	return dirInfo{}, false
}

// prepareEntry looks at what the target already has at rel. It returns
// keep when the entry stays as it is (--overwrite never, or a symlink that
// already matches), and sameSize when a regular file of the snapshot's size
// is there (its content is compared later). Anything else in the way is
// removed so that the entry can be created afresh: never written through.
func (rs *restorer) prepareEntry(e entryRef, n *snapshot.Node) (sameSize, keep bool, err error) {
	var fi os.FileInfo
	var linkMatches bool
	err = rs.inParent(e, func(dir *os.Root, name string) error {
		var lerr error
		if fi, lerr = dir.Lstat(name); lerr != nil {
			fi = nil // nothing there
			return nil
		}
		if rs.opts.Overwrite == OverwriteNever {
			return nil
		}
		switch {
		case n.Type == snapshot.TypeFile && fi.Mode().IsRegular():
			sameSize = uint64(fi.Size()) == n.Size && rs.opts.Overwrite == OverwriteIfChanged
			return nil
		case n.Type == snapshot.TypeSymlink && fi.Mode()&os.ModeSymlink != 0 && rs.opts.Overwrite == OverwriteIfChanged:
			if target, err := dir.Readlink(name); err == nil && target == n.LinkTarget {
				linkMatches = true
				return nil
			}
		}
		if fi.IsDir() {
			return dir.RemoveAll(name)
		}
		return dir.Remove(name)
	})
	switch {
	case err != nil:
		return false, false, fmt.Errorf("restore %s: remove what is in the way: %w", rs.relOf(e), err)
	case fi == nil:
		return false, false, nil
	case rs.opts.Overwrite == OverwriteNever:
		return false, true, nil
	case linkMatches:
		return false, true, rs.apply(e, n)
	}
	return sameSize, false, nil
}

// skipIdentical compares existing files of the right size with the
// snapshot (chunk by chunk, by ID) and leaves the identical ones alone:
// re-running an interrupted restore only writes what is missing.
func (rs *restorer) skipIdentical(ctx context.Context) {
	var todo []*fileJob
	for _, j := range rs.files {
		if j.exists && j.node.Type == snapshot.TypeFile {
			todo = append(todo, j)
		}
	}
	if len(todo) == 0 {
		return
	}
	workers := runtime.GOMAXPROCS(0)
	bufs := make([][]byte, workers)
	par.For(ctx, len(todo), workers, func(w, i int) {
		var err error
		if bufs[w], err = rs.verifyFile(todo[i], bufs[w]); err == nil {
			todo[i].skip = true
		}
	})
}

// deleteExtra removes entries of restored directories that the snapshot
// does not have.
func (rs *restorer) deleteExtra() {
	for _, d := range rs.seen {
		droot, err := rs.acquireDir(d.dir)
		if err != nil {
			continue // not restored (e.g. not selected)
		}
		rs.deleteIn(droot, d)
		rs.releaseDir(d.dir)
	}
}

func (rs *restorer) deleteIn(droot *os.Root, d dirNames) {
	f, err := droot.Open(".")
	if err != nil {
		return // not restored (e.g. not selected)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		dir := rs.relDir(d.dir)
		if dir == "" {
			dir = "."
		}
		rs.fail(fmt.Errorf("list %s to delete what the snapshot lacks: %w", dir, err))
		return
	}
	for _, name := range names {
		if d.names[name] {
			continue
		}
		if err := droot.RemoveAll(name); err != nil {
			rs.fail(fmt.Errorf("delete %s (not in the snapshot): %w", rs.rel(d.dir, name), err))
			continue
		}
		rs.res.Deleted++
	}
}

// withParent names e through an open file descriptor of its directory,
// so that calls which take a path (xattrs, mknod, lutimes) act on the
// entry inside the target without following any symlink to reach it.
func (rs *restorer) withParent(e entryRef, fn func(p string) error) error {
	// The parent's descriptor held open for the restore (acquireDirFd),
	// not one opened for each call: an open, its poller registration and
	// a close per directory and special file.
	fd, err := rs.acquireDirFd(e.dir)
	if err != nil {
		return err
	}
	defer rs.releaseDir(e.dir)
	return fn("/proc/self/fd/" + strconv.Itoa(fd) + "/" + e.name)
}

func (rs *restorer) special(e entryRef, n *snapshot.Node) error {
	err := rs.withParent(e, func(p string) error {
		if err := fsmeta.Create(p, n); err != nil {
			return err
		}
		return fsmeta.Apply(p, n, fsmeta.ApplyOptions{NumericOwner: rs.opts.NumericOwner})
	})
	if err != nil {
		return fmt.Errorf("restore %s %s: %w", n.Type, rs.relOf(e), err)
	}
	return nil
}

func (rs *restorer) apply(e entryRef, n *snapshot.Node) error {
	return rs.applyOpts(e, n, fsmeta.ApplyOptions{NumericOwner: rs.opts.NumericOwner})
}

func (rs *restorer) applyOpts(e entryRef, n *snapshot.Node, opts fsmeta.ApplyOptions) error {
	return rs.withParent(e, func(p string) error {
		return fsmeta.Apply(p, n, opts)
	})
}

// restoreFiles writes file contents. The planner (this goroutine) creates
// the files one after another and gathers the chunks they need in windows
// (readWindow); each window's blobs are grouped into ranges of packs
// (repo.PlanReads) that the workers read with one request each, writing
// every blob to each place it goes. A window spans many small files or a
// part of a large one, so that both keep every worker busy, and it bounds
// how many files are open at once.
func (rs *restorer) restoreFiles(ctx context.Context) {
	jobs := make(chan readJob, rs.opts.Workers)
	var wg sync.WaitGroup
	for i := 0; i < rs.opts.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One loader per worker: its buffers and the pack it holds
			// open are reused from one range to the next.
			loader := rs.r.NewBlobLoader()
			loader.PoolBuffers() // deliver copies or writes every plaintext before the next
			defer loader.Close()
			if c, ok := rs.opts.Progress.(ui.Counters); ok {
				loader.OnFetched(func(n int64) { c.Count(repo.CountFetched, n) })
			}
			var buf []byte
			var st stager
			for j := range jobs {
				buf = rs.readBlobs(ctx, loader, j, buf, &st)
			}
		}()
	}
	limits, streamed := rs.r.ReadRanges()
	// Every file of a window is open until its last chunk is written:
	// openSlots bounds them (and so the descriptors restore holds).
	windowFiles, maxOpen := openFileLimits(streamed)
	openSlots := make(chan struct{}, maxOpen)
	// Streamed windows grow (streamFirstFiles, doubling): the first is
	// read while the planner creates the files of the next, and later
	// ones span more of each pack, so fewer streams (stream windows).
	nextFiles := windowFiles
	if streamed {
		nextFiles = min(windowFiles, streamFirstFiles)
	}
	newWindow := func() *readWindow {
		w := newReadWindow(nextFiles)
		if streamed {
			w.maxBytes, w.maxBlobs = 0, streamWindowBlobs
			nextFiles = min(windowFiles, 2*nextFiles)
		}
		return w
	}
	// A dispatcher plans each full window's reads and hands them to the
	// workers, so that the planner goes on creating the next window's
	// files meanwhile: handing the ranges over itself, it waited for the
	// workers to take all but the last few, and they then waited for it.
	// queuedWindows bounds the windows waiting for workers.
	windows := make(chan *readWindow, queuedWindows)
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		for w := range windows {
			ranges, unplaced := rs.r.PlanReads(repo.DataBlob, w.refs, limits)
			for _, i := range unplaced {
				jobs <- readJob{w: w, single: i}
			}
			for _, rg := range ranges {
				jobs <- readJob{w: w, rng: rg}
			}
		}
	}()
	win := newWindow()
	flush := func() {
		if len(win.refs) == 0 {
			return
		}
		windows <- win
		win = newWindow()
	}
	var links []*fileJob
	for _, job := range rs.files {
		if ctx.Err() != nil {
			break
		}
		if job.node.Type == 0 { // hard link, after all contents
			links = append(links, job)
			continue
		}
		if job.skip {
			rs.res.Skipped++
			rs.opts.Progress.Done(1, int64(job.node.Size))
			if err := rs.apply(job.entryRef, job.node); err != nil {
				rs.fail(err)
			}
			continue
		}
		f := &openFile{job: job, dirFd: -1, fd: -1}
		// offsets from the chunk sizes the tree records
		offsets := make([]int64, len(job.node.Content))
		var off int64
		missing := false
		for i, ref := range job.node.Content {
			offsets[i] = off
			if !rs.r.Index().Has(repo.BlobHandle{Type: repo.DataBlob, ID: ref.ID}) {
				rs.fail(fmt.Errorf("restore %s: data blob %s: %w", rs.relOf(job.entryRef), ref.Short(), repo.ErrBlobNotFound))
				missing = true
				break
			}
			off += int64(job.node.ChunkSizes[i])
		}
		if missing {
			f.pending.Store(1)
			f.failed.Store(true)
			f.done(rs, nil)
			continue
		}
		var todo, zeros []int
		// a sparse file's holes became chunks of zeros, known by their
		// keys: one pass over zeros up to its longest chunk
		// (repo.ZeroKeys), where hashing a fresh buffer of zeros per
		// length hashed 1 GiB of zeros for bench/images.sh's image
		var zeroKeys map[uint32]hash.ID
		if job.node.Sparse {
			zeroKeys = rs.r.ZeroKeys(job.node.ChunkSizes)
		}
		for i, id := range job.node.Content {
			size := job.node.ChunkSizes[i]
			if z, ok := zeroKeys[size]; ok && z == id.Key {
				rs.opts.Progress.Done(0, int64(size))
				zeros = append(zeros, i)
				continue
			}
			todo = append(todo, i)
		}
		f.dir = job.dir
		d, info, err := rs.acquireDirFdInfo(f.dir)
		if err != nil {
			rs.fail(fmt.Errorf("restore %s: %w", rs.relOf(job.entryRef), err))
			continue
		}
		f.dirFd = d
		if rs.dtab[f.dir].fresh && !job.exists {
			rs.prepareCreate(f, info)
		}
		// Created here, one after another: on ext4 concurrent creates in
		// the same directories only contend (measured: 5.2 s serial vs
		// 7-9 s from four workers for GOROOT's 15,000 files).
		f.pending.Store(int64(max(len(todo), 1)))
		select {
		case openSlots <- struct{}{}:
		default:
			// Every slot is a file of this window or of one being
			// read: hand this one to the workers, then wait for a file
			// to finish.
			flush()
			openSlots <- struct{}{}
		}
		f.slots = openSlots
		err = f.open(rs, !rs.opts.BufferedIO && job.node.Size >= directThreshold)
		if err == nil && f.dw != nil {
			preallocate(f.fd, todo, offsets, job.node.ChunkSizes)
			// the skipped zero chunks' share of the blocks they have
			// in common with data
			for _, i := range zeros {
				if err = f.dw.Zero(offsets[i], int64(job.node.ChunkSizes[i])); err != nil {
					err = fmt.Errorf("restore %s at offset %d: %w", rs.relOf(job.entryRef), offsets[i], err)
					break
				}
			}
		}
		if err != nil || len(todo) == 0 {
			// nothing to write: finish it here (metadata, close)
			f.pending.Store(1)
			f.done(rs, err)
			continue
		}
		for _, i := range todo {
			win.add(job.node.Content[i], target{f: f, offset: offsets[i], length: job.node.ChunkSizes[i]})
			if win.full() {
				flush()
			}
		}
		if win.files++; win.full() {
			flush()
		}
	}
	flush()
	close(windows)
	<-dispatched
	close(jobs)
	wg.Wait()
	slab.Trim() // the loaders' buffers: a long-running process keeps none
	for _, job := range links {
		rel, first := rs.relOf(job.entryRef), rs.relOf(job.first)
		if fi, err := rs.root.Lstat(rel); err == nil {
			if ffi, err := rs.root.Lstat(first); err == nil && os.SameFile(fi, ffi) {
				continue // already linked (resumed restore)
			}
			if rs.opts.Overwrite == OverwriteNever {
				continue
			}
			if err := rs.root.Remove(rel); err != nil {
				rs.fail(fmt.Errorf("restore hard link %s: %w", rel, err))
				continue
			}
		}
		if err := rs.root.Link(first, rel); err != nil {
			rs.fail(fmt.Errorf("restore hard link %s: %w", rel, err))
		}
	}
}

// Bounds of a read window: the distinct blobs and their bytes (the files
// it holds, and the files open at once, are openFileLimits), and how many
// full windows may wait for the workers (restoreFiles).
const (
	queuedWindows = 2

	windowBlobs = 4096
	windowBytes = 64 << 20
	// A streamed range holds a blob at a time, so the bytes of a window do
	// not bound memory there, and a larger window reads a pack that files
	// backed up together share with one request (a whole-object GET, which
	// versitygw sends with sendfile) rather than many ranges per file: on
	// two 1 GiB files, 80 requests instead of ~900 and a tenth of the
	// server's CPU. Its blobs still bound it (~200 bytes each: 13 MiB).
	streamWindowBlobs = 1 << 16
	// Stream windows: files backed up together lie together in packs,
	// but not in the order restore creates them (a backup reads files in
	// parallel), so a window of 1,024 of GOROOT's small files needed a
	// stretch of each of its packs, and the next window much of the same
	// stretch again: from S3, whose streams begin at a pack's start, the
	// server sent 1.8 times the repository. Windows that grow to 8,192
	// files read most packs once; the first stays small so that reading
	// starts early.
	streamFirstFiles = 1024
	streamOpenFiles  = 16384
)

// openFileLimits returns how many files a window holds at most and how
// many may be open at once: 1,024 and 2,048 (a window of small files is
// one range of each pack it touches, so larger windows are fewer
// requests), for streamed ranges 8,192 and 16,384 (see streamFirstFiles),
// or less when the descriptor limit is low, leaving room for the
// directories.
func openFileLimits(streamed bool) (window, open int) {
	open = 2048
	if streamed {
		open = streamOpenFiles
	}
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur < 4*uint64(open) {
		open = max(16, min(open, int(lim.Cur/4)))
	}
	return max(1, open/2), open
}

// readWindow gathers the chunks of consecutive files. A blob that several
// of them need (the same content in many files, or many times in one) is
// read once and written to each target. Once handed to the workers a
// window is only read.
type readWindow struct {
	refs     []hash.Ref
	targets  [][]target // per ref: where it goes
	index    map[hash.Ref]int
	bytes    int64
	files    int
	maxFiles int
	maxBytes int64 // 0: no bound
	maxBlobs int
}

// target is one place a blob is written: a chunk of a file.
type target struct {
	f      *openFile
	offset int64
	length uint32 // what the tree says; the blob must hold that many bytes
}

func newReadWindow(maxFiles int) *readWindow {
	return &readWindow{index: map[hash.Ref]int{}, maxFiles: maxFiles, maxBytes: windowBytes, maxBlobs: windowBlobs}
}

// add records that ref goes to t. Refs are told apart by ID and key: the
// plaintext of a ref is checked against its own key.
func (w *readWindow) add(ref hash.Ref, t target) {
	i, ok := w.index[ref]
	if !ok {
		i = len(w.refs)
		w.index[ref] = i
		w.refs = append(w.refs, ref)
		w.targets = append(w.targets, nil)
		w.bytes += int64(t.length)
	}
	w.targets[i] = append(w.targets[i], t)
}

func (w *readWindow) full() bool {
	return len(w.refs) >= w.maxBlobs || (w.maxBytes > 0 && w.bytes >= w.maxBytes) || w.files >= w.maxFiles
}

// readJob is one range of a window, or one blob that PlanReads could not
// place (single; Load reports why).
type readJob struct {
	w      *readWindow
	rng    repo.PackRange
	single int
}

// readBlobs reads a job's blobs and writes each to its targets; buf is
// reused for blobs read alone.
func (rs *restorer) readBlobs(ctx context.Context, loader *repo.BlobLoader, j readJob, buf []byte, st *stager) []byte {
	defer st.flush(rs) // a worker waiting for work holds no chunk
	if j.rng.Blobs == nil {
		data, err := loader.Load(ctx, repo.DataBlob, j.w.refs[j.single], buf)
		if err == nil {
			buf = data
		}
		rs.deliver(ctx, j.w.targets[j.single], data, err, st)
		return buf
	}
	n := 0
	err := loader.LoadRange(ctx, repo.DataBlob, j.rng, func(b repo.RangeBlob, data []byte, err error) error {
		n++
		rs.deliver(ctx, j.w.targets[b.Tag], data, err, st)
		return nil
	})
	if err != nil {
		// stopped early (cancelled): the rest of the range still
		// finishes its files
		for _, b := range j.rng.Blobs[n:] {
			rs.deliver(ctx, j.w.targets[b.Tag], nil, err, st)
		}
	}
	return buf
}

// deliver writes one blob's plaintext (or its error) to each of its
// targets and finishes those chunks; a chunk of a file written directly
// is staged in st instead, and finished when st writes it.
func (rs *restorer) deliver(ctx context.Context, targets []target, data []byte, err error, st *stager) {
	// Only a sparse file skips the writes of all-zero chunks: scan a
	// blob for zeros only if one of its targets is sparse.
	zero := false
	if err == nil && slices.ContainsFunc(targets, func(t target) bool { return t.f.job.node.Sparse }) {
		zero = allZero(data)
	}
	for _, t := range targets {
		f := t.f
		if ctx.Err() != nil {
			// interrupted: not restored, and no metadata on what is
			f.failed.Store(true)
		}
		if f.failed.Load() {
			f.done(rs, nil)
			continue
		}
		werr := err
		if werr == nil && len(data) != int(t.length) {
			// a damaged or hostile tree: writing would put the next
			// chunks at the wrong offsets
			werr = fmt.Errorf("%w: a chunk holds %d bytes, the tree says %d; not restored", ErrSizeMismatch, len(data), t.length)
			f.hostile.Store(true)
		}
		if werr == nil {
			rs.opts.Progress.Done(0, int64(len(data)))
			skip := f.job.node.Sparse && zero
			switch {
			case f.dw != nil && skip:
				werr = f.dw.Zero(t.offset, int64(len(data)))
			case f.dw != nil:
				st.add(rs, f, t.offset, data)
				continue
			case !skip:
				werr = directio.PwriteFull(f.fd, data, t.offset)
			}
		}
		if werr != nil {
			werr = fmt.Errorf("restore %s at offset %d: %w", rs.relOf(f.job.entryRef), t.offset, werr)
		}
		f.done(rs, werr)
	}
}

type openFile struct {
	job *fileJob
	// excl: the file is created in a directory this restore made, so
	// nothing is there: O_EXCL, and created says what it then has.
	excl       bool
	createMode uint32 // the mode it is created with (fsmeta.ModeUnknown: 0600)
	created    fsmeta.Created
	dirFd      int // the file's directory (acquireDirFd), held until done; -1 if none
	dir        dirID
	fd         int            // -1 until created
	dw         *directio.File // written around the page cache; nil: buffered
	slots      chan struct{}  // the open-file slot it holds (restoreFiles), nil if none
	pending    atomic.Int64
	failed     atomic.Bool
	// hostile: a chunk's length disagreed with the tree; what was written
	// is not the file, so it is removed rather than left half-written
	hostile atomic.Bool
}

// open creates the file without following a symlink. A sparse file is
// made its full size first (holes where nothing is written); any other
// file is written whole, which sets its size. With direct, the file is
// written around the page cache where the file system allows (f.dw).
func (f *openFile) open(rs *restorer, direct bool) error {
	name := f.job.name
	var fd int
	var err error
	if f.excl {
		perm := uint32(0o600)
		if f.createMode != fsmeta.ModeUnknown {
			perm = f.createMode
		}
		fd, err = unix.Openat(f.dirFd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
		if err == nil {
			f.created.Mode = f.createMode
		} else if errors.Is(err, unix.EEXIST) {
			// Only this restore puts anything in a directory it made:
			// another name of the snapshot is this one here (a
			// case-insensitive directory takes "A" and "a" for one),
			// and what it made may be a FIFO or a device node.
			err = errCollision
		}
	} else {
		fd, err = openRegular(f.dirFd, name)
	}
	if err == nil && f.job.node.Sparse && f.job.node.Size > 0 {
		if err = unix.Ftruncate(fd, int64(f.job.node.Size)); err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		rel := rs.relOf(f.job.entryRef)
		return fmt.Errorf("restore %s: %w", rel, &os.PathError{Op: "open", Path: rel, Err: err})
	}
	f.fd = fd
	if direct {
		f.dw = newDirectFile(fd, int64(f.job.node.Size))
	}
	return nil
}

// errCollision: something appeared at a file's name after restore cleared
// the way (prepareEntry) or in a directory it made.
var errCollision = errors.New("something else is there now: another name of the snapshot was restored as this one (a case-insensitive directory?); not overwritten")

// openRegular opens name in dirFd for writing, emptied, or creates it. It
// opens nothing but a regular file: a FIFO there (its open would wait for a
// reader forever) or a device node (a write would go to the device) is
// refused without being opened. Either can be there although restore
// cleared the way: when the snapshot has another name that this directory
// takes for the same one (case-insensitive directories), restore made
// that entry meanwhile.
func openRegular(dirFd int, name string) (int, error) {
	fd, err := unix.Openat(dirFd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if !errors.Is(err, unix.EEXIST) {
		return fd, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirFd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return -1, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1, errCollision
	}
	// O_NONBLOCK: should a FIFO have replaced it since, the open fails
	// rather than waits (it changes nothing for a regular file)
	fd, err = unix.Openat(dirFd, name, unix.O_WRONLY|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, errCollision
	}
	return fd, nil
}

// prepareCreate decides, for a file created in a directory this restore
// made, the mode to create it with and the owner it will have, so that
// fsmeta.ApplyFd sets neither when they are already right.
func (rs *restorer) prepareCreate(f *openFile, info dirInfo) {
	f.excl = true
	f.createMode = fsmeta.ModeUnknown
	euid, egid := fsmeta.EffectiveIDs()
	f.created.UID = uint32(euid)
	f.created.GID = uint32(egid)
	if !info.known || (info.gid != uint32(egid) && !info.setgid) {
		// our group, unless the file system is mounted grpid: the
		// directory's then; -1 matches no group to set (fchown of -1
		// would change nothing anyway)
		f.created.GID = ^uint32(0)
	} else if info.setgid {
		f.created.GID = info.gid
	}
	// The mode the file gets from open is mode &^ umask, unless a default
	// ACL decides: only plain permission bits the umask keeps are given
	// there (setuid and setgid are set last, after the owner).
	mode := f.job.node.Mode & snapshot.ModeMask
	if umask, ok := fsmeta.Umask(); ok && info.known && !info.defaultACL && mode&^0o777 == 0 && mode&umask == 0 {
		f.createMode = mode
	}
}

// done finishes one chunk; the last closes the file and sets its metadata.
func (f *openFile) done(rs *restorer, err error) {
	if err != nil {
		f.failed.Store(true)
		rs.fail(err)
	}
	if f.pending.Add(-1) != 0 {
		return
	}
	rs.opts.Progress.Done(1, 0)
	if f.dirFd >= 0 {
		defer rs.releaseDir(f.dir)
	}
	if f.slots != nil {
		defer func() { <-f.slots }()
	}
	if f.fd < 0 {
		return // never created: the error is reported
	}
	if f.dw != nil {
		if f.failed.Load() {
			// Chunks written directly land in any order, so what is
			// there may reach the end of the file: empty it rather
			// than leave something of the full size that is not the
			// file (a resumed restore rewrites it whole anyway).
			f.dw.Release()
			unix.Ftruncate(f.fd, 0)
		} else if err := f.dw.Finish(); err != nil {
			f.failed.Store(true)
			rs.fail(fmt.Errorf("restore %s: %w", rs.relOf(f.job.entryRef), err))
		}
	}
	if !f.failed.Load() {
		// metadata through the open descriptor, after the last write
		opts := fsmeta.ApplyOptions{NumericOwner: rs.opts.NumericOwner}
		if f.excl {
			opts.Created = &f.created
		}
		if err := fsmeta.ApplyFd(f.fd, f.job.name, f.job.node, opts); err != nil {
			rs.fail(fmt.Errorf("restore %s: %w", rs.relOf(f.job.entryRef), err))
		}
	}
	if cerr := unix.Close(f.fd); cerr != nil && !f.failed.Load() {
		f.failed.Store(true)
		rs.fail(fmt.Errorf("restore %s: %w", rs.relOf(f.job.entryRef), cerr))
	}
	f.fd = -1
	if f.hostile.Load() && f.dirFd >= 0 {
		unix.Unlinkat(f.dirFd, f.job.name, 0)
	}
	if f.failed.Load() {
		return
	}
	rs.mu.Lock()
	rs.res.Files++
	rs.res.Bytes += f.job.node.Size
	rs.mu.Unlock()
}

// isHole reports whether [off, off+n) of f holds no data (a hole).
func isHole(f *os.File, off, n int64) bool {
	data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return true // no data after off
	}
	return err == nil && data >= off+n
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// verify reads every restored file back and checks each chunk's ID.
func (rs *restorer) verify(ctx context.Context) {
	files := make([]*fileJob, 0, len(rs.files))
	for _, j := range rs.files {
		if j.node.Type == snapshot.TypeFile {
			files = append(files, j)
		}
	}
	// in the order they were planned (depth first, by name), as files
	// sorted by path would be
	sort.SliceStable(files, func(i, j int) bool { return files[i].dir < files[j].dir })
	workers := runtime.GOMAXPROCS(0)
	bufs := make([][]byte, workers)
	par.For(ctx, len(files), workers, func(w, i int) {
		var err error
		if bufs[w], err = rs.verifyFile(files[i], bufs[w]); err != nil {
			rs.fail(err)
			return
		}
		rs.mu.Lock()
		rs.res.Verified++
		rs.mu.Unlock()
	})
}

func (rs *restorer) verifyFile(job *fileJob, buf []byte) ([]byte, error) {
	var f *os.File
	rel := func() string { return rs.relOf(job.entryRef) } // for errors only
	err := rs.inParent(job.entryRef, func(dir *os.Root, name string) error {
		var err error
		// O_NONBLOCK: a FIFO at the name (see openRegular) must not
		// make the open wait for a writer
		f, err = dir.OpenFile(name, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
		return err
	})
	if err != nil {
		return buf, fmt.Errorf("verify %s: %w", rel(), err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		// a device node or FIFO: never read
		return buf, fmt.Errorf("verify %s: not a regular file", rel())
	}
	var off int64
	var zeroKeys map[uint32]hash.ID
	if job.node.Sparse {
		zeroKeys = rs.r.ZeroKeys(job.node.ChunkSizes)
	}
	for i, ref := range job.node.Content {
		size := job.node.ChunkSizes[i]
		if z, ok := zeroKeys[size]; ok && z == ref.Key && isHole(f, off, int64(size)) {
			off += int64(size)
			continue
		}
		if cap(buf) < int(size) {
			buf = make([]byte, size)
		}
		buf = buf[:size]
		if _, err := f.ReadAt(buf, off); err != nil {
			return buf, fmt.Errorf("verify %s: %w", rel(), err)
		}
		if rs.r.BlobKey(buf) != ref.Key {
			return buf, fmt.Errorf("verify %s: content at offset %d differs from the snapshot", rel(), off)
		}
		off += int64(size)
	}
	if n, err := f.ReadAt(make([]byte, 1), off); n != 0 || err != io.EOF {
		return buf, fmt.Errorf("verify %s: file is longer than in the snapshot", rel())
	}
	return buf, nil
}
