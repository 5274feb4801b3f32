package backup

// Building the snapshot's trees: a directory's tree is encoded and saved
// once all of its entries are done; unchanged entries come from the parent.

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/fsmeta"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// future is a tree (or file) being completed.
type future struct {
	done chan struct{}
	ref  hash.Ref
	err  error
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
			if a.rebased != nil {
				parent = a.rebased
			}
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
			if node.Type == snapshot.TypeSymlink && !child.target {
				// A path given through a symlinked directory (/var/run/x
				// with /var/run -> /run): the path goes through it, so it
				// is saved as the directory it leads to. Recording the
				// symlink would drop everything below it.
				real, err := filepath.EvalSymlinks(sp)
				if err == nil {
					node, err = fsmeta.NodeFromPath(real, name)
				}
				if err != nil {
					return done(hash.Ref{}, fmt.Errorf("read %s: %w", p, origErr(err, p, sp)))
				}
			}
			e := entry{node: node}
			if node.Type == snapshot.TypeDir {
				e.sub = build(p, child, a.parentSubtree(ctx, parent, name))
			} else if child.target {
				e = a.saveEntry(ctx, p, node, nil, parent, 0)
			}
			entries = append(entries, e)
		}
		return a.finishTree(ctx, dir, entries)
	}
	f := build("/", root, parent)
	a.flushFiles(ctx) // the trees still waiting wait for these
	return f
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

// parentAt returns the parent's tree of the directory at path p, or nil.
func (a *archiver) parentAt(ctx context.Context, root *snapshot.Tree, p string) *snapshot.Tree {
	t := root
	for _, name := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if name == "" || t == nil {
			continue
		}
		t = a.parentSubtree(ctx, t, name)
	}
	return t
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
	var ents []fsmeta.DirEntry
	dir, err := fsmeta.OpenDir(src)
	if err == nil {
		ents, err = dir.Entries()
	}
	if err != nil {
		a.fail(path, origErr(err, path, src))
		ents = nil
	}
	if a.opts.ExcludeCaches && pathmatch.HasCacheTag(src) {
		kept := ents[:0]
		for _, e := range ents {
			if e.Name == pathmatch.CacheTag {
				kept = append(kept, e)
			}
		}
		ents = kept
	}
	if len(a.marks) > 0 && a.marked(src) {
		ents = nil
	}
	// Every entry is described (fstatat relative to the open directory)
	// before any is saved, so the directory is closed before the walk
	// descends into its subdirectories. A regular file that is read
	// whatever it looks like (nothing in the parent to compare it with) is
	// opened instead and described from the open file (Dir.OpenFile), and
	// handed to the readers at once: fewer system calls and path lookups,
	// and the files held open are bounded by the readers' queue.
	nodes := make([]*snapshot.Node, 0, len(ents))
	paths := make([]string, 0, len(ents))
	entries := make([]entry, 0, len(ents))
	known := a.knownXattrs(parent)
	for _, de := range ents {
		name := de.Name
		p := path + "/" + name
		if path == "/" {
			p = "/" + name
		}
		sp := src + "/" + name
		if src == "/" {
			sp = "/" + name
		}
		// An entry read from elsewhere (a directory below this one mapped
		// by Options.SourceRoot to a snapshot of its own file system) is
		// described by its path there, not relative to this directory.
		inDir := len(a.sources) == 0 || a.mapSource(p) == pathJoin(a.mapSource(path), name)
		if !inDir || len(sp) > anchorAfter {
			sp = a.src(p)
		}
		describe := func() (*snapshot.Node, error) {
			if inDir {
				return dir.Node(name, sp, known)
			}
			return fsmeta.NodeFromPath(sp, name)
		}
		var node *snapshot.Node
		isDir := de.IsDir()
		if !de.TypeKnown() { // the file system does not say: ask
			if node, err = describe(); err != nil {
				a.fail(p, origErr(err, p, sp))
				continue
			}
			isDir = node.Type == snapshot.TypeDir
		}
		if a.match.Match(p, isDir) {
			continue
		}
		var opened *fsmeta.File
		if node == nil && inDir && de.IsRegular() && a.readsAnyway(p, parent, name) {
			// Any error (no permission to read it, no longer a regular
			// file) falls back to describing it as every other entry:
			// the reader then meets and reports the same error as
			// before, or the entry is saved as what it now is.
			if f, n, err := dir.OpenFile(name, sp, known); err == nil {
				opened, node = f, n
			}
		}
		if node == nil {
			if node, err = describe(); err != nil {
				a.fail(p, origErr(err, p, sp))
				continue
			}
		}
		if a.tooLarge(node) {
			if opened != nil {
				opened.Close()
			}
			continue
		}
		if opened != nil {
			entries = append(entries, a.saveEntry(ctx, p, node, opened, parent, 0))
			nodes = append(nodes, nil)
		} else {
			entries = append(entries, entry{})
			nodes = append(nodes, node)
		}
		paths = append(paths, p)
	}
	if dir != nil {
		dir.Close()
	}
	for i, node := range nodes {
		if node != nil {
			entries[i] = a.saveEntry(ctx, paths[i], node, nil, parent, dev)
		}
	}
	f := a.finishTree(ctx, path, entries)
	select {
	case <-f.done:
		release()
	default:
		go func() { <-f.done; release() }()
	}
	return f
}

// knownXattrs returns, for the entries of a directory whose tree in the
// parent snapshot is parent, the function that finds an entry's extended
// attributes in its parent node: the same object (inode, device) with the
// same ctime has the same attributes, as setting one changes the ctime.
// So a backup lists the attributes of new and changed objects only. Not
// when the comparison with the parent ignores inodes or ctimes.
func (a *archiver) knownXattrs(parent *snapshot.Tree) func(*snapshot.Node) ([]snapshot.Xattr, bool) {
	if parent == nil || a.opts.IgnoreInode || a.opts.IgnoreCtime || a.opts.Force {
		return nil
	}
	return func(n *snapshot.Node) ([]snapshot.Xattr, bool) {
		pn := parent.Find(n.Name)
		if pn == nil || pn.Type != n.Type || pn.Inode != n.Inode || pn.Device != n.Device || !pn.ChangeTime.Equal(n.ChangeTime) {
			return nil, false
		}
		return pn.Xattrs, true
	}
}

// readsAnyway reports whether the regular file p (called name in its
// directory, whose tree in the parent snapshot is parent) is read whatever
// its metadata says: the parent has no entry of that name, and it is not
// an image (Options.Images), which is read its own way.
func (a *archiver) readsAnyway(p string, parent *snapshot.Tree, name string) bool {
	return !a.images[p] && (parent == nil || parent.Find(name) == nil)
}

// saveEntry starts saving one directory entry. f, if not nil, is the
// regular file node describes, opened already by the walker
// (Dir.OpenFile): the job that reads it takes it (and closes it).
func (a *archiver) saveEntry(ctx context.Context, p string, node *snapshot.Node, f *fsmeta.File, parent *snapshot.Tree, dev uint64) entry {
	if f != nil {
		// closed unless a job took it (another link to a file read
		// already, for one): once handed over, f is the job's alone
		defer func() {
			if f != nil {
				f.Close()
			}
		}()
	}
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
		if pn != nil && !a.opts.Force && a.unchanged(pn, node) && a.haveAll(pn.Content) {
			node.Content = pn.Content
			node.ChunkSizes = pn.ChunkSizes
			a.filesUnchanged.Add(1)
			a.opts.Progress.Done(1, int64(node.Size))
			a.report(Item{Path: p, Action: "unchanged", Size: node.Size})
			return e
		}
		if pn != nil && pn.Type == snapshot.TypeFile && len(pn.Content) > 0 {
			// a changed file keeps most of its chunks: SaveBlob finds
			// those by their keys without compressing and encrypting them
			a.r.RememberRefs(repo.DataBlob, pn.Content...)
		}
		job := &fileJob{path: p, src: a.src(p), node: node, f: f, changed: pn != nil, done: make(chan struct{})}
		f = nil // the job's
		if node.Links > 1 {
			a.mu.Lock()
			a.hardlinks[[2]uint64{node.Device, node.Inode}] = job
			a.mu.Unlock()
		}
		a.queueFile(ctx, job)
		e.file = job
	}
	return e
}

// Files go to the readers in batches: a file of smallFile bytes or less
// waits in the walker's batch until it holds batchFiles files or
// batchBytes bytes (or the walk ends), a larger one goes alone. A batch
// is one hand-over between goroutines (a channel send, a reader woken)
// where each small file was one, and a directory's tree waits for its
// files once where it was woken once per file.
const (
	batchFiles = 16
	batchBytes = 1 << 20
)

// queueFile hands job to the readers (in a batch, see batchFiles).
// Walker only.
func (a *archiver) queueFile(ctx context.Context, job *fileJob) {
	if job.node.Size > smallFile {
		a.sendFiles(ctx, []*fileJob{job})
		return
	}
	a.batch = append(a.batch, job)
	a.batchSize += job.node.Size
	if len(a.batch) >= batchFiles || a.batchSize >= batchBytes {
		a.flushFiles(ctx)
	}
}

// flushFiles hands the walker's batch of small files to the readers.
func (a *archiver) flushFiles(ctx context.Context) {
	if len(a.batch) > 0 {
		a.sendFiles(ctx, a.batch)
		a.batch, a.batchSize = nil, 0
	}
}

// sendFiles hands a batch of files to the readers, or ends its jobs with
// ctx's error when the backup is cancelled.
func (a *archiver) sendFiles(ctx context.Context, batch []*fileJob) {
	select {
	case a.fileJobs <- batch:
	case <-ctx.Done():
		for _, job := range batch {
			job.err = ctx.Err()
			job.closeFile()
			close(job.done)
		}
	}
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
	if node.Rdev == 0 && pn != nil && !a.opts.Force && a.unchanged(pn, node) && a.haveAll(pn.Content) {
		node.Content, node.ChunkSizes, node.Sparse = pn.Content, pn.ChunkSizes, pn.Sparse
		a.filesUnchanged.Add(1)
		a.opts.Progress.Done(1, int64(node.Size))
		a.report(Item{Path: p, Action: "unchanged", Size: node.Size})
		return e
	}
	if pn != nil && pn.Type == snapshot.TypeFile && len(pn.Content) > 0 {
		a.r.RememberRefs(repo.DataBlob, pn.Content...)
	}
	job := &fileJob{path: p, src: src, node: node, changed: pn != nil, image: true, done: make(chan struct{})}
	a.sendFiles(ctx, []*fileJob{job})
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
// ctime, inode and type as in the parent snapshot; without the inode and
// ctime with Options.IgnoreInode, without the ctime with IgnoreCtime.
func (a *archiver) unchanged(old, cur *snapshot.Node) bool {
	return old.Type == snapshot.TypeFile && old.Size == cur.Size &&
		(a.opts.IgnoreInode || old.Inode == cur.Inode) &&
		old.ModTime.Equal(cur.ModTime) &&
		(a.opts.IgnoreInode || a.opts.IgnoreCtime || old.ChangeTime.Equal(cur.ChangeTime)) &&
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
	finish := func() {
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
	}
	// A directory whose entries are all done already (nothing of it is
	// being read: a backup with no change, a directory of unchanged
	// files) is finished here, by the walker: a goroutine per directory
	// cost a wake-up and a hand-off between threads each.
	if entriesDone(entries) {
		finish()
	} else {
		go finish()
	}
	return f
}

// entriesDone reports whether nothing of entries is still being saved.
func entriesDone(entries []entry) bool {
	for _, e := range entries {
		var done chan struct{}
		switch {
		case e.sub != nil:
			done = e.sub.done
		case e.file != nil:
			done = e.file.done
		case e.link != nil:
			done = e.link.done
		default:
			continue
		}
		select {
		case <-done:
		default:
			return false
		}
	}
	return true
}

func (a *archiver) saveTree(ctx context.Context, tree *snapshot.Tree) (hash.Ref, error) {
	plain, err := snapshot.EncodeTree(tree)
	if err != nil {
		return hash.Ref{}, err
	}
	ref, err := a.saveBlob(ctx, repo.TreeBlob, compress.Files, a.r.BlobKey(plain), plain)
	if err != nil {
		return hash.Ref{}, err
	}
	if a.opts.OnTree != nil {
		a.opts.OnTree(ref.ID, plain)
	}
	return ref, nil
}
