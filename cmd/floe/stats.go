package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/stats"
	"github.com/floe-backup/floe/internal/ui"
)

func newStatsCommand(g *globals) *cobra.Command {
	var filter snapshotFilterFlags
	c := &cobra.Command{
		Use:   "stats [SNAPSHOT...]",
		Short: "Show how much data snapshots hold and store",
		Long: `Measure snapshots: the given ones, or all that pass --host/--tag/--path.

  logical size       the sum of the sizes of all files, each file counted in
                     every snapshot that holds it (what restores would write)
  unique blobs       the chunks and trees the snapshots reference, once each
  raw size           their plaintext size (data and trees)
  stored size        their size in the repository (compressed, encrypted)
  deduplication      logical size / raw size of the unique data chunks
  compression        raw size / stored size

For a single snapshot, "unique to this snapshot" is the data that it
references and no other snapshot in the repository does: what forgetting
it and pruning would free. Without SNAPSHOT arguments, the repository's
totals follow: its pack files, every blob in the index, and what no
snapshot references any more (prune frees it).`,
		Example: `  floe stats
  floe stats latest
  floe stats --host web1 --json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			l := treeLoader(r)
			sel, err := selectSnapshots(ctx, g, r, args, filter.filter())
			if err != nil {
				return err
			}
			roots := make([]hash.Ref, len(sel))
			for i, s := range sel {
				roots[i] = s.Tree
			}
			tot, err := stats.Snapshots(ctx, l, r.Index(), roots)
			if err != nil {
				return err
			}
			var uniq *stats.Unique
			if len(args) == 1 {
				if uniq, err = stats.UniqueToSnapshot(ctx, l, r, sel[0]); err != nil {
					return err
				}
			}
			var repoTot *stats.RepoTotals
			var unreferenced uint64
			allSelected := len(args) == 0 && len(filter.hosts)+len(filter.tags)+len(filter.paths) == 0
			if len(args) == 0 {
				if repoTot, err = stats.Repository(ctx, r); err != nil {
					return err
				}
				if allSelected && repoTot.StoredSize > tot.StoredSize {
					unreferenced = repoTot.StoredSize - tot.StoredSize
				}
			}
			if g.json {
				out := map[string]any{"snapshots": tot}
				ids := make([]string, len(sel))
				for i, s := range sel {
					ids[i] = s.ID.String()
				}
				out["snapshot_ids"] = ids
				if uniq != nil {
					out["unique"] = uniq
				}
				if repoTot != nil {
					out["repository"] = repoTot
					if allSelected {
						out["unreferenced_stored_size"] = unreferenced
					}
				}
				return writeDocument(out)
			}
			p := func(label, format string, args ...any) {
				fmt.Printf("%-26s %s\n", label+":", fmt.Sprintf(format, args...))
			}
			p("snapshots", "%d", tot.Snapshots)
			p("files", "%d", tot.Files)
			p("directories", "%d", tot.Dirs)
			p("other nodes", "%d", tot.Others)
			p("logical size", "%s", ui.Bytes(tot.LogicalSize))
			p("unique blobs", "%d (%d data, %d tree)", tot.Blobs, tot.DataBlobs, tot.TreeBlobs)
			p("raw size", "%s (data %s, trees %s)", ui.Bytes(tot.RawSize), ui.Bytes(tot.DataRaw), ui.Bytes(tot.TreeRaw))
			p("stored size", "%s", ui.Bytes(tot.StoredSize))
			p("deduplication ratio", "%.2fx", tot.DedupRatio)
			p("compression ratio", "%.2fx", tot.CompressionRatio)
			if tot.MissingBlobs > 0 {
				p("missing blobs", "%d (not in the index: run `floe check`)", tot.MissingBlobs)
			}
			if uniq != nil {
				p("unique to this snapshot", "%s, raw %s, stored %s", ui.Count(uniq.Blobs, "blob"), ui.Bytes(uniq.RawSize), ui.Bytes(uniq.StoredSize))
			}
			if repoTot != nil {
				fmt.Println()
				fmt.Println("repository:")
				p("  pack files", "%d, %s", repoTot.Packs, ui.Bytes(repoTot.PackBytes))
				p("  indexed blobs", "%d, stored %s", repoTot.Blobs, ui.Bytes(repoTot.StoredSize))
				if allSelected {
					p("  unreferenced (prunable)", "%s stored", ui.Bytes(unreferenced))
				}
			}
			return nil
		},
	}
	filter.add(c)
	return c
}
