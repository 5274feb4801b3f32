package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
	"github.com/floe-backup/floe/internal/walk"
)

func newLsCommand(g *globals) *cobra.Command {
	var (
		long, recursive, numeric bool
		filter                   snapshotFilterFlags
	)
	c := &cobra.Command{
		Use:   "ls SNAPSHOT[:PATH] [PATH]",
		Short: "List the files of a snapshot",
		Long: `List the files of a snapshot: PATH itself (default: the whole snapshot) and
everything below it, depth first in name order, one full path a line.
--recursive=false lists only PATH and its direct entries.

SNAPSHOT is an ID, a unique prefix of one, or "latest" (the newest, after
--host/--tag/--path). The path can be given as SNAPSHOT:PATH or as a
second argument.

-l adds mode, owner, size (or major, minor of a device) and modification
time, like ls -l, and the targets of symlinks. Names holding control
characters or bytes that are not UTF-8 are printed quoted ("a\nb"); --json
prints one document whose "nodes" list holds the nodes, with exact names
(not UTF-8: "b64:" and the base64 of the bytes); see docs/JSON.md.`,
		Example: `  floe ls latest
  floe ls latest /etc -l
  floe ls 4f2a9c1e:/home/alice --recursive=false
  floe ls latest --host web1 /etc/nginx --json | jq -r '.nodes[] | select(.type=="file") | .path'`,
		Args: usageArgs(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			sp, err := g.openSnapshotPath(ctx, args, filter.filter())
			if err != nil {
				return err
			}
			defer sp.r.Close()
			l, sn, p, node := sp.l, sp.sn, sp.path, sp.node
			out := bufio.NewWriterSize(os.Stdout, 64<<10)
			var doc *listDocument
			if g.json {
				doc = startList(os.Stdout, map[string]any{"snapshot": sn.ID.String(), "path": snapshot.EncodeName(p)}, "nodes")
			}
			print := func(path string, n *snapshot.Node) error {
				if g.json {
					return doc.add(nodeJSON(path, n, false))
				}
				if long {
					_, err := fmt.Fprintln(out, longLine(path, n, numeric))
					return err
				}
				_, err := fmt.Fprintln(out, ui.Path(path))
				return err
			}
			if p != "/" {
				if err := print(p, node); err != nil {
					return err
				}
			}
			if node.Type == snapshot.TypeDir && !node.Subtree.IsNull() {
				err = walk.Walk(ctx, l, p, node.Subtree, func(path string, n *snapshot.Node) error {
					if err := print(path, n); err != nil {
						return err
					}
					if !recursive && n.Type == snapshot.TypeDir {
						return walk.SkipDir
					}
					return nil
				})
				if err != nil {
					err = fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
					if g.json {
						if derr := doc.finish(nil, err); derr != nil {
							return derr
						}
						return documentFailed{err}
					}
					out.Flush()
					return err
				}
			}
			if g.json {
				return doc.finish(nil, nil)
			}
			return out.Flush()
		},
	}
	c.Flags().BoolVarP(&long, "long", "l", false, "show mode, owner, size and modification time")
	c.Flags().BoolVarP(&recursive, "recursive", "R", true, "list everything below PATH (--recursive=false: only its direct entries)")
	c.Flags().BoolVarP(&numeric, "numeric-owner", "n", false, "with -l, show uid and gid instead of user and group names")
	filter.add(c)
	return c
}

// usageArgs makes argument count errors usage errors (exit code 2).
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			// cobra's "accepts 1 arg(s), received 0" does not say which
			return usageError{hintedError{err, fmt.Sprintf("usage: %s (`%s --help` has examples)", strings.TrimSuffix(cmd.UseLine(), " [flags]"), cmd.CommandPath())}}
		}
		return nil
	}
}

// snapshotPathArgs reads "SNAPSHOT[:PATH] [PATH]".
func snapshotPathArgs(args []string) (spec, sub string, err error) {
	spec, sub = splitSnapshotArg(args[0])
	if len(args) > 1 {
		if sub != "" {
			return "", "", usageError{fmt.Errorf("give the path as %s:PATH or as a second argument, not both", spec)}
		}
		sub = args[1]
	}
	return spec, sub, nil
}

// snapshotPath is the node that "SNAPSHOT[:PATH] [PATH]" arguments name,
// with the repository it was found in (open: the caller closes it) and a
// tree loader for walking below it.
type snapshotPath struct {
	r    *repo.Repository
	l    snapshot.TreeLoader
	sn   *snapshot.Record
	path string
	node *snapshot.Node
}

// openSnapshotPath opens the repository (read access) and finds the node
// that args name in the snapshot f selects.
func (g *globals) openSnapshotPath(ctx context.Context, args []string, f snapshot.Filter) (*snapshotPath, error) {
	spec, sub, err := snapshotPathArgs(args)
	if err != nil {
		return nil, err
	}
	r, err := g.openRepo(ctx, true)
	if err != nil {
		return nil, err
	}
	l := treeLoader(r)
	sn, p, node, err := findSnapshotPath(ctx, r, l, spec, sub, f)
	if err != nil {
		r.Close()
		return nil, err
	}
	return &snapshotPath{r: r, l: l, sn: sn, path: p, node: node}, nil
}

// treeLoader loads trees of r through a cache, so that walking several
// snapshots loads each shared tree once, and reads them ahead by stretches
// of their packs (snapshot.ReadAheadTrees), so that a walk costs a few
// requests rather than one per directory.
func treeLoader(r *repo.Repository) snapshot.TreeLoader {
	return walk.NewCache(snapshot.NewReadAheadTrees(r), 0)
}

// findSnapshotPath finds the snapshot spec and the node at path sub in it.
func findSnapshotPath(ctx context.Context, r *repo.Repository, l snapshot.TreeLoader, spec, sub string, f snapshot.Filter) (*snapshot.Record, string, *snapshot.Node, error) {
	sn, err := snapshot.Find(ctx, r, spec, f)
	if err != nil {
		return nil, "", nil, err
	}
	p, node, err := walk.Resolve(ctx, l, sn.Tree, sub)
	if err != nil {
		return nil, "", nil, fmt.Errorf("snapshot %s: %w", sn.ID.Short(), err)
	}
	return sn, p, node, nil
}

// modeString formats a node's type and mode like ls -l: "drwxr-xr-x".
func modeString(n *snapshot.Node) string {
	var b [10]byte
	switch n.Type {
	case snapshot.TypeDir:
		b[0] = 'd'
	case snapshot.TypeSymlink:
		b[0] = 'l'
	case snapshot.TypeFIFO:
		b[0] = 'p'
	case snapshot.TypeCharDev:
		b[0] = 'c'
	case snapshot.TypeBlockDev:
		b[0] = 'b'
	case snapshot.TypeSocket:
		b[0] = 's'
	default:
		b[0] = '-'
	}
	const rwx = "rwxrwxrwx"
	for i := 0; i < 9; i++ {
		if n.Mode&(1<<(8-i)) != 0 {
			b[i+1] = rwx[i]
		} else {
			b[i+1] = '-'
		}
	}
	special := func(bit uint32, pos int, set, unset byte) {
		if n.Mode&bit == 0 {
			return
		}
		if b[pos] == '-' {
			b[pos] = unset
		} else {
			b[pos] = set
		}
	}
	special(0o4000, 3, 's', 'S')
	special(0o2000, 6, 's', 'S')
	special(0o1000, 9, 't', 'T')
	return string(b[:])
}

func ownerNames(n *snapshot.Node, numeric bool) (string, string) {
	u, gr := n.User, n.Group
	if numeric || u == "" {
		u = strconv.FormatUint(uint64(n.UID), 10)
	}
	if numeric || gr == "" {
		gr = strconv.FormatUint(uint64(n.GID), 10)
	}
	return ui.Path(u), ui.Path(gr)
}

// longLine formats a node like ls -l.
func longLine(p string, n *snapshot.Node, numeric bool) string {
	u, gr := ownerNames(n, numeric)
	size := strconv.FormatUint(n.Size, 10)
	if n.Type == snapshot.TypeCharDev || n.Type == snapshot.TypeBlockDev {
		size = fmt.Sprintf("%d, %d", unix.Major(n.Rdev), unix.Minor(n.Rdev))
	} else if n.Type != snapshot.TypeFile {
		size = "0"
	}
	mt := "-"
	if !n.ModTime.IsZero() {
		mt = n.ModTime.Local().Format("2006-01-02 15:04:05")
	}
	line := fmt.Sprintf("%s  %-8s %-8s %12s  %s  %s", modeString(n), u, gr, size, mt, ui.Path(p))
	if n.Type == snapshot.TypeSymlink {
		line += " -> " + ui.Path(n.LinkTarget)
	}
	return line
}

// nodeJSONObject is the JSON form of a node (ls, find, diff, cat tree).
// Names and other raw-byte strings that are not UTF-8 are written as
// "b64:" and their base64 (snapshot.EncodeName).
type nodeJSONObject struct {
	Path        string      `json:"path,omitempty"`
	Name        string      `json:"name"`
	Type        string      `json:"type"`
	Mode        uint32      `json:"mode"`
	Permissions string      `json:"permissions"`
	UID         uint32      `json:"uid"`
	GID         uint32      `json:"gid"`
	User        string      `json:"user,omitempty"`
	Group       string      `json:"group,omitempty"`
	Size        uint64      `json:"size"`
	ModTime     *time.Time  `json:"mtime,omitempty"`
	AccessTime  *time.Time  `json:"atime,omitempty"`
	ChangeTime  *time.Time  `json:"ctime,omitempty"`
	Inode       uint64      `json:"inode,omitempty"`
	Device      uint64      `json:"device_id,omitempty"`
	Links       uint64      `json:"links,omitempty"`
	LinkTarget  string      `json:"link_target,omitempty"`
	Rdev        uint64      `json:"rdev,omitempty"`
	Xattrs      []xattrJSON `json:"xattrs,omitempty"`
	Sparse      bool        `json:"sparse,omitempty"`
	Subtree     *hash.ID    `json:"subtree,omitempty"`
	Content     []hash.ID   `json:"content,omitempty"`
}

type xattrJSON struct {
	Name  string `json:"name"`
	Value []byte `json:"value"` // base64
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// nodeJSON returns the JSON object of a node at path p ("" leaves the path
// out). full adds the subtree and content blob IDs.
func nodeJSON(p string, n *snapshot.Node, full bool) *nodeJSONObject {
	o := &nodeJSONObject{
		Name: snapshot.EncodeName(n.Name), Type: n.Type.String(), Mode: n.Mode, Permissions: modeString(n),
		UID: n.UID, GID: n.GID, User: snapshot.EncodeName(n.User), Group: snapshot.EncodeName(n.Group),
		Size: n.Size, ModTime: timePtr(n.ModTime), AccessTime: timePtr(n.AccessTime), ChangeTime: timePtr(n.ChangeTime),
		Inode: n.Inode, Device: n.Device, Links: n.Links, LinkTarget: snapshot.EncodeName(n.LinkTarget),
		Rdev: n.Rdev, Sparse: n.Sparse,
	}
	if p != "" {
		o.Path = snapshot.EncodeName(p)
	}
	for _, x := range n.Xattrs {
		o.Xattrs = append(o.Xattrs, xattrJSON{Name: snapshot.EncodeName(x.Name), Value: x.Value})
	}
	if full {
		// IDs only: a ref's key would let anyone with the storage read
		// the blob, so it never leaves floe
		if !n.Subtree.IsNull() {
			id := n.Subtree.ID
			o.Subtree = &id
		}
		for _, c := range n.Content {
			o.Content = append(o.Content, c.ID)
		}
	}
	return o
}

// refuseTerminal fails when binary output would go to a terminal.
func refuseTerminal(w io.Writer, what string) error {
	if f, ok := w.(*os.File); ok && ui.IsTerminal(f) {
		return usageError{fmt.Errorf("standard output is a terminal: redirect the %s to a file or a pipe, or use --output FILE", what)}
	}
	return nil
}
