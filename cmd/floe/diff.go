package main

import (
	"bufio"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/diff"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

func newDiffCommand(g *globals) *cobra.Command {
	var (
		attrs  string
		filter snapshotFilterFlags
	)
	c := &cobra.Command{
		Use:   "diff SNAPSHOT1[:PATH] SNAPSHOT2[:PATH]",
		Short: "Show what changed between two snapshots",
		Long: `Show what changed from SNAPSHOT1 to SNAPSHOT2, in path order:

  +  added         -  removed         M  changed (with what changed)

Directories end in "/". Everything below an added or removed directory is
listed. Changed attributes are: type, content, size, mode, owner (uid/gid),
mtime, target (of a symlink), xattrs, rdev (of a device); --attrs picks
others, from these and names (user/group names), ctime, atime, inode,
links, or "all". Directories whose contents are identical are skipped
without being read, so diffs of large, mostly unchanged snapshots are fast.

With :PATH, only that part is compared (e.g. /etc of two hosts). When the
two paths differ, printed paths are relative to them ("/" is PATH).

The summary counts added, removed and changed paths, and the bytes added
(new files, and the new sizes of changed files) and removed (the old
ones). --json prints one document: the "changes" (one object each) and the
"summary" (docs/JSON.md).`,
		Example: `  floe diff 4f2a9c1e latest
  floe diff 4f2a9c1e:/etc 9b1d0e77:/etc
  floe diff --attrs all 4f2a9c1e 9b1d0e77 --json`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			opts := diff.Options{Attrs: diff.DefaultAttrs}
			if attrs != "" {
				a, ok := diff.ParseAttr(attrs)
				if !ok || a == 0 {
					return usageError{fmt.Errorf("--attrs %q: use a comma-separated list of %s, or all, or default", attrs, diff.AllAttrs)}
				}
				opts.Attrs = a
			}
			spec1, sub1 := splitSnapshotArg(args[0])
			spec2, sub2 := splitSnapshotArg(args[1])
			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			l := treeLoader(r)
			f := filter.filter()
			sn1, p1, n1, err := findSnapshotPath(ctx, r, l, spec1, sub1, f)
			if err != nil {
				return err
			}
			sn2, p2, n2, err := findSnapshotPath(ctx, r, l, spec2, sub2, f)
			if err != nil {
				return err
			}
			base := p1
			if p1 != p2 {
				base = "/"
			}
			out := bufio.NewWriterSize(os.Stdout, 64<<10)
			defer out.Flush()
			var doc *listDocument
			if g.json {
				doc = startList(os.Stdout, map[string]any{"old": sn1.ID.String(), "new": sn2.ID.String()}, "changes")
			}
			emit := func(ch diff.Change) error {
				node := ch.New
				if node == nil {
					node = ch.Old
				}
				if g.json {
					v := diffChangeJSON{Path: snapshot.EncodeName(ch.Path), Change: ch.Kind.String(),
						Type: node.Type.String()}
					if ch.Kind == diff.Modified {
						v.What = ch.What.Names()
						v.Old, v.New = nodeJSON("", ch.Old, false), nodeJSON("", ch.New, false)
					} else if node.Type == snapshot.TypeFile {
						size := node.Size
						v.Size = &size
					}
					return doc.add(v)
				}
				name := ch.Path
				if node.Type == snapshot.TypeDir && name != "/" {
					name += "/"
				}
				if ch.Kind == diff.Modified {
					_, err := fmt.Fprintf(out, "%s  %s  (%s)\n", ch.Kind, ui.Path(name), ch.What)
					return err
				}
				_, err := fmt.Fprintf(out, "%s  %s\n", ch.Kind, ui.Path(name))
				return err
			}
			var sum diff.Summary
			if p1 == "/" && p2 == "/" {
				sum, err = diff.Trees(ctx, l, "/", n1.Subtree, n2.Subtree, opts, emit)
			} else {
				// compare the two nodes (names may differ: compare as one)
				a, b := *n1, *n2
				a.Name, b.Name = "", ""
				sum, err = diff.Nodes(ctx, l, base, &a, &b, opts, emit)
			}
			if err != nil {
				err = fmt.Errorf("diff %s %s: %w", sn1.ID.Short(), sn2.ID.Short(), err)
			}
			if g.json {
				if derr := doc.finish(map[string]any{"summary": sum}, err); derr != nil || err == nil {
					return derr
				}
				return documentFailed{err}
			}
			if err != nil {
				return err
			}
			if g.quiet {
				return nil
			}
			_, err = fmt.Fprintf(out, "\n%s..%s: %d added (%s), %d removed (%s), %d changed; %s skipped\n",
				sn1.ID.Short(), sn2.ID.Short(), sum.Added, ui.Bytes(sum.BytesAdded), sum.Removed, ui.Bytes(sum.BytesRemoved),
				sum.Modified, ui.Count(sum.TreesSkipped, "identical directory", "identical directories"))
			return err
		},
	}
	c.Flags().StringVar(&attrs, "attrs", "", "attributes that count as a change: comma-separated, \"all\" or \"default\" (default \"default\")")
	filter.add(c)
	return c
}

type diffChangeJSON struct {
	Path   string          `json:"path"`
	Change string          `json:"change"`
	Type   string          `json:"type"`
	Size   *uint64         `json:"size,omitempty"`
	What   []string        `json:"what,omitempty"`
	Old    *nodeJSONObject `json:"old,omitempty"`
	New    *nodeJSONObject `json:"new,omitempty"`
}
