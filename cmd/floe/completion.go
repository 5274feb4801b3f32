package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"

	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

// completeSnapshots completes the first maxArgs arguments (all, for
// maxArgs < 0) of a command with snapshot IDs and `latest`. It lists the
// snapshots only when a repository and a credential are configured (flags
// or environment): a completion never prompts, prints nothing on stderr
// and gives nothing when the repository cannot be opened in a few seconds.
func (g *globals) completeSnapshots(maxArgs int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if maxArgs >= 0 && len(args) >= maxArgs || strings.Contains(toComplete, ":") {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		// PersistentPreRunE does not run for completions
		if err := g.resolve(); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		t := g.target()
		t.Prompt = nil           // never ask
		t.Warn = func(string) {} // nothing on the terminal
		t.NoCache = true         // completion writes nothing
		ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
		defer cancel()
		r, err := connect.Open(ctx, t, connect.Options{})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		defer r.Close()
		sel, _, err := snapshot.Select(ctx, r, nil, snapshot.Filter{})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		snapshot.SortByTime(sel)
		out := []cobra.Completion{cobra.CompletionWithDesc("latest", "the newest snapshot")}
		for i := len(sel) - 1; i >= 0; i-- { // newest first
			s := sel[i]
			desc := fmt.Sprintf("%s %s %s", s.Time.Local().Format("2006-01-02 15:04"), s.Hostname, strings.Join(s.Paths, " "))
			out = append(out, cobra.CompletionWithDesc(s.ID.Short(), ui.Line(desc)))
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// newGenCommand holds generators of files for packagers: man pages.
// (Shell completion is cobra's `floe completion bash|zsh|fish`.)
func newGenCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:     "gen",
		Short:   "Generate files for packaging: man pages",
		Example: `  floe gen man /usr/local/share/man/man1`,
	}
	c.AddCommand(&cobra.Command{
		Use:   "man DIR",
		Short: "Write a man page for every command into DIR",
		Long: `Write a man page (section 1) for every command into DIR, made from the
same text as --help. The pages are dated today, or SOURCE_DATE_EPOCH when
it is set (reproducible packages).`,
		Example: `  floe gen man /usr/local/share/man/man1
  man floe-backup`,
		Args: cobra.ExactArgs(1),
		// needs no repository: skip the root's resolving of one
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("create the man page directory: %w", err)
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true // the same pages for the same floe
			header := &doc.GenManHeader{Title: "FLOE", Section: "1", Source: "floe " + version, Manual: "floe manual"}
			if err := doc.GenManTree(root, header, dir); err != nil {
				return fmt.Errorf("write man pages to %s: %w", dir, err)
			}
			g.say("man pages written to %s", dir)
			return nil
		},
	})
	return c
}
