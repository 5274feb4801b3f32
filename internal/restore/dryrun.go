package restore

// The dry run of a restore: what Run would create, overwrite, leave alone
// and delete, found by looking at the target only. It is a separate walk
// (not a flag threaded through Run's writing code) so that nothing in it
// can write: it opens no file for writing, makes no directory, and reads
// existing files only to compare them with the snapshot.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Actions of a dry run.
const (
	ActionNew       = "new"       // nothing is there: it would be created
	ActionOverwrite = "overwrite" // something else is there: it would be replaced
	ActionUnchanged = "unchanged" // identical (if-changed), or kept (never)
	ActionDelete    = "delete"    // not in the snapshot: --delete would remove it
)

// DryRunResult counts what a restore would do, in entries and in the
// bytes of regular files (for deletions: the size of what is there,
// directories' contents included).
type DryRunResult struct {
	New, Overwrite, Unchanged, Delete                     uint64
	NewBytes, OverwriteBytes, UnchangedBytes, DeleteBytes uint64
	Dirs                                                  uint64 // directories the restore would create or use
	Errors                                                []error
}

// DryRun reports what Run(ctx, r, rootTree, subpath, opts) would do,
// writing nothing. list, if set, is called for each entry with its action,
// its path relative to the target and its size.
func DryRun(ctx context.Context, r *repo.Repository, rootTree hash.Ref, subpath string, opts Options, list func(action, rel string, size uint64)) (*DryRunResult, error) {
	if r.WriteOnly() {
		return nil, repo.ErrWriteOnly
	}
	incl, excl, err := checkOptions(&opts)
	if err != nil {
		return nil, err
	}
	// Its trees are read ahead as any walk's: a dry run reads nothing
	// else from the repository, and one request per directory was all
	// it cost from a server or S3.
	d := &dryRun{r: r, trees: snapshot.NewReadAheadTrees(r), opts: opts, list: list, rs: &restorer{incl: incl, excl: excl}, res: &DryRunResult{}}
	if root, err := os.OpenRoot(opts.Target); err == nil {
		defer root.Close()
		d.root = root
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open target: %w", err)
	}
	tree, snapDir, err := subtree(ctx, d.trees, rootTree, subpath)
	if err != nil {
		return nil, err
	}
	d.sp = []byte(snapDir)
	d.walk(ctx, tree, opts.Delete)
	return d.res, ctx.Err()
}

type dryRun struct {
	r     *repo.Repository
	trees snapshot.TreeLoader
	opts  Options
	list  func(action, rel string, size uint64)
	rs    *restorer // for its selection rules only
	root  *os.Root  // nil: the target does not exist
	res   *DryRunResult
	buf   []byte
	// sp and rel hold the snapshot path and the path in the target of
	// the directory walk is in (each level keeps their lengths, not
	// strings of its own: memory linear in the depth, see restorer.dtab)
	sp, rel []byte
}

// join puts name after the directory path buf[:n] ("" for the target,
// "/" for the snapshot's root) and returns the result as a string.
func join(buf *[]byte, n int, name string, sep bool) string {
	b := (*buf)[:n]
	if sep && n > 0 && b[n-1] != '/' {
		b = append(b, '/')
	}
	*buf = append(b, name...)
	return string(*buf)
}

func (d *dryRun) report(action, rel string, size uint64) {
	switch action {
	case ActionNew:
		d.res.New++
		d.res.NewBytes += size
	case ActionOverwrite:
		d.res.Overwrite++
		d.res.OverwriteBytes += size
	case ActionUnchanged:
		d.res.Unchanged++
		d.res.UnchangedBytes += size
	case ActionDelete:
		d.res.Delete++
		d.res.DeleteBytes += size
	}
	if d.list != nil {
		d.list(action, rel, size)
	}
}

// lstat is what the target has at rel (nil: nothing, or no target).
func (d *dryRun) lstat(rel string) fs.FileInfo {
	if d.root == nil {
		return nil
	}
	fi, err := d.root.Lstat(rel)
	if err != nil {
		return nil
	}
	return fi
}

// walk mirrors Run's plan; it returns whether anything below is restored.
func (d *dryRun) walk(ctx context.Context, tree *snapshot.Tree, del bool) bool {
	any := false
	spLen, relLen := len(d.sp), len(d.rel)
	defer func() { d.sp, d.rel = d.sp[:spLen], d.rel[:relLen] }()
	for _, n := range tree.Nodes {
		if ctx.Err() != nil {
			return any
		}
		if err := snapshot.CheckName(n.Name); err != nil {
			d.res.Errors = append(d.res.Errors, fmt.Errorf("%s: %w: %v", path.Join(string(d.sp[:spLen]), n.Name), ErrUnsafeName, err))
			continue
		}
		sp := join(&d.sp, spLen, n.Name, true)
		if spLen == 0 {
			sp = join(&d.sp, 0, "/"+n.Name, false)
		}
		rel := join(&d.rel, relLen, n.Name, true)
		restore, descend := d.rs.selected(sp, n.Type == snapshot.TypeDir)
		if d.opts.Untrusted && (n.Type == snapshot.TypeCharDev || n.Type == snapshot.TypeBlockDev) {
			continue // as restore: not made
		}
		if n.Type == snapshot.TypeDir {
			if !restore && !descend {
				continue
			}
			sub, err := d.trees.LoadTree(ctx, n.Subtree)
			if err != nil {
				d.res.Errors = append(d.res.Errors, fmt.Errorf("%s: %w", sp, err))
				continue
			}
			fi := d.lstat(rel)
			if fi != nil && !fi.IsDir() && (restore || d.rs.incl.Empty()) {
				d.report(ActionOverwrite, rel, 0) // a file where the snapshot has a directory
			}
			if d.walk(ctx, sub, d.opts.Delete) || restore || d.rs.incl.Empty() {
				d.res.Dirs++
				any = true
				if fi == nil {
					d.report(ActionNew, join(&d.rel, relLen, n.Name, true)+"/", 0)
				}
			}
			continue
		}
		if !restore {
			continue
		}
		any = true
		if n.Type == snapshot.TypeFile {
			// as restore would refuse it, before reading anything back
			if err := checkContent(n, d.r.ChunkerParams().Max); err != nil {
				d.res.Errors = append(d.res.Errors, fmt.Errorf("restore %s: %w", rel, err))
				continue
			}
		}
		d.entry(rel, n)
	}
	if del && d.root != nil {
		d.extra(tree, string(d.rel[:relLen]))
	}
	return any
}

func (d *dryRun) entry(rel string, n *snapshot.Node) {
	size := uint64(0)
	if n.Type == snapshot.TypeFile {
		size = n.Size
	}
	fi := d.lstat(rel)
	switch {
	case fi == nil:
		d.report(ActionNew, rel, size)
	case d.opts.Overwrite == OverwriteNever:
		d.report(ActionUnchanged, rel, size)
	case d.opts.Overwrite == OverwriteIfChanged && n.Type == snapshot.TypeFile && fi.Mode().IsRegular() &&
		uint64(fi.Size()) == n.Size && d.sameContent(rel, n):
		d.report(ActionUnchanged, rel, size)
	case d.opts.Overwrite == OverwriteIfChanged && n.Type == snapshot.TypeSymlink && fi.Mode()&os.ModeSymlink != 0 && d.sameLink(rel, n):
		d.report(ActionUnchanged, rel, size)
	default:
		d.report(ActionOverwrite, rel, size)
	}
}

func (d *dryRun) sameLink(rel string, n *snapshot.Node) bool {
	target, err := d.root.Readlink(rel)
	return err == nil && target == n.LinkTarget
}

// sameContent compares a file of the target with the snapshot chunk by
// chunk: each chunk's keyed hash against the key of its Ref.
func (d *dryRun) sameContent(rel string, n *snapshot.Node) bool {
	if len(n.ChunkSizes) != len(n.Content) {
		return false
	}
	f, err := d.root.Open(rel)
	if err != nil {
		return false
	}
	defer f.Close()
	for i, ref := range n.Content {
		sz := int(n.ChunkSizes[i])
		if cap(d.buf) < sz {
			d.buf = make([]byte, sz)
		}
		b := d.buf[:sz]
		if _, err := io.ReadFull(f, b); err != nil {
			return false
		}
		if d.r.BlobKey(b) != ref.Key {
			return false
		}
	}
	var one [1]byte
	_, err = f.Read(one[:])
	return err == io.EOF
}

// extra reports the entries of the target's directory relDir that the
// snapshot's tree does not have (what --delete would remove).
func (d *dryRun) extra(tree *snapshot.Tree, relDir string) {
	dir := relDir
	if dir == "" {
		dir = "."
	}
	fi := d.lstat(dir)
	if fi == nil || !fi.IsDir() {
		return
	}
	f, err := d.root.Open(dir)
	if err != nil {
		return
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		d.res.Errors = append(d.res.Errors, fmt.Errorf("list %s to delete what the snapshot lacks: %w", dir, err))
		return
	}
	for _, name := range names {
		if tree.Find(name) != nil {
			continue
		}
		rel := name
		if relDir != "" {
			rel = relDir + "/" + name
		}
		d.report(ActionDelete, rel, d.sizeBelow(rel))
	}
}

// sizeBelow is the size of the regular files at and below rel.
func (d *dryRun) sizeBelow(rel string) uint64 {
	var total uint64
	_ = fs.WalkDir(d.root.FS(), rel, func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				total += uint64(fi.Size())
			}
		}
		return nil
	})
	return total
}
