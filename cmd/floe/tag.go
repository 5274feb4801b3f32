package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

func newTagCommand(g *globals) *cobra.Command {
	var (
		filter           snapshotFilterFlags
		add, remove, set []string
	)
	c := &cobra.Command{
		Use:   "tag [SNAPSHOT...] --add|--remove|--set TAGS",
		Short: "Change the tags of snapshots",
		Long: `Change the tags of the given snapshots (IDs, unique prefixes or "latest"),
or, without any, of every snapshot that passes --host/--tag/--path (with
no filter either: every snapshot).

--add and --remove add and remove tags, --set replaces all of them
(--set "" removes every tag); "a,b" is the two tags a and b. Snapshot
records are never modified: a snapshot whose tags change is saved as a new
record (a new ID, the same files, "original" naming the record it
replaces, so that copy still knows it) and the old record is removed.
This needs a full key.`,
		Example: `  floe tag latest --add keep
  floe tag 4f2a9c1e --remove daily --add monthly
  floe tag --host web1 --tag daily --set daily,web   # every daily snapshot of web1
  floe tag 4f2a9c1e --set ""                         # remove all tags`,
		RunE: func(cmd *cobra.Command, args []string) error {
			setGiven := cmd.Flags().Changed("set")
			if !setGiven && len(add) == 0 && len(remove) == 0 {
				return usageError{errors.New("say what to change: --add, --remove or --set")}
			}
			if setGiven && len(add)+len(remove) > 0 {
				return usageError{errors.New("--set replaces every tag: give it alone, or use --add/--remove")}
			}
			change := snapshot.TagChange{Set: snapshot.ParseTags(set), SetGiven: setGiven,
				Add: snapshot.ParseTags(add), Remove: snapshot.ParseTags(remove)}
			ctx := cmd.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close()
			sel, err := selectSnapshots(ctx, g, r, args, filter.filter())
			if err != nil {
				return err
			}
			type changed struct {
				Old  string   `json:"old"`
				New  string   `json:"new"`
				Tags []string `json:"tags"`
			}
			out := []changed{}
			var failed error
			for _, s := range sel {
				id, did, err := snapshot.Retag(ctx, r, s, change)
				if err != nil {
					g.warn("floe: %v", err)
					failed = errors.New("some snapshots could not be retagged (see above)")
					continue
				}
				if !did {
					continue
				}
				tags, _ := change.Apply(s.Tags)
				out = append(out, changed{s.ID.String(), id.String(), tags})
				g.say("%s -> %s  tags %s", s.ID.Short(), id.Short(), ui.Paths(tags, ","))
			}
			if g.json {
				if err := writeDocument(map[string]any{"changed": out, "selected": len(sel)}); err != nil {
					return err
				}
			} else {
				g.say("%d of %s changed", len(out), ui.Count(len(sel), "snapshot"))
			}
			if failed != nil {
				return failed
			}
			return nil
		},
	}
	c.Flags().StringArrayVar(&add, "add", nil, "add `TAGS` (a,b: both), e.g. --add keep; repeatable")
	c.Flags().StringArrayVar(&remove, "remove", nil, "remove `TAGS`, e.g. --remove daily; repeatable")
	c.Flags().StringArrayVar(&set, "set", nil, "replace every tag with `TAGS`, e.g. --set weekly,db (\"\": none); repeatable")
	filter.add(c)
	return c
}
