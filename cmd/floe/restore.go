package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/restore"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

// snapshotFilterFlags select snapshots for `latest` and listings.
type snapshotFilterFlags struct {
	hosts, tags, paths []string
}

func (f *snapshotFilterFlags) add(c *cobra.Command) {
	c.Flags().StringArrayVar(&f.hosts, "host", nil, "only snapshots of this host; repeatable")
	c.Flags().StringArrayVar(&f.tags, "tag", nil, "only snapshots that have every tag of `TAGS`: --tag a,b means a and b; repeated, any of the lists (--tag a --tag b: a or b)")
	c.Flags().StringArrayVar(&f.paths, "path", nil, "only snapshots of this path; repeatable")
}

func (f *snapshotFilterFlags) filter() snapshot.Filter {
	return snapshot.Filter{Hosts: f.hosts, Tags: snapshot.ParseTagLists(f.tags), Paths: f.paths}
}

// splitSnapshotArg splits "SNAP:PATH".
func splitSnapshotArg(arg string) (string, string) {
	if i := strings.IndexByte(arg, ':'); i >= 0 {
		return arg[:i], arg[i+1:]
	}
	return arg, ""
}

func newRestoreCommand(g *globals) *cobra.Command {
	var (
		target             string
		includes, excludes []string
		verify, numeric    bool
		untrusted          bool
		overwrite          string
		del                bool
		dryRun, verbose    bool
		filter             snapshotFilterFlags
		toDevice           string
		writeZeros         bool
		bufferedIO         bool
	)
	c := &cobra.Command{
		Use:   "restore SNAPSHOT[:PATH] --target DIR | SNAPSHOT:IMAGE --to-device DEVICE",
		Short: "Restore a snapshot, or a part of it",
		Long: `Restore files from a snapshot into --target, with their metadata: mode,
owner, times, symlinks, hard links, device nodes, FIFOs, xattrs; sparse
files are restored sparse.

SNAPSHOT is an ID, a unique prefix of one, or "latest" (the newest, after
--host/--tag/--path). SNAPSHOT:PATH restores only PATH: a directory's
contents go straight into the target.

--include and --exclude take the patterns of backup --exclude, matched
against the paths in the snapshot: "*.conf" and "ssh/" at any depth,
"/home/*/.ssh" anchored, "**" for any number of directories; a pattern
that matches a directory selects everything below it.

Re-running a restore resumes it: files already in the target whose content
matches the snapshot are left alone (--overwrite if-changed, the default).
--overwrite always rewrites every file, --overwrite never keeps whatever
exists. --delete removes what the snapshot does not have, so the restored
directories match it exactly.

Nothing is ever written outside the target: names with .. or /, and
symlinks, in the snapshot or already in the target, cannot escape it. A
target restore creates is mode 0700 until you move what it holds.

Run as root, restore makes what the snapshot holds as it says, as tar -p,
restic and borg do: device nodes, setuid and setgid files owned by root,
file capabilities and SELinux labels (security.* xattrs), trusted.*
xattrs. A host with a write-only key can write a snapshot of anything, so
restoring its snapshot into a place others can reach can give them a
device or root: --untrusted makes no device nodes and restores no setuid
bits (nor setgid on files) and no security.* or trusted.* xattrs. FIFOs
are made, never opened; sockets are not made.

Files of 8 MiB and more are written around the page cache (O_DIRECT), where
the file system allows: on many machines taking fresh page-cache pages
costs more CPU than the disk write, and a restore onto a busy server then
does not evict what it caches. --buffered-io writes everything through
the page cache.

--dry-run (-n) writes nothing: it counts what the restore would create,
overwrite, leave alone and (with --delete) delete, in entries and bytes,
comparing files already in the target with the snapshot; -v lists each
path with its action.

A disk image (backup --image) restores like any file: SNAP:/dev/vdb
--target DIR writes DIR/vdb, sparse. --to-device DEVICE writes it onto a
block device instead: a device that is mounted (it or a partition), held
(LVM, md, dm-crypt on it) or smaller than the image is refused. Zero
regions are not written where the device can zero ranges itself (write
zeroes with unmap: thin volumes, SSDs, loop devices); elsewhere, or with
--write-zeros, zeros are written (and restore says which). --verify reads
the device back and compares it with the snapshot.`,
		Example: `  floe restore latest --target /tmp/restore
  floe restore 4f2a9c1e:/etc --target /tmp/etc
  floe restore latest --host web1 --include '/home/*/.ssh' --target /tmp/ssh --verify
  floe restore latest --include 'nginx/**/*.conf' --exclude '*.bak' --target /tmp/conf
  floe restore latest:/srv/www --target /srv/www --delete      # make /srv/www match the snapshot
  floe restore latest:/srv/www --target /srv/www --delete -n -v   # first: what would it change?
  floe restore latest:/dev/vdb --to-device /dev/vdc --verify   # a disk image onto a disk`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if toDevice != "" {
				if target != "" || len(includes) > 0 || len(excludes) > 0 || del || numeric || dryRun || untrusted {
					return usageError{errors.New("--to-device writes one image onto a device: no --target, --include, --exclude, --delete, --numeric-owner, --dry-run, --untrusted")}
				}
				return restoreToDevice(ctx, g, args[0], toDevice, writeZeros, verify, bufferedIO, filter)
			}
			if writeZeros {
				return usageError{errors.New("--write-zeros is for --to-device")}
			}
			if target == "" {
				return usageError{errors.New("--target (or --to-device) is required")}
			}
			switch overwrite {
			case restore.OverwriteIfChanged, restore.OverwriteAlways, restore.OverwriteNever:
			default:
				return usageError{fmt.Errorf("--overwrite %q: want always, if-changed or never", overwrite)}
			}
			for _, pats := range [][]string{includes, excludes} {
				if _, err := pathmatch.New(pats); err != nil {
					return usageError{err}
				}
			}
			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			spec, sub := splitSnapshotArg(args[0])
			sn, err := snapshot.Find(ctx, r, spec, filter.filter())
			if err != nil {
				return err
			}
			opts := restore.Options{Target: target, Includes: includes,
				Excludes: excludes, Verify: verify, NumericOwner: numeric, Overwrite: overwrite, Delete: del, Untrusted: untrusted,
				BufferedIO: bufferedIO}
			if dryRun {
				return restoreDryRun(ctx, g, r, sn, sub, opts, verbose)
			}
			p := &ui.Meter{}
			start := time.Now()
			st := g.status()
			fetched := g.fetchedCounter(p)
			line := &ui.RestoreLine{Start: start}
			st.Run(200*time.Millisecond, func() string {
				_, _, files, filesTotal, bytes, bytesTotal := p.Current()
				return line.Line(files, filesTotal, bytes, bytesTotal, fetched())
			})
			stopJSON := g.jsonStatus(start, func() map[string]any {
				_, _, files, filesTotal, bytes, bytesTotal := p.Current()
				m := map[string]any{"files_done": files, "files_total": filesTotal,
					"bytes_done": bytes, "bytes_total": bytesTotal}
				if n := fetched(); n >= 0 {
					m["bytes_fetched"] = n
				}
				return m
			})
			opts.Progress = p
			res, err := restore.Run(ctx, r, sn.Tree, sub, opts)
			st.Stop()
			stopJSON()
			if err != nil {
				return err
			}
			warnForged(g, r.ForgedCopies())
			if g.json {
				errs := make([]string, 0, len(res.Errors))
				for _, e := range res.Errors {
					stdoutJSON.itemError("", "restore", e)
					errs = append(errs, e.Error())
				}
				stdoutJSON.summary(map[string]any{"snapshot": sn.ID.String(), "target": target, "files": res.Files,
					"dirs": res.Dirs, "others": res.Others, "bytes": res.Bytes, "verified": res.Verified, "errors": errs,
					"skipped": res.Skipped, "deleted": res.Deleted, "withheld": res.Withheld,
					"duration_seconds": time.Since(start).Seconds()})
			} else {
				for _, e := range res.Errors {
					g.warn("error: %v", e)
				}
				g.say("restored snapshot %s to %s: %s, %s, %d other, %s in %s",
					sn.ID.Short(), target, ui.Count(res.Files, "file"), ui.Count(res.Dirs, "directory", "directories"), res.Others, ui.Bytes(res.Bytes), ui.Duration(time.Since(start)))
				if res.Skipped > 0 || res.Deleted > 0 {
					g.say("left %s as they were, deleted %d", ui.Count(res.Skipped, "existing entry", "existing entries"), res.Deleted)
				}
				if verify {
					g.say("verified %s against the snapshot", ui.Count(res.Verified, "file"))
				}
				if res.Withheld > 0 {
					g.say("withheld device nodes, setuid/setgid bits or security/trusted attributes of %s (--untrusted)", ui.Count(res.Withheld, "entry", "entries"))
				}
			}
			if len(res.Errors) > 0 {
				// the errors were printed as they came; say what to do about them
				return &exitError{ExitPartial, hintedError{fmt.Errorf("%s during restore", ui.Count(len(res.Errors), "error")), restoreHint(res.Errors)}}
			}
			return nil
		},
	}
	c.Flags().StringVarP(&target, "target", "t", "", "directory to restore into (created if missing)")
	c.Flags().StringArrayVarP(&includes, "include", "i", nil, "restore only paths matching `PATTERN`, e.g. --include '/etc/ssh' or '*.conf'; repeatable")
	c.Flags().StringArrayVarP(&excludes, "exclude", "e", nil, "do not restore paths matching `PATTERN`, e.g. --exclude 'cache/'; repeatable")
	c.Flags().BoolVar(&verify, "verify", false, "read back every restored file and compare it with the snapshot")
	c.Flags().BoolVar(&numeric, "numeric-owner", false, "restore numeric uid/gid instead of mapping user and group names")
	c.Flags().BoolVar(&untrusted, "untrusted", false, "the snapshot may be hostile (a host with a write-only key wrote it): make no device nodes, restore no setuid bits (nor setgid on files) and no security.* or trusted.* xattrs (capabilities, SELinux labels)")
	c.Flags().StringVar(&overwrite, "overwrite", "if-changed", "existing files: always, if-changed (leave identical ones alone) or never")
	c.Flags().BoolVar(&bufferedIO, "buffered-io", false, "write every file, or the device of --to-device, through the page cache (default: files of 8 MiB and more and devices around it, with O_DIRECT where the file system or device allows)")
	c.Flags().BoolVar(&del, "delete", false, "delete files in the target that the snapshot does not have")
	c.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "write nothing: count what would be restored, overwritten and deleted")
	c.Flags().BoolVarP(&verbose, "verbose", "v", false, "with --dry-run: list each path and what would happen to it")
	c.Flags().StringVar(&toDevice, "to-device", "", "write the image SNAPSHOT:PATH onto the block device `DEVICE` (refused if mounted, in use or too small)")
	c.Flags().BoolVar(&writeZeros, "write-zeros", false, "with --to-device: write the image's zero regions instead of letting the device zero them")
	filter.add(c)
	return c
}

// restoreDryRun prints what a restore would do (restore --dry-run).
func restoreDryRun(ctx context.Context, g *globals, r *repo.Repository, sn *snapshot.Record, sub string, opts restore.Options, verbose bool) error {
	start := time.Now()
	var list func(action, rel string, size uint64)
	if verbose {
		list = func(action, rel string, size uint64) {
			if g.json {
				stdoutJSON.verbose(map[string]any{"action": action, "item": rel, "size": size})
				return
			}
			fmt.Println(ui.Sanitize(fmt.Sprintf("%-9s  %10s  %s", action, ui.Bytes(size), ui.Path(rel))))
		}
	}
	res, err := restore.DryRun(ctx, r, sn.Tree, sub, opts, list)
	if err != nil {
		return err
	}
	if g.json {
		errs := make([]string, 0, len(res.Errors))
		for _, e := range res.Errors {
			stdoutJSON.itemError("", "restore --dry-run", e)
			errs = append(errs, e.Error())
		}
		stdoutJSON.summary(map[string]any{"snapshot": sn.ID.String(), "target": opts.Target, "dry_run": true,
			"new": res.New, "new_bytes": res.NewBytes, "overwrite": res.Overwrite, "overwrite_bytes": res.OverwriteBytes,
			"unchanged": res.Unchanged, "unchanged_bytes": res.UnchangedBytes, "delete": res.Delete, "delete_bytes": res.DeleteBytes,
			"dirs": res.Dirs, "errors": errs, "duration_seconds": time.Since(start).Seconds()})
	} else {
		for _, e := range res.Errors {
			g.warn("error: %v", e)
		}
		g.say("dry run of snapshot %s to %s (nothing written): would restore new %s (%s), overwrite %s (%s), leave unchanged %s (%s), delete %s (%s)",
			sn.ID.Short(), opts.Target, ui.Count(res.New, "entry", "entries"), ui.Bytes(res.NewBytes),
			ui.Count(res.Overwrite, "entry", "entries"), ui.Bytes(res.OverwriteBytes),
			ui.Count(res.Unchanged, "entry", "entries"), ui.Bytes(res.UnchangedBytes),
			ui.Count(res.Delete, "entry", "entries"), ui.Bytes(res.DeleteBytes))
	}
	if len(res.Errors) > 0 {
		return &exitError{ExitPartial, fmt.Errorf("%s in the dry run", ui.Count(len(res.Errors), "error"))}
	}
	return nil
}

func newSnapshotsCommand(g *globals) *cobra.Command {
	var filter snapshotFilterFlags
	latest := 0
	c := &cobra.Command{
		Use:   "snapshots",
		Short: "List snapshots, newest last",
		Long: `List snapshots, newest last, with their tags, size and consistency.

--tag a,b lists snapshots that have both a and b; repeated, --tag a
--tag b lists those that have a or b. --latest N lists only the N newest
snapshots of each host and set of paths.`,
		Example: `  floe snapshots
  floe snapshots --latest 1                 # the newest of each host and paths
  floe snapshots --host web1 --tag daily,db --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if latest < 0 {
				return usageError{errors.New("--latest takes a number of snapshots, 1 or more")}
			}
			ctx := cmd.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close()
			sel, err := selectSnapshots(ctx, g, r, nil, filter.filter())
			if err != nil {
				return err
			}
			if latest > 0 {
				sel = snapshot.Latest(sel, latest)
			}
			// on a floe server: who uploaded each snapshot, as the
			// server saw it (a snapshot's host name is its writer's claim)
			origins, haveOrigins, err := snapshot.Origins(ctx, r)
			if err != nil {
				return err
			}
			if g.json {
				out := make([]map[string]any, 0, len(sel))
				for _, s := range sel {
					m := map[string]any{"id": s.ID.String(), "time": s.Time, "hostname": s.Hostname,
						"username": s.Username, "paths": s.Paths, "tags": s.Tags, "tree": s.Tree.String(),
						"summary": s.Summary, "consistency": consistencyJSON(s.Consistency)}
					if og, ok := origins[s.ID]; ok {
						m["uploader"] = map[string]any{"host": og.Host, "credential": og.Credential, "received": og.Received,
							"dated_in_future": s.Time.Sub(og.Received) > snapshot.FutureSkew}
					}
					out = append(out, m)
				}
				return writeDocument(map[string]any{"snapshots": out})
			}
			if len(sel) == 0 {
				g.say("no snapshots")
				return nil
			}
			tagWidth := len("Tags")
			for _, s := range sel {
				tagWidth = max(tagWidth, len(ui.Paths(s.Tags, ",")))
			}
			tagWidth = min(tagWidth, 30)
			upHead := ""
			if haveOrigins {
				upHead = fmt.Sprintf("  %-12s", "Uploader")
			}
			fmt.Printf("%-8s  %-19s  %-12s%s  %-*s  %-10s  %-12s  %s\n", "ID", "Time", "Host", upHead, tagWidth, "Tags", "Size", "Consistency", "Paths")
			for _, s := range sel {
				cons := "ok"
				switch {
				case !s.Consistency.Checked:
					cons = "-"
				case s.Consistency.ChangedCount > 0:
					cons = fmt.Sprintf("%d changed", s.Consistency.ChangedCount)
				case s.Consistency.Frozen:
					cons = "frozen"
				}
				up := ""
				if haveOrigins {
					uploader := "?" // stored before the server kept records
					if og, ok := origins[s.ID]; ok {
						uploader = og.Host
					}
					up = fmt.Sprintf("  %-12s", ui.Path(uploader))
				}
				fmt.Println(ui.Sanitize(fmt.Sprintf("%-8s  %-19s  %-12s%s  %-*s  %-10s  %-12s  %s", s.ID.Short(), s.Time.Local().Format("2006-01-02 15:04:05"),
					ui.Path(s.Hostname), up, tagWidth, ui.Paths(s.Tags, ","), ui.Bytes(s.Summary.TotalBytes), cons, ui.Paths(s.Paths, " "))))
			}
			for _, s := range sel {
				if line := consistencyLine(s.Consistency); line != "" {
					fmt.Printf("%s: %s\n", s.ID.Short(), ui.Sanitize(line))
				}
				if og, ok := origins[s.ID]; ok {
					if og.Host != s.Hostname {
						fmt.Printf("%s: claims host %s but was uploaded by %s (%s)\n", s.ID.Short(), ui.Path(s.Hostname), ui.Path(og.Host), og.Credential)
					}
					if s.Time.Sub(og.Received) > snapshot.FutureSkew {
						fmt.Printf("%s: dated %s, after it arrived (%s): forget counts it from its arrival\n", s.ID.Short(),
							s.Time.Local().Format("2006-01-02 15:04:05"), og.Received.Local().Format("2006-01-02 15:04:05"))
					}
				}
			}
			fmt.Println(ui.Count(len(sel), "snapshot"))
			return nil
		},
	}
	filter.add(c)
	c.Flags().IntVar(&latest, "latest", 0, "only the `N` newest snapshots of each host and paths, e.g. --latest 1")
	return c
}
