package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
	"github.com/floe-backup/floe/internal/walk"
)

func newFindCommand(g *globals) *cobra.Command {
	var (
		filter    snapshotFilterFlags
		snapshots []string
	)
	c := &cobra.Command{
		Use:   "find PATTERN...",
		Short: "Find files in snapshots",
		Long: `Find the files whose paths match a pattern, in every snapshot (or those
selected by --host, --tag, --path and --snapshot), oldest snapshot first.

Patterns work as everywhere in floe (backup --exclude, restore --include):
a pattern without a leading "/" matches at any depth ("*.conf",
"ssh/*_config", "nginx/**/*.conf"); one with a leading "/" is anchored at
the root ("/home/*/.ssh"); "**" matches any number of directories; a
trailing "/" matches directories only. Quote patterns so the shell leaves
them alone. A leading "!" drops what an earlier pattern matched. find
lists the entries a pattern names, not everything below them.

Each match prints the snapshot ID, snapshot time, host, size, modification
time and path; --json prints one document whose "matches" list holds them (docs/JSON.md).`,
		Example: `  floe find '*.conf'
  floe find --host web1 '/etc/nginx/*.conf'
  floe find 'authorized_keys' --snapshot 4f2a9c1e --json`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			m, err := pathmatch.New(args)
			if err != nil {
				return usageError{err}
			}
			if m.Empty() {
				return usageError{fmt.Errorf("no pattern given")}
			}
			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			sel, err := selectSnapshots(ctx, g, r, snapshots, filter.filter())
			if err != nil {
				return err
			}
			out := bufio.NewWriterSize(os.Stdout, 64<<10)
			defer out.Flush()
			var doc *listDocument
			if g.json {
				doc = startList(os.Stdout, map[string]any{"patterns": args}, "matches")
			}
			n, err := walk.Find(ctx, treeLoader(r), m, sel, func(sn *snapshot.Record, p string, node *snapshot.Node) error {
				if g.json {
					return doc.add(struct {
						Snapshot string    `json:"snapshot"`
						Time     time.Time `json:"time"`
						Hostname string    `json:"hostname"`
						*nodeJSONObject
					}{sn.ID.String(), sn.Time, sn.Hostname, nodeJSON(p, node, false)})
				}
				size := "-"
				if node.Type == snapshot.TypeFile {
					size = ui.Bytes(node.Size)
				}
				mt := "-"
				if !node.ModTime.IsZero() {
					mt = node.ModTime.Local().Format("2006-01-02 15:04")
				}
				_, err := fmt.Fprintf(out, "%s  %s  %-12s %10s  %s  %s\n", sn.ID.Short(), sn.Time.Local().Format("2006-01-02 15:04:05"),
					ui.Path(sn.Hostname), size, mt, ui.Path(p))
				return err
			})
			if g.json {
				if derr := doc.finish(map[string]any{"snapshots_searched": len(sel)}, err); derr != nil || err == nil {
					return derr
				}
				return documentFailed{err}
			}
			if err != nil {
				return err
			}
			if err := out.Flush(); err != nil {
				return err
			}
			if !g.quiet {
				fmt.Fprintf(os.Stderr, "%s in %s\n", ui.Count(n, "match", "matches"), ui.Count(len(sel), "snapshot"))
			}
			return nil
		},
	}
	filter.add(c)
	c.Flags().StringArrayVar(&snapshots, "snapshot", nil, "search only this snapshot (ID, prefix or \"latest\"); repeatable")
	return c
}

// selectSnapshots returns the snapshots given by spec (IDs, prefixes,
// "latest"), or with none every snapshot that passes the filter, oldest
// first, and warns of snapshots that cannot be read.
func selectSnapshots(ctx context.Context, g *globals, r *repo.Repository, specs []string, f snapshot.Filter) ([]*snapshot.Record, error) {
	sel, errs, err := snapshot.Select(ctx, r, specs, f)
	if err != nil {
		return nil, err
	}
	damaged := false
	for _, e := range errs {
		g.warn("warning: %v", e)
		damaged = damaged || errors.Is(e, repo.ErrDamagedSnapshot)
	}
	if damaged {
		g.warn("hint: `%s repair` removes snapshot records that do not decode", g.cmdPrefix())
	}
	snapshot.SortByTime(sel)
	return sel, nil
}
