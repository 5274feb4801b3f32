package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/floe-backup/floe/internal/prune"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/ui"
)

// pruneFlags are the flags of prune (and of forget --prune).
type pruneFlags struct {
	grace     string
	maxUnused string
}

func (f *pruneFlags) add(fl *pflag.FlagSet, prefix string) {
	fl.StringVar(&f.grace, "grace", "24h", prefix+"delete marked data only once the mark is older than `DURATION` (e.g. 24h, 2d; 0: see the danger in `floe prune --help`)")
	fl.StringVar(&f.maxUnused, "max-unused", "10%", prefix+"repack packs whose unused share exceeds `PERCENT` (\"unlimited\": never repack)")
}

func (f *pruneFlags) options() (prune.Options, error) {
	grace, err := prune.ParseGrace(f.grace)
	if err != nil {
		return prune.Options{}, usageError{fmt.Errorf("--grace: %w", err)}
	}
	mu, err := prune.ParseMaxUnused(f.maxUnused)
	if err != nil {
		return prune.Options{}, usageError{fmt.Errorf("--max-unused: %w", err)}
	}
	return prune.Options{Grace: grace, MaxUnused: mu}, nil
}

func newPruneCommand(g *globals) *cobra.Command {
	f := &pruneFlags{}
	var dryRun, forceUnlock, yes bool
	var leaseTTL time.Duration
	c := &cobra.Command{
		Use:   "prune [--grace DURATION] [--max-unused PERCENT] [--dry-run]",
		Short: "Delete data that no snapshot needs, safely while backups run",
		Long: `Reclaim the space of data that no snapshot needs any more (after forget).

prune needs no lock and may run while backups run. It works in two phases,
a grace period apart (--grace, default 24h):

  sweep  delete the packs that earlier prunes marked, once the mark is older
         than the grace period, unless a snapshot written since needs them;
  mark   mark the packs that no snapshot needs, and the packs that no index
         file lists (left by a killed backup); copy the used blobs of packs
         whose unused share exceeds --max-unused (default 10%) into new
         packs, then mark the old ones.

So space comes back only in a prune that runs a grace period after the
prune that marked it. Backups ignore marked packs when they deduplicate,
and a backup that runs longer than half the grace period checks before it
writes its snapshot that nothing it relies on was marked meanwhile.

--grace 0 deletes at once what the previous prune marked. That is safe only
when no backup runs between the two prunes and during the second: a backup
that started before a mark and writes its snapshot after the next prune
has read the snapshots can lose data it deduplicated against. Use it only
when you know that no backup runs.

One prune at a time, and never beside a repair: a prune takes a lease
first (a signed object in gc/ naming its host and pid, renewed every third
of --lease-ttl, default 5m, and removed at the end), the same lease that
repair takes while it applies its plan. A second prune refuses to start
while the lease counts, with a message naming the holder (exit 1), and so
does a repair. If the holder died on this machine (its process is gone),
the next prune takes its lease over at once; if it died elsewhere, its
lease expires after --lease-ttl and is taken over then; --force-unlock
removes it at once, after you confirm (--yes in scripts) that no prune or
repair runs: two prunes, or a prune and a repair, at once can delete data
a snapshot needs (it refuses while the holder runs on this machine).
--dry-run takes no lease. prune needs a full key (it reads the snapshots).
A prune that is interrupted leaves a repository that check passes; the
next prune finishes the job. --dry-run shows the plan and changes nothing.`,
		Example: `  floe prune --dry-run
  floe prune
  floe forget --keep-daily 7 --keep-weekly 5 --prune
  floe prune --max-unused 25% --grace 48h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := f.options()
			if err != nil {
				return err
			}
			opts.DryRun = dryRun
			opts.LeaseTTL = leaseTTL
			if leaseTTL < time.Second {
				return usageError{fmt.Errorf("--lease-ttl %s: at least 1s", leaseTTL)}
			}
			r, err := g.openRepo(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer r.Close()
			if forceUnlock {
				if err := forceUnlockLeases(cmd.Context(), g, r, yes); err != nil {
					return err
				}
			}
			res, err := runPrune(cmd.Context(), g, r, opts)
			if err != nil {
				return err
			}
			if g.json {
				stdoutJSON.summary(res)
				return nil
			}
			printPruneResult(g, res)
			return nil
		},
	}
	f.add(c.Flags(), "")
	c.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "show what would be deleted, repacked and marked; change nothing")
	c.Flags().BoolVar(&forceUnlock, "force-unlock", false, "remove the lease of a prune or repair that died (asks first), then prune")
	c.Flags().BoolVar(&yes, "yes", false, "with --force-unlock: do not ask")
	c.Flags().DurationVar(&leaseTTL, "lease-ttl", repo.DefaultLeaseTTL, "how long this prune's lease counts without renewal (if it dies)")
	return c
}

// forceUnlockLeases removes the prune leases (of prunes and repairs)
// after the user confirmed. prune and repair both offer it.
func forceUnlockLeases(ctx context.Context, g *globals, r *repo.Repository, yes bool) error {
	leases, err := r.Leases(ctx)
	if err != nil {
		return err
	}
	if len(leases) == 0 {
		g.say("no prune lease to remove (no prune or repair holds one)")
		return nil
	}
	for _, l := range leases {
		// removing the lease of a prune that runs is how two prunes come
		// to run at once: not for one known to run here, even with --yes
		if l.RunsHere() {
			return fmt.Errorf("the %s holding the prune lease (pid %d) is still running on this machine: wait for it to end; no lease was removed", l.TaskName(), l.PID)
		}
	}
	now := time.Now()
	for _, l := range leases {
		state := "counts until " + l.Expires.Local().Format(time.RFC3339)
		switch {
		case l.Expired(now):
			state = "expired"
		case l.Gone():
			state = "its process on this machine is gone"
		}
		g.warn("prune lease of %s (pid %d, a %s), renewed %s, %s", ui.Path(l.Holder), l.PID, l.TaskName(), l.Time.Local().Format(time.RFC3339), state)
	}
	if !yes {
		ok, err := confirm(g, "remove it? Only if that prune or repair is not running: a prune beside another prune or a repair can delete data. [y/N] ")
		if err != nil {
			return err
		}
		if !ok {
			return &exitError{ExitError, fmt.Errorf("not unlocked")}
		}
	}
	removed, err := r.BreakLeases(ctx)
	if err != nil {
		return err
	}
	g.warn("removed %s", ui.Count(len(removed), "prune lease"))
	return nil
}

// runPrune runs prune with a progress line on a terminal.
func runPrune(ctx context.Context, g *globals, r *repo.Repository, opts prune.Options) (*prune.Result, error) {
	prog := &ui.Meter{}
	opts.Progress = prog
	start := time.Now()
	st := g.status()
	st.Run(200*time.Millisecond, func() string { return "prune: " + prog.Line() })
	stopJSON := g.jsonStatus(start, func() map[string]any {
		phase, _, done, total, bytesDone, bytesTotal := prog.Current()
		if bytesTotal > 0 { // repacking counts bytes
			done, total = bytesDone, bytesTotal
		}
		return map[string]any{"phase": phase, "done": done, "total": total}
	})
	res, err := prune.Run(ctx, r, opts)
	st.Stop()
	stopJSON()
	if err != nil && res != nil && !g.json {
		// what was done before the error
		printPruneResult(g, res)
	}
	return res, err
}

func printPruneResult(g *globals, res *prune.Result) {
	would := func(done, planned string) string {
		if res.DryRun {
			return planned
		}
		return done
	}
	count := func(c prune.Count) string {
		return fmt.Sprintf("%s (%s)", packCount(c.Packs), ui.Bytes(uint64(c.Bytes)))
	}
	verb := "use"
	if res.Snapshots == 1 {
		verb = "uses"
	}
	g.say("%s %s %s; %s in storage", ui.Count(res.Snapshots, "snapshot"), verb, ui.Count(res.UsedBlobs, "blob"), count(res.Before))
	for _, w := range res.Warnings {
		g.warn("warning: %s", w)
	}
	for _, s := range res.Undecodable {
		g.warn("warning: skipped a snapshot record that does not decode: %s", s.Error)
	}
	if n := len(res.Undecodable); n > 0 {
		g.warn("warning: %s not decode and reference nothing readable; `%s repair` removes them", ui.Count(n, "snapshot record does", "snapshot records do"), g.cmdPrefix())
	}
	due, notDue := 0, 0
	var next time.Time
	for _, m := range res.Marks {
		if m.Due {
			due++
		} else {
			notDue++
			if next.IsZero() || m.DueAt.Before(next) {
				next = m.DueAt
			}
		}
	}
	switch {
	case len(res.Marks) == 0:
		g.say("sweep: no marks from earlier prunes")
	default:
		line := fmt.Sprintf("sweep: %s due", ui.Count(due, "mark"))
		if notDue > 0 {
			line += fmt.Sprintf(", %d not yet due (the first at %s)", notDue, next.Local().Format("2006-01-02 15:04:05"))
		}
		g.say("%s", line)
	}
	s := res.Sweep
	if due > 0 {
		g.say("  %s %s", would("deleted", "would delete"), count(s.Deleted))
		if s.Rescued.Packs > 0 {
			g.say("  %s %s that snapshots written since the mark need", would("kept", "would keep"), count(s.Rescued))
		}
		if s.Indexed.Packs > 0 {
			g.say("  %s %s that a backup indexed after the mark", would("kept", "would keep"), count(s.Indexed))
		}
		if s.IndexFilesRemoved > 0 {
			into := "one"
			if s.IndexFilesWritten > 1 {
				into = fmt.Sprint(s.IndexFilesWritten)
			}
			g.say("  %s %s into %s", would("replaced", "would replace"), ui.Count(s.IndexFilesRemoved, "index file"), into)
		}
	}
	if t := s.TempFilesRemoved; t.Packs > 0 {
		g.say("  removed %s left by interrupted writers (%s)", ui.Count(t.Packs, "temporary file"), ui.Bytes(uint64(t.Bytes)))
	}
	m := res.Mark
	marked := m.Unused.Packs + m.Repack.Packs + m.Unindexed.Packs
	switch {
	case marked == 0:
		g.say("mark: nothing to mark")
	case !res.DryRun && m.MarkID == "":
		// the mark was not written (the error follows): nothing is marked
		g.say("mark: failed, nothing was marked (%s would have been)", packCount(marked))
	default:
		g.say("mark: %s", would("marked", "would mark"))
		if m.Unused.Packs > 0 {
			g.say("  %s that no snapshot needs", count(m.Unused))
		}
		if m.Repack.Packs > 0 {
			g.say("  %s to repack, after copying %s of live data %s", count(m.Repack), ui.Bytes(uint64(m.RepackLiveBytes)),
				would(fmt.Sprintf("into %s", packCount(m.NewPacks)), "into new packs"))
		}
		if m.Unindexed.Packs > 0 {
			g.say("  %s that no index file lists (left by an interrupted backup)", count(m.Unindexed))
		}
		if !res.DryRun {
			g.say("  a prune at or after %s deletes them", m.DeleteAfter.Local().Format("2006-01-02 15:04:05"))
		}
	}
	if m.AlreadyMarked.Packs > 0 {
		g.say("already marked: %s", count(m.AlreadyMarked))
	}
	g.say("kept: %s", count(res.Kept))
	if res.DryRun {
		g.say("dry run: nothing was changed")
	}
}

func packCount(n int) string { return ui.Count(n, "pack") }
