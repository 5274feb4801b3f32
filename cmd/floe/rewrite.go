package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/rewrite"
	"github.com/floe-backup/floe/internal/ui"
)

func newRewriteCommand(g *globals) *cobra.Command {
	var (
		excludes, excludeFiles []string
		forgetOld, dryRun      bool
		verbose                bool
		filter                 snapshotFilterFlags
	)
	c := &cobra.Command{
		Use:   "rewrite [SNAPSHOT...] --exclude PATTERN [--exclude-file FILE] [--forget]",
		Short: "Remove paths from existing snapshots (a secret backed up by mistake)",
		Long: `Write new snapshots without the paths that --exclude and --exclude-file
match (backup's patterns, matched against the paths in the snapshot:
"/home/a/.ssh/id_ed25519", "*.key", "cache/"). SNAPSHOT is an ID, a
unique prefix or "latest"; --all, or --host/--tag/--path alone, select
several.

Each new snapshot keeps the old one's time, host, paths, tags and
parent, and names the snapshot it replaces in "original"; its trees are
new, its files' data the same. A snapshot in which nothing matches is
left as it is. The old snapshots stay until --forget removes them (after
each new one is saved); then prune reclaims the data nothing references
any more:

  floe rewrite --all --exclude /etc/secret.key --forget && floe prune

Until prune has run past its grace period (--grace), the data is still in
the repository's packs. Needs a full key (exit 12 otherwise).`,
		Example: `  floe rewrite latest --exclude '/root/.aws/credentials' --dry-run -v
  floe rewrite --host web1 --exclude '*.pem' --exclude-file /etc/floe/never --forget`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			all, _ := cmd.Flags().GetBool("all")
			if len(args) == 0 && !all && len(filter.hosts)+len(filter.tags)+len(filter.paths) == 0 {
				return usageError{errors.New("say which snapshots: IDs, \"latest\", --all, or --host/--tag/--path")}
			}
			if all && len(args) > 0 {
				return usageError{errors.New("give SNAPSHOT IDs or --all, not both")}
			}
			for _, f := range excludeFiles {
				pats, err := pathmatch.ReadFile(f)
				if err != nil {
					return usageError{err}
				}
				excludes = append(excludes, pats...)
			}
			if _, err := pathmatch.New(excludes); err != nil {
				return usageError{err}
			}
			if len(excludes) == 0 {
				return usageError{errors.New("give --exclude PATTERN or --exclude-file FILE: what to remove")}
			}
			if dryRun && forgetOld {
				return usageError{errors.New("--dry-run writes nothing: --forget has no effect with it")}
			}
			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			if r.WriteOnly() {
				return fmt.Errorf("rewrite needs a full key (it reads the trees and removes records): %w", repo.ErrWriteOnly)
			}
			sel, err := selectSnapshots(ctx, g, r, args, filter.filter())
			if err != nil {
				return err
			}
			if len(sel) == 0 {
				g.say("no snapshots selected")
				return nil
			}
			res, err := rewrite.Run(ctx, r, sel, rewrite.Options{Excludes: excludes, Forget: forgetOld, DryRun: dryRun})
			if g.json {
				if res == nil {
					res = []rewrite.Result{}
				}
				if err != nil {
					return err // the error document says what failed
				}
				return writeDocument(map[string]any{"dry_run": dryRun, "snapshots": res})
			}
			for _, x := range res {
				switch {
				case x.Removed == 0:
					g.say("snapshot %s: nothing matched, left as it is", x.Old.Short())
				case dryRun:
					g.say("snapshot %s: would remove %s (%s)", x.Old.Short(), ui.Count(x.Removed, "entry", "entries"), ui.Bytes(x.RemovedBytes))
				default:
					old := "the old record is kept (--forget removes it)"
					if x.Forgotten {
						old = "the old record is removed"
					}
					g.say("snapshot %s: rewritten as %s without %s (%s); %s", x.Old.Short(), x.New.Short(), ui.Count(x.Removed, "entry", "entries"), ui.Bytes(x.RemovedBytes), old)
				}
				if verbose {
					for _, p := range x.Paths {
						fmt.Println(ui.Sanitize("  removed " + ui.Path(p)))
					}
				}
			}
			if err == nil && !dryRun && forgetOld {
				g.say("run `floe prune` to reclaim the data of what was removed")
			}
			return err
		},
	}
	c.Flags().StringArrayVarP(&excludes, "exclude", "e", nil, "remove paths matching `PATTERN`; repeatable")
	c.Flags().StringArrayVar(&excludeFiles, "exclude-file", nil, "read patterns to remove from `FILE`, one per line; repeatable")
	c.Flags().BoolVar(&forgetOld, "forget", false, "remove each old snapshot record once its rewrite is saved")
	c.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "show what would be removed, write nothing")
	c.Flags().Bool("all", false, "rewrite every snapshot")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "list the paths removed")
	filter.add(c)
	return c
}
