package main

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/stats"
	"github.com/floe-backup/floe/internal/ui"
)

func newStatsCommand(g *globals) *cobra.Command {
	var filter snapshotFilterFlags
	var byHost bool
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
  compression        raw size / stored size, and the repository's level
                     (floe init --compression)

For a single snapshot, "unique to this snapshot" is the data that it
references and no other snapshot in the repository does: what forgetting
it and pruning would free. Without SNAPSHOT arguments, the repository's
totals follow: its pack files, every blob in the index, and what no
snapshot references any more (prune frees it).

--by-host shows, for each host (those --host names, else all), what its
snapshots reference (blobs, raw and stored size, each blob once) and what
it alone costs: the stored size of the blobs no other host's snapshot
references, which forgetting all its snapshots and pruning would free.
Data that several hosts share is in each one's "referenced" and in no
one's "own": the sum of the "own" columns plus the shared data is what
the snapshots store.`,
		Example: `  floe stats
  floe stats latest
  floe stats --host web1 --json
  floe stats --by-host                      # charge-back: what each host alone costs`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if byHost && (len(args) > 0 || len(filter.tags)+len(filter.paths) > 0) {
				return usageError{errors.New("--by-host measures every snapshot of each host: give no SNAPSHOT, --tag or --path (--host chooses the hosts shown)")}
			}
			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			l := treeLoader(r)
			if byHost {
				return statsByHost(ctx, g, r, l, filter.hosts)
			}
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
				out := map[string]any{"snapshots": tot, "compression_level": r.CompressionLevel().String()}
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
			p("compression ratio", "%.2fx (level %s)", tot.CompressionRatio, r.CompressionLevel())
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
	c.Flags().BoolVar(&byHost, "by-host", false, "for each host: what its snapshots reference and what no other host's do (charge-back)")
	filter.add(c)
	return c
}

// statsByHost prints stats --by-host.
func statsByHost(ctx context.Context, g *globals, r *repo.Repository, l snapshot.TreeLoader, hosts []string) error {
	all, errs, err := snapshot.List(ctx, r)
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return fmt.Errorf("cannot tell what each host alone references: %s could not be loaded (first: %w; see `floe repair`)", ui.Count(len(errs), "snapshot"), errs[0])
	}
	costs, err := stats.ByHost(ctx, l, r.Index(), all)
	if err != nil {
		return err
	}
	if len(hosts) > 0 {
		kept := costs[:0]
		for _, c := range costs {
			if slices.Contains(hosts, c.Host) {
				kept = append(kept, c)
			}
		}
		costs = kept
	}
	if g.json {
		return writeDocument(map[string]any{"hosts": costs})
	}
	if len(costs) == 0 {
		g.say("no snapshots")
		return nil
	}
	fmt.Printf("%-20s  %9s  %12s  %12s  %12s  %12s\n", "Host", "Snapshots", "Ref. raw", "Ref. stored", "Own raw", "Own stored")
	for _, c := range costs {
		fmt.Println(ui.Sanitize(fmt.Sprintf("%-20s  %9d  %12s  %12s  %12s  %12s", ui.Path(c.Host), c.Snapshots,
			ui.Bytes(c.Referenced.RawSize), ui.Bytes(c.Referenced.StoredSize), ui.Bytes(c.Own.RawSize), ui.Bytes(c.Own.StoredSize))))
	}
	return nil
}
