package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/audit"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

func newAuditCommand(g *globals) *cobra.Command {
	var (
		against, againstSnap, rulesFile string
		printDefaults                   bool
		filter                          snapshotFilterFlags
	)
	c := &cobra.Command{
		Use:   "audit SNAPSHOT [--against PATH | --against-snapshot SNAPSHOT2]",
		Short: "Check the system against a snapshot for changes, like AIDE",
		Long: `Check the integrity of the system, as AIDE and tripwire do, with a snapshot
as the baseline: a snapshot kept in the repository cannot be forged by an
intruder on the host, as a database kept on the host can.

The live file system (--against PATH, default "/"; another PATH audits a
system mounted there, the snapshot's paths taken below it) or another
snapshot (--against-snapshot) is compared with SNAPSHOT. Only the paths
SNAPSHOT backed up are audited, and of those only the paths the rules
select. With "latest" and no --host, an audit of "/" uses this host's
newest snapshot.

The report lists added, removed and changed paths, then for every change
the attributes that changed, old | new: permissions in octal, user and
group names and ids, sizes, times (RFC 3339, nanoseconds, UTC), inode
numbers, link counts, and for contents the first 8 hex digits of the first
chunk that differs. --json prints one document:
  {"snapshot", "against", "paths", "added": [{path, type}], "removed": [...],
   "changed": [{path, type, attrs: [{name, old, new}]}], "errors": [...],
   "summary": {checked, added, removed, changed, errors}}

Contents are checked exactly: a live file is cut into chunks and named as
a backup would, and the names are compared with the snapshot's.

Rules (--rules FILE, "-" for standard input; without it the built-in rules
for a Linux server, which --print-default-rules prints). One rule a line,
# starts a comment:
  /PATH RULE      check PATH and everything below it with RULE; the most
                  specific (longest) PATH wins: "/etc R", "/var/log >"
  !REGEXP         ignore the paths the regular expression matches, anchored
                  at the start of the absolute path: "!/var/spool",
                  "!/home/[a-z0-9]+/mail"; an ignored directory is not
                  descended into. End with $ to match a path exactly.
  NAME = RULE     define a rule set: "Conf = p+u+g+s+H", "Boot = R-i"
A RULE joins attributes and rule sets with + and -. Attributes:
  p permissions   u user    g group    s size    m mtime    c ctime
  i inode         n links   x extended attributes
  S growing size: may grow, not shrink; content changes are not checked
  H content (of a symlink: its target; of a device: its number)
Built-in rule sets:
  R = p+i+n+u+g+s+m+c+H   content and metadata
  L = p+i+n+u+g           metadata only
  > = p+u+g+i+n+S         growing logs
  E =                     only added and removed paths
A change of type (file to symlink, ...) counts under every rule set but E.
Files the backup excluded show as added: ignore them in the rules.

Exit code 0: no changes; 4: changes found; 3: no changes, but some paths
could not be read.`,
		Example: `  floe audit latest
  floe audit 4f2a9c1e --rules /etc/floe/audit.rules
  floe audit latest --host web1 --against /mnt/web1-disk
  floe audit 4f2a9c1e --against-snapshot latest --json
  floe audit --print-default-rules > /etc/floe/audit.rules`,
		Args: usageArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if printDefaults {
				_, err := io.WriteString(os.Stdout, audit.DefaultRulesText)
				return err
			}
			if len(args) != 1 {
				return usageError{errors.New("give the snapshot to audit against (an ID or \"latest\")")}
			}
			if cmd.Flags().Changed("against") && againstSnap != "" {
				return usageError{errors.New("use --against or --against-snapshot, not both")}
			}
			rules, err := loadAuditRules(rulesFile)
			if err != nil {
				return err
			}
			live := againstSnap == ""
			if live {
				if against, err = filepath.Abs(against); err != nil {
					return err
				}
				if against, err = filepath.EvalSymlinks(against); err != nil {
					return fmt.Errorf("--against: %w", err)
				}
				if fi, err := os.Stat(against); err != nil {
					return fmt.Errorf("--against: %w", err)
				} else if !fi.IsDir() {
					return usageError{fmt.Errorf("--against %s is not a directory", against)}
				}
			}

			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			f := filter.filter()
			host, _ := os.Hostname()
			byHost := live && against == "/" && args[0] == "latest" && len(f.Hosts) == 0 && host != ""
			if byHost {
				f.Hosts = []string{host}
			}
			sn, err := snapshot.Find(ctx, r, args[0], f)
			if err != nil {
				if byHost && errors.Is(err, snapshot.ErrNoSnapshot) {
					return fmt.Errorf("%w of this host (%s); use --host to choose one", err, host)
				}
				return err
			}
			opts := audit.Options{Rules: rules, Snapshot: sn.Snapshot, Trees: treeLoader(r)}
			var other *snapshot.Record
			if live {
				if against == "/" && host != "" && sn.Hostname != host {
					g.warn("warning: snapshot %s is of host %s, this is %s", sn.ID.Short(), ui.Path(sn.Hostname), ui.Path(host))
				}
				opts.Root, opts.Repo = against, r
			} else {
				if other, err = snapshot.Find(ctx, r, againstSnap, filter.filter()); err != nil {
					return fmt.Errorf("--against-snapshot: %w", err)
				}
				opts.Other = other.Snapshot
			}
			rep, err := audit.Run(ctx, opts)
			if err != nil {
				return fmt.Errorf("audit against snapshot %s: %w", sn.ID.Short(), err)
			}
			switch {
			case rep.Changes():
				g.exitCode = ExitChanges
			case len(rep.Errors) > 0:
				g.exitCode = ExitPartial
			}
			if g.json {
				rep.Snapshot, rep.Against = sn.ID.String(), against
				if other != nil {
					rep.Against = other.ID.String()
				}
				return writeDocument(rep)
			}
			if g.quiet {
				return nil
			}
			rep.Snapshot, rep.Against = describeSnapshot(sn), against
			if other != nil {
				rep.Against = describeSnapshot(other)
			}
			return rep.WriteText(os.Stdout)
		},
	}
	c.Flags().StringVar(&against, "against", "/", "audit the live file system mounted here")
	c.Flags().StringVar(&againstSnap, "against-snapshot", "", "audit this snapshot instead of the live file system")
	c.Flags().StringVar(&rulesFile, "rules", "", "rules file (\"-\": standard input; default: the built-in rules)")
	c.Flags().BoolVar(&printDefaults, "print-default-rules", false, "print the built-in rules and exit")
	filter.add(c)
	return c
}

func loadAuditRules(file string) (*audit.Rules, error) {
	switch file {
	case "":
		return audit.DefaultRules(), nil
	case "-":
		return audit.ParseRules(os.Stdin, "standard input")
	}
	fh, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	defer fh.Close()
	return audit.ParseRules(fh, file)
}

func describeSnapshot(sn *snapshot.Record) string {
	return fmt.Sprintf("snapshot %s (%s, %s)", sn.ID.Short(), ui.Path(sn.Hostname), sn.Time.Local().Format("2006-01-02 15:04:05"))
}
