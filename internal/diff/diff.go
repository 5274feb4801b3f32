// Package diff compares two snapshot trees (or a tree and a live file
// system's nodes, for audit) node by node and reports what was added,
// removed and changed, with the attributes that changed. Subtrees whose
// tree IDs are equal are identical and are skipped without being loaded.
package diff

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
)

// Attr is a set of node attributes.
type Attr uint32

// The attributes Compare knows.
const (
	AttrType    Attr = 1 << iota // file, dir, symlink, ...
	AttrContent                  // the data blob list of a regular file
	AttrSize                     // a regular file's size
	AttrMode                     // permission bits, setuid/setgid/sticky
	AttrOwner                    // numeric uid or gid
	AttrMtime                    // modification time (ns)
	AttrTarget                   // a symlink's target
	AttrXattrs                   // extended attributes
	AttrRdev                     // a device node's number
	AttrNames                    // user or group name recorded at backup
	AttrCtime                    // change time (ns)
	AttrAtime                    // access time (ns)
	AttrInode                    // inode and device numbers
	AttrLinks                    // hard link count
)

// DefaultAttrs are what a diff reports by default: everything that a
// restore would change. Times other than mtime, inode numbers, link counts
// and owner names change without the file changing and are left out.
const DefaultAttrs = AttrType | AttrContent | AttrSize | AttrMode | AttrOwner | AttrMtime |
	AttrTarget | AttrXattrs | AttrRdev

// AllAttrs holds every attribute.
const AllAttrs = AttrLinks<<1 - 1

var attrNames = []struct {
	a    Attr
	name string
}{
	{AttrType, "type"}, {AttrContent, "content"}, {AttrSize, "size"}, {AttrMode, "mode"},
	{AttrOwner, "owner"}, {AttrMtime, "mtime"}, {AttrTarget, "target"}, {AttrXattrs, "xattrs"},
	{AttrRdev, "rdev"}, {AttrNames, "names"}, {AttrCtime, "ctime"}, {AttrAtime, "atime"},
	{AttrInode, "inode"}, {AttrLinks, "links"},
}

// Names returns the names of the attributes in a, in a fixed order
// ("type", "content", "size", "mode", "owner", "mtime", "target", "xattrs",
// "rdev", "names", "ctime", "atime", "inode", "links").
func (a Attr) Names() []string {
	out := []string{}
	for _, an := range attrNames {
		if a&an.a != 0 {
			out = append(out, an.name)
		}
	}
	return out
}

// String joins Names with commas.
func (a Attr) String() string { return strings.Join(a.Names(), ",") }

// ParseAttr is the inverse of String; it also accepts "all" and "default".
func ParseAttr(s string) (Attr, bool) {
	var a Attr
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch f {
		case "":
			continue
		case "all":
			a |= AllAttrs
			continue
		case "default":
			a |= DefaultAttrs
			continue
		}
		found := false
		for _, an := range attrNames {
			if an.name == f {
				a |= an.a
				found = true
			}
		}
		if !found {
			return 0, false
		}
	}
	return a, true
}

// Compare returns the attributes in which two nodes of the same name
// differ. Content and size are compared for regular files only, the target
// for symlinks, rdev for devices; a directory's contents are not compared
// here (its subtree is walked by Trees).
func Compare(a, b *snapshot.Node) Attr {
	var d Attr
	if a.Type != b.Type {
		d |= AttrType
	}
	if a.Type == snapshot.TypeFile && b.Type == snapshot.TypeFile {
		if a.Size != b.Size {
			d |= AttrSize
		}
		if !slices.Equal(a.Content, b.Content) {
			d |= AttrContent
		}
	}
	if a.Mode != b.Mode {
		d |= AttrMode
	}
	if a.UID != b.UID || a.GID != b.GID {
		d |= AttrOwner
	}
	if a.User != b.User || a.Group != b.Group {
		d |= AttrNames
	}
	if !a.ModTime.Equal(b.ModTime) {
		d |= AttrMtime
	}
	if !a.ChangeTime.Equal(b.ChangeTime) {
		d |= AttrCtime
	}
	if !a.AccessTime.Equal(b.AccessTime) {
		d |= AttrAtime
	}
	if a.Inode != b.Inode || a.Device != b.Device {
		d |= AttrInode
	}
	if a.Links != b.Links {
		d |= AttrLinks
	}
	if a.Type == snapshot.TypeSymlink && b.Type == snapshot.TypeSymlink && a.LinkTarget != b.LinkTarget {
		d |= AttrTarget
	}
	if isDevice(a.Type) && isDevice(b.Type) && a.Rdev != b.Rdev {
		d |= AttrRdev
	}
	if !slices.EqualFunc(a.Xattrs, b.Xattrs, func(x, y snapshot.Xattr) bool {
		return x.Name == y.Name && bytes.Equal(x.Value, y.Value)
	}) {
		d |= AttrXattrs
	}
	return d
}

func isDevice(t snapshot.NodeType) bool {
	return t == snapshot.TypeCharDev || t == snapshot.TypeBlockDev
}

// Kind says what happened to a path.
type Kind byte

// Kinds of changes, as printed.
const (
	Added    Kind = '+'
	Removed  Kind = '-'
	Modified Kind = 'M'
)

func (k Kind) String() string { return string(rune(k)) }

// Change is one difference. Old is nil for Added, New for Removed.
type Change struct {
	Path     string
	Kind     Kind
	Old, New *snapshot.Node
	What     Attr // Modified: the attributes that differ (within Options.Attrs)
}

// Summary counts a diff's changes. Bytes added are the sizes of added
// files plus the new sizes of files whose content changed; bytes removed
// are the sizes of removed files plus the old sizes of changed ones.
type Summary struct {
	Added        uint64 `json:"added"`
	Removed      uint64 `json:"removed"`
	Modified     uint64 `json:"modified"`
	BytesAdded   uint64 `json:"bytes_added"`
	BytesRemoved uint64 `json:"bytes_removed"`
	// TreesSkipped counts directories skipped because their subtree IDs
	// were equal on both sides.
	TreesSkipped uint64 `json:"trees_skipped"`
}

func (s *Summary) count(c Change) {
	switch c.Kind {
	case Added:
		s.Added++
		if c.New.Type == snapshot.TypeFile {
			s.BytesAdded += c.New.Size
		}
	case Removed:
		s.Removed++
		if c.Old.Type == snapshot.TypeFile {
			s.BytesRemoved += c.Old.Size
		}
	case Modified:
		s.Modified++
		if c.What&(AttrContent|AttrSize|AttrType) != 0 {
			if c.Old.Type == snapshot.TypeFile {
				s.BytesRemoved += c.Old.Size
			}
			if c.New.Type == snapshot.TypeFile {
				s.BytesAdded += c.New.Size
			}
		}
	}
}

// Options tune a diff.
type Options struct {
	// Attrs selects the attributes that make a node Modified; 0 means
	// DefaultAttrs.
	Attrs Attr
}

type differ struct {
	l    snapshot.TreeLoader
	opts Options
	fn   func(Change) error
	sum  Summary
	buf  []byte // the path being compared (trees, node)
}

// Trees compares the directory trees oldTree and newTree (tree IDs) whose
// path is dir ("/" for snapshot roots), calling fn for every change in
// path order. A directory that only one side has is reported with all its
// contents. It returns the summary; an error from fn stops the diff.
func Trees(ctx context.Context, l snapshot.TreeLoader, dir string, oldTree, newTree hash.Ref, opts Options, fn func(Change) error) (Summary, error) {
	d := newDiffer(l, opts, fn)
	d.buf = []byte(dir)
	err := d.trees(ctx, oldTree, newTree)
	return d.sum, err
}

// Nodes compares two nodes at path (either may be nil: an added or removed
// path) and, when they are directories, their contents.
func Nodes(ctx context.Context, l snapshot.TreeLoader, path string, old, new *snapshot.Node, opts Options, fn func(Change) error) (Summary, error) {
	d := newDiffer(l, opts, fn)
	d.buf = []byte(path)
	err := d.node(ctx, old, new)
	return d.sum, err
}

func newDiffer(l snapshot.TreeLoader, opts Options, fn func(Change) error) *differ {
	if opts.Attrs == 0 {
		opts.Attrs = DefaultAttrs
	}
	return &differ{l: l, opts: opts, fn: fn}
}

func (d *differ) emit(c Change) error {
	d.sum.count(c)
	return d.fn(c)
}

// trees compares the trees of the directory whose path d.buf holds. Each
// level keeps the length of its path, not a string of its own: memory
// linear in the depth (a path per level cost gigabytes for a 1 MB chain of
// 3,000 directories of 255-byte names).
func (d *differ) trees(ctx context.Context, oldID, newID hash.Ref) error {
	dirLen := len(d.buf)
	defer func() { d.buf = d.buf[:dirLen] }()
	if oldID == newID {
		d.sum.TreesSkipped++
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var oldT, newT *snapshot.Tree
	var err error
	if !oldID.IsNull() {
		if oldT, err = d.l.LoadTree(ctx, oldID); err != nil {
			return walkErr(string(d.buf), oldID, err)
		}
	} else {
		oldT = &snapshot.Tree{}
	}
	if !newID.IsNull() {
		if newT, err = d.l.LoadTree(ctx, newID); err != nil {
			return walkErr(string(d.buf), newID, err)
		}
	} else {
		newT = &snapshot.Tree{}
	}
	// merge the two sorted name lists
	a, b := oldT.Nodes, newT.Nodes
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		var o, n *snapshot.Node
		switch {
		case j >= len(b) || (i < len(a) && a[i].Name < b[j].Name):
			o = a[i]
			i++
		case i >= len(a) || b[j].Name < a[i].Name:
			n = b[j]
			j++
		default:
			o, n = a[i], b[j]
			i++
			j++
		}
		name := n
		if name == nil {
			name = o
		}
		d.buf = walk.AppendJoin(d.buf[:dirLen], name.Name)
		if err := d.node(ctx, o, n); err != nil {
			return err
		}
	}
	return nil
}

func walkErr(dir string, id hash.Ref, err error) error {
	return fmt.Errorf("load tree of %s (%s): %w", dir, id.Short(), err)
}

// node compares the nodes at the path d.buf holds.
func (d *differ) node(ctx context.Context, o, n *snapshot.Node) error {
	p := string(d.buf)
	switch {
	case o == nil && n == nil:
		return nil
	case o == nil:
		if err := d.emit(Change{Path: p, Kind: Added, New: n}); err != nil {
			return err
		}
		return d.all(ctx, p, n, Added)
	case n == nil:
		if err := d.emit(Change{Path: p, Kind: Removed, Old: o}); err != nil {
			return err
		}
		return d.all(ctx, p, o, Removed)
	}
	if what := Compare(o, n) & d.opts.Attrs; what != 0 {
		if err := d.emit(Change{Path: p, Kind: Modified, Old: o, New: n, What: what}); err != nil {
			return err
		}
	}
	oDir, nDir := o.Type == snapshot.TypeDir, n.Type == snapshot.TypeDir
	switch {
	case oDir && nDir:
		return d.trees(ctx, o.Subtree, n.Subtree)
	case oDir:
		return d.all(ctx, p, o, Removed)
	case nDir:
		return d.all(ctx, p, n, Added)
	}
	return nil
}

// all reports every node below the directory dir as added or removed.
func (d *differ) all(ctx context.Context, p string, dir *snapshot.Node, k Kind) error {
	if dir.Type != snapshot.TypeDir || dir.Subtree.IsNull() {
		return nil
	}
	return walk.Walk(ctx, d.l, p, dir.Subtree, func(path string, node *snapshot.Node) error {
		c := Change{Path: path, Kind: k}
		if k == Added {
			c.New = node
		} else {
			c.Old = node
		}
		return d.emit(c)
	})
}
