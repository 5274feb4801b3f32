//go:build linux

// Package audit checks the integrity of a system against a snapshot, as
// AIDE and tripwire do against their databases: a snapshot kept offsite is
// a baseline that an intruder on the host cannot forge. Rules (rules.go)
// select paths and the attributes to check for each; the live file system
// (or another snapshot) is compared with the snapshot and every added,
// removed and changed path is reported with the attributes that changed.
package audit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/floe-backup/floe/internal/chunker"
	"github.com/floe-backup/floe/internal/fsmeta"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
)

// Repository is what an audit of a live file system needs of the
// repository to check contents exactly: its chunker parameters and blob
// naming (files are cut and named as a backup would), and its data blobs
// (for files that were backed up sparse). *repo.Repository is one.
type Repository interface {
	ChunkerParams() chunker.Params
	BlobKey(data []byte) hash.ID
	LoadBlob(ctx context.Context, t repo.BlobType, ref hash.Ref, buf []byte) ([]byte, error)
}

// Options describe one audit.
type Options struct {
	// Rules select the paths and attributes; nil means DefaultRules().
	Rules *Rules
	// Snapshot is the baseline; Trees loads its trees (and Other's).
	Snapshot *snapshot.Snapshot
	Trees    snapshot.TreeLoader

	// Against another snapshot: Other. Otherwise against the live file
	// system below Root ("" means "/"), whose contents are checked with
	// Repo.
	Other *snapshot.Snapshot
	Root  string
	Repo  Repository

	// Workers bounds the files whose contents are checked at once;
	// 0 means GOMAXPROCS.
	Workers int
}

// ErrNothingSelected means that no path of the snapshot is selected by the
// rules.
var ErrNothingSelected = errors.New("no backed-up path of the snapshot is selected by the rules")

// Entry is an added or removed path.
type Entry struct {
	Path string
	Type snapshot.NodeType
}

// AttrChange is one attribute that changed, with its old and new values
// as printed: modes in octal ("0644"), owners as "name (id)", sizes in
// bytes, times in RFC 3339 with nanoseconds in UTC, inode numbers and link
// counts in decimal, contents as the first 8 hex digits of the first chunk
// that differs (or "content differs").
type AttrChange struct {
	Name string // type, perm, user, group, size, mtime, ctime, inode, links, hash, target, rdev, xattrs
	Old  string
	New  string
}

// Change is a path whose checked attributes changed.
type Change struct {
	Path  string
	Type  snapshot.NodeType // the new type
	Attrs []AttrChange
}

// PathError is a path that could not be checked.
type PathError struct {
	Path string
	Err  error
}

// Summary counts an audit's findings. Checked counts the paths compared
// (present on either side, selected and not ignored); against a snapshot,
// directories whose contents are identical on both sides are not walked
// and their contents not counted.
type Summary struct {
	Checked uint64 `json:"checked"`
	Added   uint64 `json:"added"`
	Removed uint64 `json:"removed"`
	Changed uint64 `json:"changed"`
	Errors  uint64 `json:"errors"`
}

// Report is the result of an audit, in path order.
type Report struct {
	// Snapshot and Against name the two sides for people (set by the
	// caller); Paths are the audited paths (where the snapshot's paths
	// and the selections meet).
	Snapshot, Against string
	Paths             []string
	// NotCovered, against another snapshot: audited paths that the other
	// snapshot did not (fully) back up; only what it holds was compared.
	NotCovered []string

	Added   []Entry
	Removed []Entry
	Changed []Change
	Errors  []PathError
	Summary Summary
}

// Changes reports whether anything was added, removed or changed.
func (r *Report) Changes() bool {
	return len(r.Added)+len(r.Removed)+len(r.Changed) > 0
}

// Run audits opts.Snapshot against the live file system or another
// snapshot. Paths that cannot be read on the live side are reported in the
// Report's Errors; errors loading the snapshots' trees end the audit.
func Run(ctx context.Context, opts Options) (*Report, error) {
	if opts.Snapshot == nil || opts.Trees == nil {
		return nil, errors.New("audit: no snapshot")
	}
	rules := opts.Rules
	if rules == nil {
		rules = DefaultRules()
	}
	a := &auditor{rules: rules, old: treeSide{l: opts.Trees, tree: opts.Snapshot.Tree}, rep: &Report{}}
	if opts.Other != nil {
		a.new = treeSide{l: opts.Trees, tree: opts.Other.Tree}
	} else {
		if opts.Repo == nil {
			return nil, errors.New("audit: a live audit needs the repository")
		}
		root := opts.Root
		if root == "" {
			root = "/"
		}
		ls := liveSide{root: root}
		a.new, a.live = ls, &ls
		a.hasher = newHasher(opts.Repo)
	}
	a.workers = opts.Workers
	if a.workers <= 0 {
		a.workers = runtime.GOMAXPROCS(0)
	}

	sels := make([]string, len(rules.Selections))
	for i, s := range rules.Selections {
		sels[i] = s.Path
	}
	roots := intersect(cleanAll(opts.Snapshot.Paths), sels)
	if opts.Other != nil {
		otherPaths := cleanAll(opts.Other.Paths)
		for _, r := range roots {
			if !slices.ContainsFunc(otherPaths, func(p string) bool { return pathmatch.Within(r, p) }) {
				a.rep.NotCovered = append(a.rep.NotCovered, r)
			}
		}
		roots = intersect(roots, otherPaths)
	}
	if len(roots) == 0 {
		if opts.Other != nil && len(a.rep.NotCovered) > 0 {
			return nil, fmt.Errorf("the two snapshots have no selected path in common (first: %s; second: %s)",
				strings.Join(opts.Snapshot.Paths, " "), strings.Join(opts.Other.Paths, " "))
		}
		return nil, fmt.Errorf("%w (snapshot paths: %s; selected: %s)", ErrNothingSelected,
			strings.Join(opts.Snapshot.Paths, " "), strings.Join(intersect(sels, []string{"/"}), " "))
	}
	a.rep.Paths = roots
	for _, r := range roots {
		if err := a.root(ctx, r); err != nil {
			return nil, err
		}
	}
	return a.rep, nil
}

func cleanAll(ps []string) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = path.Clean("/" + p)
	}
	return out
}

// intersect returns the paths where a path of a and one of b meet (the
// deeper of the two when one is below the other), outermost only, sorted.
func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		for _, y := range b {
			switch {
			case pathmatch.Within(x, y):
				out = append(out, x)
			case pathmatch.Within(y, x):
				out = append(out, y)
			}
		}
	}
	slices.Sort(out)
	var kept []string
	for _, p := range out {
		if !slices.ContainsFunc(kept, func(k string) bool { return pathmatch.Within(p, k) }) {
			kept = append(kept, p)
		}
	}
	return kept
}

// side is one side of the comparison: a snapshot's trees or a live file
// system. Paths are snapshot paths.
type side interface {
	// node returns the node at path p, nil if there is none.
	node(ctx context.Context, p string) (*snapshot.Node, error)
	// list returns the entries of the directory dir at path p, sorted by
	// name, and the names of entries that could not be read.
	list(ctx context.Context, p string, dir *snapshot.Node) ([]*snapshot.Node, map[string]error, error)
}

type treeSide struct {
	l    snapshot.TreeLoader
	tree hash.Ref
}

func (s treeSide) node(ctx context.Context, p string) (*snapshot.Node, error) {
	_, n, err := walk.Resolve(ctx, s.l, s.tree, p)
	if errors.Is(err, walk.ErrNotFound) || errors.Is(err, walk.ErrNotDir) {
		return nil, nil
	}
	return n, err
}

func (s treeSide) list(ctx context.Context, p string, dir *snapshot.Node) ([]*snapshot.Node, map[string]error, error) {
	if dir.Subtree.IsNull() {
		return nil, nil, nil
	}
	t, err := s.l.LoadTree(ctx, dir.Subtree)
	if err != nil {
		return nil, nil, fmt.Errorf("load tree of %s (%s): %w", p, dir.Subtree.Short(), err)
	}
	return t.Nodes, nil, nil
}

type liveSide struct {
	root string
}

// path returns the live path of the snapshot path p.
func (s liveSide) path(p string) string { return filepath.Join(s.root, p) }

func (s liveSide) node(ctx context.Context, p string) (*snapshot.Node, error) {
	if p == "/" {
		return fsmeta.NodeFromPath(s.root, "/")
	}
	// Walk down without following symlinks on the way, as the snapshot
	// holds them: with /lib a symlink, /lib/modules is not there.
	cur := s.root
	comps := strings.Split(strings.TrimPrefix(p, "/"), "/")
	for i, c := range comps {
		cur = filepath.Join(cur, c)
		n, err := fsmeta.NodeFromPath(cur, c)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return nil, nil
			}
			return nil, err
		}
		if i == len(comps)-1 {
			return n, nil
		}
		if n.Type != snapshot.TypeDir {
			return nil, nil
		}
	}
	return nil, nil
}

func (s liveSide) list(ctx context.Context, p string, dir *snapshot.Node) ([]*snapshot.Node, map[string]error, error) {
	full := s.path(p)
	ents, err := os.ReadDir(full) // sorted by name, as trees are
	if err != nil {
		return nil, nil, err
	}
	nodes := make([]*snapshot.Node, 0, len(ents))
	var failed map[string]error
	for _, e := range ents {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		n, err := fsmeta.NodeFromPath(filepath.Join(full, e.Name()), e.Name())
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed since the listing
			}
			if failed == nil {
				failed = map[string]error{}
			}
			failed[e.Name()] = err
			continue
		}
		nodes = append(nodes, n)
	}
	return nodes, failed, nil
}

type auditor struct {
	rules   *Rules
	old     treeSide
	new     side
	live    *liveSide // nil against a snapshot
	hasher  *hasher
	workers int
	rep     *Report
}

func (a *auditor) fail(p string, err error) {
	a.rep.Errors = append(a.rep.Errors, PathError{Path: p, Err: err})
	a.rep.Summary.Errors++
}

// newSideErr handles an error of the new side at path p: against the live
// file system it is recorded and the audit goes on; against a snapshot it
// ends the audit.
func (a *auditor) newSideErr(p string, err error) error {
	if a.live == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	a.fail(p, err)
	return nil
}

func (a *auditor) root(ctx context.Context, p string) error {
	if a.rules.Ignored(p) {
		return nil
	}
	o, err := a.old.node(ctx, p)
	if err != nil {
		return err
	}
	n, err := a.new.node(ctx, p)
	if err != nil {
		return a.newSideErr(p, err)
	}
	return a.visit(ctx, p, o, n, nil)
}

// visit compares the nodes at path p (either may be nil) and, for
// directories, their contents. pre, if set, is the precomputed content
// comparison of two regular files.
func (a *auditor) visit(ctx context.Context, p string, o, n *snapshot.Node, pre *contentResult) error {
	if o == nil && n == nil {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if a.rules.Ignored(p) {
		return nil
	}
	sel, ok := a.rules.Select(p)
	if !ok {
		return nil
	}
	a.rep.Summary.Checked++
	switch {
	case o == nil:
		a.rep.Added = append(a.rep.Added, Entry{Path: p, Type: n.Type})
		a.rep.Summary.Added++
	case n == nil:
		a.rep.Removed = append(a.rep.Removed, Entry{Path: p, Type: o.Type})
		a.rep.Summary.Removed++
	case p == "/":
		// a snapshot's root has no metadata: only its contents count
	default:
		if attrs := a.compare(ctx, p, o, n, sel.Attrs, pre); len(attrs) > 0 {
			a.rep.Changed = append(a.rep.Changed, Change{Path: p, Type: n.Type, Attrs: attrs})
			a.rep.Summary.Changed++
		}
	}
	oDir := o != nil && o.Type == snapshot.TypeDir
	nDir := n != nil && n.Type == snapshot.TypeDir
	if !oDir && !nDir {
		return nil
	}
	if oDir && nDir && a.live == nil && o.Subtree == n.Subtree {
		return nil // identical contents
	}
	var oKids, nKids []*snapshot.Node
	var failed map[string]error
	if oDir {
		var err error
		if oKids, _, err = a.old.list(ctx, p, o); err != nil {
			return err
		}
	}
	if nDir {
		var err error
		if nKids, failed, err = a.new.list(ctx, p, n); err != nil {
			// without the listing, nothing below p can be compared
			return a.newSideErr(p, err)
		}
	}
	return a.merge(ctx, p, oKids, nKids, failed)
}

type pair struct {
	name string
	o, n *snapshot.Node
	pre  *contentResult
}

// merge visits the entries of a directory on both sides in name order.
// Contents of live files are checked first, in parallel.
func (a *auditor) merge(ctx context.Context, dir string, oKids, nKids []*snapshot.Node, failed map[string]error) error {
	var pairs []pair
	i, j := 0, 0
	for i < len(oKids) || j < len(nKids) {
		var pr pair
		switch {
		case j >= len(nKids) || (i < len(oKids) && oKids[i].Name < nKids[j].Name):
			pr = pair{name: oKids[i].Name, o: oKids[i]}
			i++
		case i >= len(oKids) || nKids[j].Name < oKids[i].Name:
			pr = pair{name: nKids[j].Name, n: nKids[j]}
			j++
		default:
			pr = pair{name: oKids[i].Name, o: oKids[i], n: nKids[j]}
			i++
			j++
		}
		pairs = append(pairs, pr)
	}
	if a.live != nil {
		a.precompute(ctx, dir, pairs)
	}
	for _, pr := range pairs {
		p := walk.Join(dir, pr.name)
		if err, ok := failed[pr.name]; ok {
			if !a.rules.Ignored(p) {
				if _, sel := a.rules.Select(p); sel {
					a.fail(p, err)
				}
			}
			continue
		}
		if err := a.visit(ctx, p, pr.o, pr.n, pr.pre); err != nil {
			return err
		}
	}
	return nil
}

// precompute checks, in parallel, the contents of the regular files among
// pairs whose rules check contents.
func (a *auditor) precompute(ctx context.Context, dir string, pairs []pair) {
	var todo []int
	for k, pr := range pairs {
		if pr.o == nil || pr.n == nil || pr.o.Type != snapshot.TypeFile || pr.n.Type != snapshot.TypeFile {
			continue
		}
		p := walk.Join(dir, pr.name)
		if a.rules.Ignored(p) {
			continue
		}
		if sel, ok := a.rules.Select(p); !ok || sel.Attrs&AttrHash == 0 {
			continue
		}
		todo = append(todo, k)
	}
	if len(todo) < 2 {
		return // visit checks a single file itself
	}
	sem := make(chan struct{}, a.workers)
	var wg sync.WaitGroup
	for _, k := range todo {
		sem <- struct{}{}
		wg.Add(1)
		go func(pr *pair) {
			defer wg.Done()
			defer func() { <-sem }()
			res := a.hasher.compare(ctx, a.live.path(walk.Join(dir, pr.name)), pr.o, pr.n)
			pr.pre = &res
		}(&pairs[k])
	}
	wg.Wait()
}

// compare returns the attributes of attrs in which o and n differ.
func (a *auditor) compare(ctx context.Context, p string, o, n *snapshot.Node, attrs Attrs, pre *contentResult) []AttrChange {
	if attrs == 0 {
		return nil
	}
	var out []AttrChange
	add := func(name, old, new string) { out = append(out, AttrChange{Name: name, Old: old, New: new}) }
	sameType := o.Type == n.Type
	if !sameType {
		add("type", o.Type.String(), n.Type.String())
	}
	if attrs&AttrPerm != 0 && o.Mode != n.Mode {
		add("perm", fmtMode(o.Mode), fmtMode(n.Mode))
	}
	if attrs&AttrUser != 0 && o.UID != n.UID {
		add("user", fmtOwner(o.User, o.UID), fmtOwner(n.User, n.UID))
	}
	if attrs&AttrGroup != 0 && o.GID != n.GID {
		add("group", fmtOwner(o.Group, o.GID), fmtOwner(n.Group, n.GID))
	}
	sized := sameType && (o.Type == snapshot.TypeFile || o.Type == snapshot.TypeSymlink)
	switch {
	case !sized:
	case attrs&AttrSize != 0 && o.Size != n.Size:
		add("size", fmtUint(o.Size), fmtUint(n.Size))
	case attrs&(AttrSize|AttrGrowing) == AttrGrowing && n.Size < o.Size:
		add("size", fmtUint(o.Size), fmtUint(n.Size))
	}
	if attrs&AttrMtime != 0 && !o.ModTime.Equal(n.ModTime) {
		add("mtime", fmtTime(o.ModTime), fmtTime(n.ModTime))
	}
	if attrs&AttrCtime != 0 && !o.ChangeTime.Equal(n.ChangeTime) {
		add("ctime", fmtTime(o.ChangeTime), fmtTime(n.ChangeTime))
	}
	if attrs&AttrInode != 0 && o.Inode != n.Inode {
		add("inode", fmtUint(o.Inode), fmtUint(n.Inode))
	}
	if attrs&AttrLinks != 0 && o.Links != n.Links {
		add("links", fmtUint(o.Links), fmtUint(n.Links))
	}
	if attrs&AttrHash != 0 && sameType {
		switch o.Type {
		case snapshot.TypeFile:
			var res contentResult
			switch {
			case pre != nil:
				res = *pre
			case a.live != nil:
				res = a.hasher.compare(ctx, a.live.path(p), o, n)
			default:
				res = compareIDs(keysOf(o.Content), keysOf(n.Content))
			}
			if res.err != nil {
				a.fail(p, fmt.Errorf("check content: %w", res.err))
			} else if res.differs {
				add("hash", res.old, res.new)
			}
		case snapshot.TypeSymlink:
			if o.LinkTarget != n.LinkTarget {
				add("target", o.LinkTarget, n.LinkTarget)
			}
		case snapshot.TypeCharDev, snapshot.TypeBlockDev:
			if o.Rdev != n.Rdev {
				add("rdev", fmtRdev(o.Rdev), fmtRdev(n.Rdev))
			}
		}
	}
	if attrs&AttrXattrs != 0 && !slices.EqualFunc(o.Xattrs, n.Xattrs, func(x, y snapshot.Xattr) bool {
		return x.Name == y.Name && string(x.Value) == string(y.Value)
	}) {
		add("xattrs", fmtXattrs(o.Xattrs), fmtXattrs(n.Xattrs))
	}
	return out
}
