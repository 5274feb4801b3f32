// Command floe is backup for fleets of Linux servers. This package only
// parses flags and calls the packages below it (see ../shared/DESIGN.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/ui"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	// floe's heap is almost all pointer-free byte buffers (chunks, packs),
	// which the GC does not scan, so collecting more often costs little
	// CPU and keeps the peak near the live heap: measured on 512 MiB of
	// mixed data, GOGC=25 gave 104 MB peak RSS against 150 MB at the
	// default 100, with the same CPU time. GOGC in the environment wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(25)
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	g := &globals{}
	root := newRootCommand(g)
	root.SetArgs(args)
	defer g.stopProfiles()
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return g.exitCode
	}
	err = g.explainCredentialFile(explainUnknownCommand(root, err))
	err = explainRole(cmd, explainUnreachable(cmd, err))
	code := exitCodeFor(err)
	if ctx.Err() != nil {
		code = ExitInterrupted
		err = errors.New("interrupted")
	}
	flags := args
	if i := slices.Index(args, "--"); i >= 0 {
		flags = args[:i] // after --, --json is a command's argument
	}
	if !g.json && slices.Contains(flags, "--json") && exitCodeFor(err) == ExitUsage {
		// a usage error can come before the flags are parsed (an unknown
		// command or flag): a script that asked for JSON still gets it
		g.json = true
	}
	var df documentFailed
	if g.json && errors.As(err, &df) {
		// the document says it already
	} else if g.json {
		printJSONError(err, code, hintFor(err))
	} else {
		fmt.Fprintf(os.Stderr, "floe: %s\n", ui.Line(err.Error()))
		if hint := hintFor(err); hint != "" {
			fmt.Fprintf(os.Stderr, "hint: %s\n", hint)
		}
	}
	return code
}

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "floe",
		Short: "Fast, encrypted, deduplicating backup for fleets of Linux servers",
		Long: `floe backs up directories into an encrypted, deduplicated repository and
restores them. Every snapshot is complete; each costs only what changed.

Start with:
  floe backup /etc /home        back up into the default repository
  floe snapshots                list snapshots
  floe restore latest --target /tmp/restore

Exit codes:
  0   success
  1   error (also: a token, key or password file that cannot be read)
  2   wrong usage (unknown command or flag, wrong arguments; the hint names the closest)
  3   partial: the command finished, but some files could not be read or written
  4   audit found changes
  10  repository missing or unreachable (a server that does not answer)
  11  wrong password or key file
  12  the key is write-only and the command needs to read backups or manage keys
  13  check found damage
  14  the floe server refused: unknown token, its role does not allow this, or a quota is used up
  130 interrupted`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       readBuildInfo().String(),
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if err := g.startProfiles(); err != nil {
				return err
			}
			return g.resolve()
		},
	}
	g.addFlags(root)
	// restic and most tools answer -V/--version; -v is left for --verbose
	root.Flags().BoolP("version", "V", false, "print the version and exit")
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(flagError)
	// explainUnknownCommand suggests, as a hint: cobra's suggestions come
	// inside the error, on lines of their own
	root.DisableSuggestions = true
	root.SetHelpCommand(newHelpCommand())
	// every command, here and nowhere else (help lists them sorted)
	root.AddCommand(
		newInitCommand(g),
		newBackupCommand(g),
		newRestoreCommand(g),
		newSnapshotsCommand(g),
		newTagCommand(g),
		newKeyCommand(g),
		newLsCommand(g),
		newFindCommand(g),
		newCatCommand(g),
		newDumpCommand(g),
		newDiffCommand(g),
		newStatsCommand(g),
		newMountCommand(g),
		newNBDCommand(g),
		newAuditCommand(g),
		newCheckCommand(g),
		newForgetCommand(g),
		newPruneCommand(g),
		newCopyCommand(g),
		newExportCommand(g),
		newImportCommand(g),
		newRepairCommand(g),
		newRewriteCommand(g),
		newServeCommand(g),
		newAgentCommand(g),
		newFleetCommand(g),
		newVersionCommand(g),
		newGenCommand(g),
	)
	usageArgsAll(root)
	for _, c := range root.Commands() {
		if n, ok := snapshotArgs[c.Name()]; ok {
			c.ValidArgsFunction = g.completeSnapshots(n)
		}
	}
	return root
}

// snapshotArgs are the commands whose arguments are snapshots, for shell
// completion: how many leading arguments are (-1: all).
var snapshotArgs = map[string]int{
	"restore": 1, "ls": 1, "dump": 1, "audit": 1, "diff": 2,
	"forget": -1, "copy": -1, "export": -1, "stats": -1, "tag": -1,
}

// usageArgsAll makes the argument-count errors of c and its subcommands
// usage errors (exit 2), as the flag errors are, so that no command can
// forget it.
func usageArgsAll(c *cobra.Command) {
	if c.HasParent() && c.HasSubCommands() && !c.Runnable() {
		// a group (`floe key`): alone it shows its help, with an unknown
		// subcommand it is wrong usage (cobra would show the help, exit 0)
		c.Args = cobra.NoArgs
		c.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
	}
	if c.Args != nil {
		c.Args = usageArgs(c.Args)
	}
	for _, sub := range c.Commands() {
		usageArgsAll(sub)
	}
}
