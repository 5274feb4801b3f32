package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/repair"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/ui"
)

func newRepairCommand(g *globals) *cobra.Command {
	var yes, dryRun, forceUnlock bool
	var leaseTTL time.Duration
	c := &cobra.Command{
		Use:   "repair [--yes | --dry-run]",
		Short: "Remove what makes the repository unusable and holds nothing readable",
		Long: `Find what makes the repository unusable or untrustworthy and can be removed
without losing anything readable, show it, and remove it once confirmed:

  snapshot records that do not decode (damaged, or written by a write-only
  key that uploaded garbage): they reference nothing anyone can read;

  packs that no readable index file lists, because an index file is
  damaged (bit rot, a truncated upload), was deleted, or a backup was
  killed before writing it: each pack's header (plaintext) names its blobs;
  every blob is hashed against its ID and the pack against its name, and
  the packs that verify are listed in new index files, signed by the
  repository's authority; then the index files that cannot be loaded are
  removed. A pack that does not verify (damaged, or garbage a write-only
  key uploaded) is reported and left to prune, never indexed;

  index entries that point to forged or missing copies (found by hashing
  every entry against its pack, as check --read-data does): a new index
  file, signed by the repository's authority, supersedes each index file
  that holds such entries and keeps every good entry; the old file is
  removed (the forged pack itself is left to prune, which deletes packs no
  index lists);

  gc marks not signed by a full key: prune and backups ignore them.

repair first shows what it will do. It asks for confirmation on a terminal;
elsewhere it needs --yes. --dry-run only shows the plan. Every action checks
its reason again just before it is carried out. repair needs a full key
(through a floe server, a token with the admin role). It reads every pack
in full, so it takes about as long as check --read-data.

repair never runs beside a prune or another repair: while it applies its
plan it holds the lease that prune takes (a signed object in gc/ naming its
host and pid, renewed every third of --lease-ttl, default 5m, and removed
at the end), and a prune that starts meanwhile refuses. A repair (not
--dry-run) refuses to start while a prune or another repair holds the
lease, with a message naming the holder (exit 1). If the holder died on
this machine (its process is gone), its lease is taken over at once; if it
died elsewhere, its lease expires after its --lease-ttl and is taken over
then; --force-unlock removes it at once, after you confirm (--yes in
scripts) that no prune or repair runs (it refuses while the holder runs on
this machine). Reading the repository and --dry-run take no lease. Backups
may run meanwhile: repair deletes no pack (the packs it does not index are
left to prune and its grace period), and a pack a backup uploads while
repair runs is at worst indexed twice.`,
		Example: `  floe repair --dry-run
  floe repair --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if yes && dryRun {
				return usageError{errors.New("--yes and --dry-run exclude each other")}
			}
			if leaseTTL < time.Second {
				return usageError{fmt.Errorf("--lease-ttl %s: at least 1s", leaseTTL)}
			}
			ctx := cmd.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close()
			if forceUnlock {
				if err := forceUnlockLeases(ctx, g, r, yes); err != nil {
					return err
				}
			}
			if !dryRun && !r.WriteOnly() {
				// Apply takes the lease; refuse now rather than after
				// reading every pack if a prune or repair holds it
				if err := r.CheckLease(ctx); err != nil {
					return err
				}
			}
			prog := &ui.Meter{}
			st := g.status()
			st.Run(200*time.Millisecond, func() string { return "repair: " + prog.Line() })
			plan, err := repair.FindProgress(ctx, r, prog)
			st.Stop()
			if err != nil {
				return err
			}
			if !g.json {
				printRepairPlan(g, plan)
			}
			// packs that could not be read: the repair cannot finish
			var incomplete error
			if n := plan.Incomplete(); n > 0 {
				incomplete = fmt.Errorf("%s that no index file lists could not be read (see above): run repair again once the storage reads them", ui.Count(n, "pack"))
			}
			if plan.Empty() || dryRun {
				if g.json {
					doc := map[string]any{"plan": plan, "applied": false}
					if incomplete != nil && !dryRun {
						g.exitCode = ExitError
						doc["error"] = incomplete.Error()
					}
					return writeDocument(doc)
				}
				if dryRun && !plan.Empty() {
					g.say("dry run: nothing was changed")
				}
				if !dryRun {
					return incomplete
				}
				return nil
			}
			if !yes {
				ok, err := confirm(g, "apply these repairs? [y/N] ")
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("not confirmed: nothing was changed")
				}
			}
			res, err := repair.Apply(ctx, r, plan, repair.ApplyOptions{LeaseTTL: leaseTTL})
			if res == nil && err != nil {
				// nothing was applied (a prune or repair holds the lease
				// now): reported as any failed command, with its hint
				return err
			}
			if err == nil {
				err = incomplete
			}
			if g.json {
				doc := map[string]any{"plan": plan, "applied": true, "result": res}
				if err != nil {
					g.exitCode = ExitError
					doc["error"] = err.Error()
				}
				return writeDocument(doc)
			}
			if res != nil {
				for _, w := range res.Warnings {
					g.warn("warning: %s", w)
				}
				for _, f := range res.Failed {
					g.warn("error: %s %s: %s", f.Kind, f.ID.Short(), f.Error)
				}
				g.say("repaired: %d of %d", len(res.Done), len(plan.Actions))
			}
			return err
		},
	}
	c.Flags().BoolVarP(&yes, "yes", "y", false, "apply the repairs (and with --force-unlock remove the lease) without asking")
	c.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "only show what would be done")
	c.Flags().BoolVar(&forceUnlock, "force-unlock", false, "remove the lease of a prune or repair that died (asks first), then repair")
	c.Flags().DurationVar(&leaseTTL, "lease-ttl", repo.DefaultLeaseTTL, "how long this repair's lease counts without renewal (if it dies)")
	return c
}

func printRepairPlan(g *globals, plan *repair.Plan) {
	if plan.Empty() {
		g.say("nothing to repair")
	} else {
		g.say("repair plan (%s):", ui.Count(len(plan.Actions), "action"))
	}
	var packs, blobs int
	var bytes int64
	for _, a := range plan.Actions {
		if a.Kind == repair.IndexPack {
			packs++
			blobs += a.Blobs
			bytes += a.Bytes
		}
	}
	if packs > 0 {
		g.say("  index %s that no readable index file lists (%s, %s), every blob verified by hashing, in new index files signed by this repository's authority:",
			ui.Count(packs, "pack"), ui.Count(blobs, "blob"), ui.Bytes(uint64(bytes)))
	}
	shown := 0
	for _, a := range plan.Actions {
		switch a.Kind {
		case repair.RemoveSnapshot:
			g.say("  remove snapshot record %s: %s", a.ID.Short(), a.Reason)
		case repair.IndexPack:
			// a lost index file of a prune may have listed thousands
			if shown++; shown <= maxPacksShown || packs == maxPacksShown+1 {
				g.say("    pack %s: %s, %s", a.ID.Short(), ui.Count(a.Blobs, "blob"), ui.Bytes(uint64(a.Bytes)))
			} else if shown == maxPacksShown+1 {
				g.say("    and %s", ui.Count(packs-maxPacksShown, "more pack"))
			}
		case repair.RemoveDamagedIndex:
			g.say("  remove damaged index file %s (its packs are indexed anew): %s", a.ID.Short(), a.Reason)
		case repair.RewriteIndex:
			g.say("  supersede index file %s with a signed one of its good entries: %s", a.ID.Short(), a.Reason)
		case repair.RemoveMark:
			g.say("  remove gc mark %s: %s", a.ID.Short(), a.Reason)
		default:
			g.say("  %s %s: %s", a.Kind, a.ID.Short(), a.Reason)
		}
	}
	if len(plan.Left) > 0 {
		g.say("left alone (%s):", ui.Count(len(plan.Left), "object"))
		for _, a := range plan.Left {
			switch a.Kind {
			case repair.LeavePack, repair.UnreadablePack:
				g.say("  pack %s (%s): %s", a.ID.Short(), ui.Bytes(uint64(a.Bytes)), a.Reason)
			case repair.LeaveIndex:
				g.say("  damaged index file %s: %s", a.ID.Short(), a.Reason)
			default:
				g.say("  %s %s: %s", a.Kind, a.ID.Short(), a.Reason)
			}
		}
	}
}

// maxPacksShown is how many packs to index the plan names one by one.
const maxPacksShown = 20

// confirm asks a yes/no question on the terminal; without one it refuses
// (a script must say --yes).
func confirm(g *globals, question string) (bool, error) {
	if !ui.IsTerminal(os.Stdin) || g.json {
		return false, usageError{errors.New("not confirmed (standard input is not a terminal): run again with --yes to apply, or --dry-run to only look")}
	}
	fmt.Fprint(os.Stderr, question)
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		return false, fmt.Errorf("read answer: %w", err)
	}
	a := strings.ToLower(strings.TrimSpace(line))
	return a == "y" || a == "yes", nil
}
