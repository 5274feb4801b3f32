package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/forget"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/prune"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

// forgetGroupJSON is one group of the --json document.
type forgetGroupJSON struct {
	Host   string           `json:"host,omitempty"`
	Paths  []string         `json:"paths,omitempty"`
	Tags   []string         `json:"tags,omitempty"`
	Keep   []forgetKeepJSON `json:"keep"`
	Remove []string         `json:"remove"`
}

type forgetKeepJSON struct {
	ID      string   `json:"id"`
	Reasons []string `json:"reasons"`
}

type forgetFlags struct {
	policy                                          forget.Policy
	within, withinHourly, withinDaily, withinWeekly string
	withinMonthly, withinYearly                     string
	groupBy                                         string
	dryRun                                          bool
	filter                                          snapshotFilterFlags
	prune                                           bool
	pruneFlags                                      pruneFlags
	keepTags                                        []string
}

// parsePolicy fills f.policy's durations from the flags.
func (f *forgetFlags) parsePolicy() error {
	for _, d := range []struct {
		flag string
		s    string
		dst  *forget.Duration
	}{
		{"keep-within", f.within, &f.policy.Within},
		{"keep-within-hourly", f.withinHourly, &f.policy.WithinHourly},
		{"keep-within-daily", f.withinDaily, &f.policy.WithinDaily},
		{"keep-within-weekly", f.withinWeekly, &f.policy.WithinWeekly},
		{"keep-within-monthly", f.withinMonthly, &f.policy.WithinMonthly},
		{"keep-within-yearly", f.withinYearly, &f.policy.WithinYearly},
	} {
		if d.s == "" {
			continue
		}
		v, err := forget.ParseDuration(d.s)
		if err != nil {
			return usageError{fmt.Errorf("--%s: %w", d.flag, err)}
		}
		*d.dst = v
	}
	f.policy.Tags = snapshot.ParseTagLists(f.keepTags)
	if err := f.policy.Validate(); err != nil {
		return usageError{err}
	}
	return nil
}

func newForgetCommand(g *globals) *cobra.Command {
	f := &forgetFlags{}
	c := &cobra.Command{
		Use:   "forget [flags] [SNAPSHOT-ID...]",
		Short: "Remove snapshots by ID or by a retention policy",
		Long: `Remove snapshots from the repository: the ones given by ID, or those a
retention policy does not keep.

The policy is applied to each group of snapshots separately (--group-by,
default: same host and same paths), and only to snapshots that match
--host, --tag and --path; others are never touched. Snapshots are taken
newest first:

  --keep-last N      keep the N newest snapshots
  --keep-hourly N    keep the newest snapshot of each of the last N hours
                     that have snapshots; likewise --keep-daily, --keep-weekly
                     (ISO weeks, Monday to Sunday), --keep-monthly and
                     --keep-yearly. -1 means no limit.
  --keep-within D    keep every snapshot newer than the group's newest minus
                     D (e.g. 36h, 7d, 2w, 1m, 1y, 1y6m; m is months)
  --keep-within-daily D (and -hourly, -weekly, -monthly, -yearly)
                     keep the newest snapshot of each day within D
  --keep-tag T       keep every snapshot tagged T ("a,b": tagged a and b;
                     repeated: any of the lists)

A snapshot is kept if any rule keeps it; the output says which. Hours, days
and so on are counted in the local time zone. A policy with no rule is
refused, so that a typo cannot delete everything.

forget only removes snapshot records: the data they referenced stays in the
repository until prune reclaims the space; --prune runs prune afterwards
(with --grace and --max-unused; see floe prune --help).`,
		Example: `  floe forget --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --dry-run
  floe forget --host web1 --keep-last 10 --keep-within 30d
  floe forget 4f2a9c1e 77b0d3aa
  floe forget --keep-daily 7 --keep-weekly 5 --prune`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.parsePolicy(); err != nil {
				return err
			}
			if f.prune {
				if _, err := f.pruneFlags.options(); err != nil {
					return err
				}
			}
			if len(args) > 0 && !f.policy.Empty() {
				return usageError{errors.New("give snapshot IDs or a policy (--keep-*), not both")}
			}
			if len(args) == 0 && f.policy.Empty() {
				return usageError{errors.New("no policy given: use --keep-last, --keep-daily, --keep-within, ... or give snapshot IDs (forget refuses to remove every snapshot)")}
			}
			if len(args) == 0 {
				if _, err := forget.Group(nil, f.groupBy); err != nil {
					return usageError{err}
				}
			}
			return runForget(cmd, g, f, args)
		},
	}
	fl := c.Flags()
	fl.IntVar(&f.policy.Last, "keep-last", 0, "keep the `N` newest snapshots")
	fl.IntVar(&f.policy.Hourly, "keep-hourly", 0, "keep the newest snapshot of each of the last `N` hours with snapshots")
	fl.IntVar(&f.policy.Daily, "keep-daily", 0, "keep the newest snapshot of each of the last `N` days with snapshots")
	fl.IntVar(&f.policy.Weekly, "keep-weekly", 0, "keep the newest snapshot of each of the last `N` ISO weeks with snapshots")
	fl.IntVar(&f.policy.Monthly, "keep-monthly", 0, "keep the newest snapshot of each of the last `N` months with snapshots")
	fl.IntVar(&f.policy.Yearly, "keep-yearly", 0, "keep the newest snapshot of each of the last `N` years with snapshots")
	fl.StringVar(&f.within, "keep-within", "", "keep snapshots newer than the newest minus `DURATION` (36h, 7d, 2w, 1m, 1y)")
	fl.StringVar(&f.withinHourly, "keep-within-hourly", "", "keep the newest snapshot of each hour within `DURATION`")
	fl.StringVar(&f.withinDaily, "keep-within-daily", "", "keep the newest snapshot of each day within `DURATION`")
	fl.StringVar(&f.withinWeekly, "keep-within-weekly", "", "keep the newest snapshot of each week within `DURATION`")
	fl.StringVar(&f.withinMonthly, "keep-within-monthly", "", "keep the newest snapshot of each month within `DURATION`")
	fl.StringVar(&f.withinYearly, "keep-within-yearly", "", "keep the newest snapshot of each year within `DURATION`")
	fl.StringArrayVar(&f.keepTags, "keep-tag", nil, "keep snapshots that have every tag of `TAGS`: --keep-tag a,b keeps those tagged a and b; repeated: any of the lists")
	fl.StringVar(&f.groupBy, "group-by", forget.DefaultGroupBy, "apply the policy per group of `FIELDS`: host, paths, tags, comma-separated, or \"\" for one group")
	fl.BoolVarP(&f.dryRun, "dry-run", "n", false, "show what would be removed; remove nothing")
	fl.BoolVar(&f.prune, "prune", false, "run prune after removing snapshots")
	f.pruneFlags.add(fl, "with --prune: ")
	f.filter.add(c)
	return c
}

func runForget(cmd *cobra.Command, g *globals, f *forgetFlags, args []string) error {
	ctx := cmd.Context()
	r, err := g.openRepo(ctx, false)
	if err != nil {
		return err
	}
	defer r.Close()

	var (
		sel         []*snapshot.Record
		errs        []error
		undecodable []hash.ID
	)
	if len(args) > 0 {
		sel, undecodable, errs, err = forget.SelectIDs(ctx, r, args, f.filter.filter())
		for _, e := range errs {
			g.warn("warning: %v", e)
		}
	} else {
		sel, errs, err = snapshot.Select(ctx, r, args, f.filter.filter())
		for _, e := range errs {
			g.warn("warning: %v (not considered)", e)
		}
	}
	if err != nil {
		return err
	}
	plan := forget.PlanSnapshots(sel)
	if len(sel) == 0 && len(undecodable) > 0 {
		plan.Groups = nil // only undecodable records: no empty group
	}
	plan.Undecodable = undecodable
	if len(args) == 0 {
		// on a floe server: a snapshot counts from when it arrived if
		// it claims a later time
		origins, _, err := snapshot.Origins(ctx, r)
		if err != nil {
			return err
		}
		if plan, err = forget.PlanPolicyArrived(sel, f.policy, f.groupBy, time.Now(), origins); err != nil {
			return usageError{err}
		}
	}

	if !g.json && !g.quiet {
		if len(plan.Groups) > 0 || len(plan.Undecodable) == 0 {
			printForgetPlan(plan, f.groupBy, len(args) > 0)
		}
		if len(plan.Undecodable) > 0 {
			fmt.Printf("remove %s that do not decode:\n", ui.Count(len(plan.Undecodable), "record"))
			for _, id := range plan.Undecodable {
				fmt.Printf("  %s\n", id.Short())
			}
		}
	}

	toRemove := plan.ToRemove()
	for _, id := range plan.Undecodable {
		toRemove = append(toRemove, &snapshot.Record{ID: id}) // removal needs only the ID
	}
	var failed []string
	removed := 0
	if !f.dryRun {
		var errs []error
		removed, errs, err = forget.Remove(ctx, r, toRemove)
		for _, e := range errs {
			if g.json {
				stdoutJSON.itemError("", "remove", e)
			} else {
				g.warn("error: %v", e)
			}
			failed = append(failed, e.Error())
		}
		if err != nil {
			return err
		}
	}

	var pruned *prune.Result
	var pruneErr error
	if f.prune && !f.dryRun && len(failed) == 0 {
		opts, _ := f.pruneFlags.options() // validated in RunE
		pruned, pruneErr = runPrune(ctx, g, r, opts)
	}
	if g.json {
		doc := map[string]any{"dry_run": f.dryRun, "groups": forgetJSON(plan), "removed": removed}
		if len(plan.Undecodable) > 0 {
			ids := make([]string, len(plan.Undecodable))
			for i, id := range plan.Undecodable {
				ids[i] = id.String()
			}
			doc["remove_undecodable"] = ids
		}
		if pruned != nil {
			doc["prune"] = pruned
		}
		if pruneErr != nil {
			doc["prune_error"] = pruneErr.Error()
			g.exitCode = ExitError
		}
		if len(failed) > 0 {
			doc["errors"] = failed
			g.exitCode = ExitError
		}
		stdoutJSON.summary(doc)
		return nil
	}
	switch {
	case f.dryRun && len(toRemove) > 0:
		g.say("dry run: would remove %s; nothing was changed", snapshotCount(len(toRemove)))
	case f.dryRun:
		g.say("dry run: nothing to remove")
	case len(toRemove) == 0:
		g.say("nothing to remove")
	case f.prune:
		g.say("removed %s", snapshotCount(removed))
	default:
		g.say("removed %s; their data stays in the repository until prune reclaims the space", snapshotCount(removed))
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %s could not be removed", len(failed), snapshotCount(len(toRemove)))
	}
	if f.prune && f.dryRun {
		g.say("dry run: prune was not run")
	}
	if pruneErr != nil {
		return fmt.Errorf("prune: %w", pruneErr)
	}
	if pruned != nil {
		g.say("")
		printPruneResult(g, pruned)
	}
	return nil
}

func groupTitle(k forget.GroupKey, groupBy string) string {
	var parts []string
	for _, f := range strings.Split(groupBy, ",") {
		switch strings.TrimSpace(f) {
		case "host":
			parts = append(parts, "host "+ui.Path(k.Host))
		case "paths":
			parts = append(parts, "paths "+ui.Paths(k.Paths(), " "))
		case "tags":
			t := ui.Paths(k.Tags(), ",")
			if t == "" {
				t = "(none)"
			}
			parts = append(parts, "tags "+t)
		}
	}
	if len(parts) == 0 {
		return "all snapshots"
	}
	return strings.Join(parts, ", ")
}

func printForgetPlan(plan *forget.Plan, groupBy string, explicit bool) {
	groups, reasons := plan.Groups, plan.Reasons
	row := func(s *snapshot.Record, extra string) {
		tags := ui.Paths(s.Tags, ",")
		fmt.Printf("  %-8s  %-19s  %-12s  %-12s  %s\n", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"),
			ui.Path(s.Hostname), tags, extra)
	}
	if len(groups) == 0 {
		fmt.Println("no matching snapshots")
	}
	for i, gr := range groups {
		if i > 0 {
			fmt.Println()
		}
		if !explicit {
			fmt.Printf("%s:\n", groupTitle(gr.Key, groupBy))
			fmt.Printf("keep %s:\n", snapshotCount(len(gr.Keep)))
			if len(gr.Keep) > 0 {
				fmt.Printf("  %-8s  %-19s  %-12s  %-12s  %s\n", "ID", "Time", "Host", "Tags", "Reasons")
			}
			for _, s := range gr.Keep {
				row(s, ui.Paths(reasons[s.ID], ", "))
			}
		}
		fmt.Printf("remove %s:\n", snapshotCount(len(gr.Remove)))
		if len(gr.Remove) > 0 {
			fmt.Printf("  %-8s  %-19s  %-12s  %-12s  %s\n", "ID", "Time", "Host", "Tags", "Paths")
		}
		for _, s := range gr.Remove {
			row(s, ui.Paths(s.Paths, " "))
		}
	}
}

func forgetJSON(plan *forget.Plan) []forgetGroupJSON {
	out := make([]forgetGroupJSON, 0, len(plan.Groups))
	for _, gr := range plan.Groups {
		j := forgetGroupJSON{Host: gr.Key.Host, Paths: gr.Key.Paths(), Tags: gr.Key.Tags(),
			Keep: []forgetKeepJSON{}, Remove: []string{}}
		for _, s := range gr.Keep {
			j.Keep = append(j.Keep, forgetKeepJSON{ID: s.ID.String(), Reasons: plan.Reasons[s.ID]})
		}
		for _, s := range gr.Remove {
			j.Remove = append(j.Remove, s.ID.String())
		}
		out = append(out, j)
	}
	return out
}

func snapshotCount(n int) string { return ui.Count(n, "snapshot") }
