package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/fssnap"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

type backupFlags struct {
	excludes      []string
	excludeFiles  []string
	iexcludes     []string
	iexcludeFiles []string
	excludeCaches bool
	ifPresent     []string
	largerThan    string
	filesFrom     []string
	filesVerbatim []string
	filesRaw      []string
	dryRun        bool
	verbose       bool
	oneFS         bool
	stdin         bool
	stdinCommand  bool
	stdinName     string
	tags          []string
	host          string
	time          string
	parent        string
	force         bool
	ignoreInode   bool
	ignoreCtime   bool
	preHook       string
	postHook      string
	fsSnapshot    string
	fsSnapshotSz  string
	images        []string
}

func newBackupCommand(g *globals) *cobra.Command {
	f := &backupFlags{}
	c := &cobra.Command{
		Use:   "backup [flags] PATH... | --stdin | --stdin-from-command -- COMMAND [ARG...]",
		Short: "Back up files and directories",
		Long: `Back up files and directories into a new snapshot.

Files whose size, mtime, ctime and inode match the parent snapshot (the
newest of the same host and paths) are not read again. Each file's metadata
is compared before and after reading; a file that changed is read again,
and one that keeps changing is kept as read and listed in the snapshot's
consistency record.

A path given as a symlink is saved as the symlink; a path that goes
through a symlinked directory (/var/run/x with /var/run -> /run) is saved
with that component as the directory it leads to.

--parent SNAPSHOT compares with any snapshot, also another host's: the
first backup of a cloned guest can name its golden image's snapshot. A
parent of one path, compared with a backup of one other path, matches the
two paths' contents. A copy has new inodes and ctimes, so add
--ignore-inode (ignore inode numbers and ctimes, as restic does) or
--ignore-ctime (ctimes only): a file whose path, size and mtime match the
parent's is then not read. The price: a file changed without changing its
size or mtime is missed (mtime can be set back, e.g. touch -r, tar, rsync
-t). Run a backup with --force now and then (it reads every file).

With --fs-snapshot lvm or btrfs (as root), each path is read from a
read-only snapshot of its file system, taken after the pre-hook: all files
of one file system as of one instant, while the system keeps running. The
backup records the original paths and is marked frozen. An LVM snapshot is
mounted read-only on a temporary directory and needs free space in the
volume group for the blocks that change meanwhile (--fs-snapshot-size); a
btrfs snapshot is made at the root of the path's subvolume. The snapshots
are named floe-snap-* (.floe-snap-* for btrfs) and removed after the
backup, also when it fails or is interrupted. A snapshot holds one file
system: file systems mounted below a path, and btrfs subvolumes nested in
it, are saved as empty directories unless given as paths of their own.

Exclude patterns (--exclude, --iexclude, --exclude-file) follow restic's
rules. A pattern matches whole path components and everything below what
it matches. Without a leading "/" it matches at any depth ("*.tmp",
"node_modules", "ssh/*", "foo/**/bar"); with one it is anchored at the
root ("/var/cache", "/home/*/.cache"). "*" and "?" stay within one
component, "**" matches any number of directories, "{a,b}" either; a
trailing "/" matches directories only ("cache/"). In an exclude file, a
line "!PATTERN" re-includes what an earlier line excluded (not inside an
excluded directory); empty lines and "#" comments are ignored, and
environment variables are expanded ("$HOME/.cache"; "$$" is "$"). floe warns
about a pattern that can never match, such as an anchored one outside the
paths backed up.

--files-from FILE reads patterns to back up, one per line (globs with
"**" are expanded, "#" comments and empty lines ignored);
--files-from-verbatim reads paths one per line as they are (find -print),
--files-from-raw NUL-terminated paths (find -print0). "-" reads the list
from standard input. They add to the paths given as arguments.

--dry-run reads and chunks everything and reports what a backup would add,
writing nothing; hooks and --fs-snapshot are skipped. -v/--verbose lists
each file as it is saved: new, changed, unchanged (or hardlink).

--image DEVICE|FILE backs up a block device (/dev/vdb, an LVM volume) or a
raw disk image file as one regular file of the snapshot, under its path as
given (restore it with floe restore SNAP:/dev/vdb --target DIR or
--to-device, serve it with floe nbd). Runs of zeros (4 KiB blocks, at
least 128 KiB long) are found by their content and cost nothing; a device
is read whole at every backup (its unchanged blocks are not stored
again), an image file only when its size or times changed. A device
written to while it is read (its write counters in /sys/dev/block/*/stat
moved) is read again and then listed in the consistency record; one whose
size shrinks while read is an error. The snapshot records the device's
number and its /dev/disk/by-id name or serial.

--stdin-from-command runs COMMAND (without a shell; put it after "--")
and backs up its standard output as one file (--stdin-filename). If the
command exits non-zero, the backup fails (exit 1) and no snapshot is
saved. With --stdin, floe cannot see the exit status of the program
writing into the pipe: "false | floe backup --stdin" saves an empty
snapshot and exits 0. Prefer --stdin-from-command for database dumps.

The post-hook's environment says how the backup went:
  FLOE_BACKUP_STATUS     ok, partial (saved, but some files could not be
                         read: exit 3) or failed
  FLOE_BACKUP_ERROR      the error, when failed
  FLOE_SNAPSHOT_ID       the new snapshot's ID (ok or partial)
  FLOE_FILES_NEW, FLOE_FILES_CHANGED, FLOE_FILES_UNCHANGED, FLOE_DIRS,
  FLOE_ERRORS, FLOE_TOTAL_BYTES, FLOE_DATA_ADDED, FLOE_DATA_ADDED_STORED,
  FLOE_DURATION_SECONDS  the snapshot's summary (ok or partial)

Without -r/--repo or FLOE_REPOSITORY, the first backup creates a default
repository in $XDG_DATA_HOME/floe/repository with a random key file in
$XDG_CONFIG_HOME/floe/repository.key, and says so. It does not when a
password (--password-file, FLOE_PASSWORD_FILE, FLOE_PASSWORD_COMMAND) or
another key file is given: those belong to a repository that was not
named, and floe stops with "no repository given" (exit 2).`,
		Example: `  floe backup /etc /home
  floe backup --exclude '*.tmp' --exclude '/home/*/.cache' --exclude-caches /home
  floe backup --exclude 'node_modules/' --exclude '**/.git/objects' --iexclude '*.ISO' /srv
  floe backup --exclude-if-present .nobackup --exclude-larger-than 2G /home
  find /srv -name '*.conf' -print0 | floe backup --files-from-raw -
  floe backup --dry-run -v --exclude-file /etc/floe/excludes /home
  floe backup --stdin-from-command --stdin-filename mydb.sql -- pg_dump mydb
  floe backup --post-hook 'echo "$FLOE_BACKUP_STATUS $FLOE_SNAPSHOT_ID" >> /var/log/floe' /etc
  floe backup --pre-hook 'fsfreeze -f /srv' --post-hook 'fsfreeze -u /srv' /srv
  floe backup --fs-snapshot lvm /srv            # read /srv from an LVM snapshot
  floe backup --fs-snapshot btrfs /home         # read /home from a btrfs snapshot
  floe backup --image /dev/vdb --image /srv/vm/web1.raw /etc   # disk images, and files`,
		RunE: func(cmd *cobra.Command, args []string) error {
			lists := len(f.filesFrom) + len(f.filesVerbatim) + len(f.filesRaw)
			if f.stdinCommand {
				if f.stdin {
					return usageError{errors.New("--stdin and --stdin-from-command: give one")}
				}
				if len(args) == 0 {
					return usageError{errors.New("--stdin-from-command: give the command after --, e.g. floe backup --stdin-from-command -- pg_dump app")}
				}
				if lists > 0 || f.fsSnapshot != "" || len(f.images) > 0 {
					return usageError{errors.New("--stdin-from-command backs up the command's output, no paths (--files-from, --fs-snapshot)")}
				}
				return runBackup(cmd.Context(), g, f, args)
			}
			if f.stdin && (len(args) > 0 || lists > 0 || len(f.images) > 0) {
				return usageError{errors.New("--stdin takes no paths (nor --files-from, --image)")}
			}
			if !f.stdin && len(args) == 0 && lists == 0 && len(f.images) == 0 {
				return usageError{errors.New("give at least one path to back up (or --files-from, --image)")}
			}
			if f.largerThan != "" {
				if _, err := backup.ParseSize(f.largerThan); err != nil {
					return usageError{fmt.Errorf("--exclude-larger-than: %w", err)}
				}
			}
			if _, err := backup.Excludes(f.excludes, f.iexcludes); err != nil {
				return usageError{err}
			}
			if f.fsSnapshot != "" && f.stdin {
				return usageError{errors.New("--fs-snapshot reads paths; it does not go with --stdin")}
			}
			if f.fsSnapshot != "lvm" && f.fsSnapshotSz != "" {
				return usageError{errors.New("--fs-snapshot-size is for --fs-snapshot lvm (btrfs snapshots need no size)")}
			}
			if err := fssnap.ValidateSize(f.fsSnapshotSz); err != nil {
				return usageError{fmt.Errorf("--fs-snapshot-size: %w", err)}
			}
			if f.fsSnapshot != "" {
				if _, err := fssnap.ParseKind(f.fsSnapshot); err != nil {
					return usageError{fmt.Errorf("--fs-snapshot: %w", err)}
				}
			}
			return runBackup(cmd.Context(), g, f, args)
		},
	}
	fl := c.Flags()
	fl.StringArrayVarP(&f.excludes, "exclude", "e", nil, "exclude paths matching `PATTERN`, e.g. '*.tmp', 'cache/', '/var/cache', 'foo/**/bar' (rules above); repeatable")
	fl.StringArrayVar(&f.iexcludes, "iexclude", nil, "like --exclude, ignoring case: --iexclude '*.iso' also skips X.ISO (`PATTERN`); repeatable")
	fl.StringArrayVar(&f.excludeFiles, "exclude-file", nil, "read exclude patterns from `FILE`, one per line (\"!PATTERN\" re-includes, # comments); repeatable")
	fl.StringArrayVar(&f.iexcludeFiles, "iexclude-file", nil, "like --exclude-file, ignoring case (`FILE`); repeatable")
	fl.BoolVar(&f.excludeCaches, "exclude-caches", false, "skip the contents of directories holding a CACHEDIR.TAG")
	fl.StringArrayVar(&f.ifPresent, "exclude-if-present", nil, "skip the contents of directories that hold the file FILE (starting with HEADER, if given): `FILE[:HEADER]`, e.g. --exclude-if-present .nobackup; repeatable")
	fl.StringVar(&f.largerThan, "exclude-larger-than", "", "skip files larger than `SIZE`: bytes, or with k, m, g, t (KiB..TiB), e.g. --exclude-larger-than 500M")
	fl.StringArrayVar(&f.filesFrom, "files-from", nil, "back up the paths matching the patterns in `FILE` (one per line, \"-\": standard input), e.g. --files-from /etc/floe/paths; repeatable")
	fl.StringArrayVar(&f.filesVerbatim, "files-from-verbatim", nil, "back up the paths in `FILE`, one per line, taken as they are (find -print); repeatable")
	fl.StringArrayVar(&f.filesRaw, "files-from-raw", nil, "back up the NUL-terminated paths in `FILE` (find -print0), e.g. find /srv -newer x -print0 | floe backup --files-from-raw -; repeatable")
	fl.BoolVarP(&f.dryRun, "dry-run", "n", false, "write nothing; report what the backup would add (e.g. floe backup -n -v /home to try excludes)")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "list each file as it is saved (new, changed, unchanged), e.g. floe backup -v /etc")
	fl.BoolVarP(&f.oneFS, "one-file-system", "x", false, "do not cross file system boundaries")
	fl.BoolVar(&f.stdin, "stdin", false, "back up standard input; floe cannot see whether the program writing it failed: prefer --stdin-from-command")
	fl.BoolVar(&f.stdinCommand, "stdin-from-command", false, "back up the output of the command given after --; if it fails, no snapshot is saved (e.g. --stdin-from-command -- pg_dump app)")
	fl.StringVar(&f.stdinName, "stdin-filename", "stdin", "file name for --stdin and --stdin-from-command, e.g. --stdin-filename app.sql")
	fl.StringArrayVar(&f.tags, "tag", nil, "tag the snapshot with `TAGS`: --tag daily,db adds two tags, daily and db; repeatable")
	fl.StringVar(&f.host, "host", "", "host name to record (default: this host's name)")
	fl.StringVar(&f.time, "time", "", "`time` to record for the snapshot, '2006-01-02 15:04:05' (local) or RFC 3339 (default: now)")
	fl.StringVar(&f.parent, "parent", "", "compare with this snapshot instead of the newest of the same host and paths")
	fl.BoolVar(&f.force, "force", false, "read every file again, even unchanged ones")
	fl.BoolVar(&f.ignoreInode, "ignore-inode", false, "compare files with the parent by path, size and mtime only: ignore inode numbers and ctimes (a clone's first backup with --parent)")
	fl.BoolVar(&f.ignoreCtime, "ignore-ctime", false, "compare files with the parent without their ctimes")
	fl.StringVar(&f.preHook, "pre-hook", "", "run this shell command before the backup; if it fails, no backup is made")
	fl.StringVar(&f.postHook, "post-hook", "", "run this shell command after the backup, also when it failed; its environment says how it went (FLOE_BACKUP_STATUS ok, partial or failed, FLOE_SNAPSHOT_ID, ...: see above)")
	fl.StringArrayVar(&f.images, "image", nil, "back up the block device or raw image `FILE` as a disk image (one file in the snapshot, zero runs cost nothing), e.g. --image /dev/vdb; repeatable")
	fl.StringVar(&f.fsSnapshot, "fs-snapshot", "", "read the paths from a read-only snapshot of their file system: `KIND` lvm or btrfs (needs root). The view is crash-consistent: quiesce writers with --pre-hook for application consistency")
	fl.StringVar(&f.fsSnapshotSz, "fs-snapshot-size", "", "room for changed blocks of LVM snapshots: a `SIZE` like 2G, or 20% of the volume, or 50%FREE of the volume group (default 10%)")
	return c
}

func runBackup(ctx context.Context, g *globals, f *backupFlags, paths []string) error {
	var snapTime time.Time
	if f.time != "" {
		var err error
		if snapTime, err = time.Parse(time.RFC3339, f.time); err != nil {
			if snapTime, err = time.ParseInLocation("2006-01-02 15:04:05", f.time, time.Local); err != nil {
				return usageError{fmt.Errorf("--time %q: want '2006-01-02 15:04:05' or RFC 3339", f.time)}
			}
		}
	}
	meter := &ui.Meter{}
	job := &backup.Job{
		Options: backup.Options{
			Excludes: f.excludes, IExcludes: f.iexcludes, ExcludeCaches: f.excludeCaches,
			ExcludeIfPresent: f.ifPresent, OneFileSystem: f.oneFS,
			Hostname: f.host, Tags: f.tags, Force: f.force, DryRun: f.dryRun, Time: snapTime,
			IgnoreInode: f.ignoreInode, IgnoreCtime: f.ignoreCtime,
			ProgramVersion: "floe " + version,
			Progress:       meter,
			// the totals are shown on a terminal's status line and in
			// JSON status messages, else nobody needs their scan
			NoScan: !g.json && (g.quiet || !ui.IsTerminal(os.Stderr)),
		},
		ExcludeFiles: f.excludeFiles, IExcludeFiles: f.iexcludeFiles, ParentID: f.parent,
		PreHook: f.preHook, PostHook: f.postHook,
		FSSnapshot: fssnap.Kind(f.fsSnapshot), FSSnapshotSize: f.fsSnapshotSz,
		Repository: g.target(),
	}
	if f.largerThan != "" {
		job.ExcludeLargerThan, _ = backup.ParseSize(f.largerThan) // checked in RunE
	}
	switch {
	case f.stdinCommand:
		job.StdinCommand, job.StdinFilename = paths, f.stdinName
	case f.stdin:
		job.Stdin, job.StdinFilename = os.Stdin, f.stdinName
	default:
		job.Paths, job.Images = paths, f.images
		for _, l := range []struct {
			files []string
			kind  backup.ListKind
		}{{f.filesFrom, backup.ListPatterns}, {f.filesVerbatim, backup.ListVerbatim}, {f.filesRaw, backup.ListRaw}} {
			for _, file := range l.files {
				job.FilesFrom = append(job.FilesFrom, backup.FileList{Path: file, Kind: l.kind})
			}
		}
		job.ListInput = os.Stdin
	}
	st := g.status()
	if f.verbose && !g.quiet && !g.json {
		job.OnItem = func(it backup.Item) {
			st.Print(fmt.Sprintf("%-9s %s  %s", it.Action, ui.Path(it.Path), ui.Bytes(it.Size)))
		}
	}
	if f.verbose && g.json {
		job.OnItem = func(it backup.Item) {
			stdoutJSON.verbose(map[string]any{"action": it.Action, "item": snapshot.EncodeName(it.Path), "size": it.Size})
		}
	}
	stopJSON := func() {}
	job.Events = backup.Events{
		Warn: func(msg string) { g.warn("%s", msg) },
		Created: func(location, keyFile string) {
			msg := fmt.Sprintf("No repository was given (-r/--repo, FLOE_REPOSITORY), so floe created its default one:\n"+
				"  repository  %s\n  secret      the random key file %s (mode 0600, no password)\n"+
				"Keep a copy of the key file somewhere else: without it nobody can read these backups.\n", location, keyFile)
			if g.json || g.quiet {
				g.warn("%s", msg) // stdout is for the JSON; this must still be seen
			} else {
				g.say("%s", msg)
			}
		},
		Reading: func(what string) {
			if !g.quiet && !g.json {
				g.warn("reading from the %s", what)
			}
		},
		Start: func() {
			upload := &ui.UploadLine{}
			paid := g.uploadCounter()
			st.Run(200*time.Millisecond, func() string {
				queued, uploaded := meter.Counter(repo.CountQueued), meter.Counter(repo.CountUploaded)
				if n := paid(); n > uploaded {
					// under --limit-upload: a pack is paid for part by
					// part before it is stored whole
					uploaded = min(n, queued)
				}
				return ui.BackupLine(meter, upload, queued, uploaded)
			})
			stopJSON = g.jsonStatus(time.Now(), func() map[string]any {
				_, _, files, filesTotal, bytes, bytesTotal := meter.Current()
				return map[string]any{"files_done": files, "files_total": filesTotal,
					"bytes_done": bytes, "bytes_total": bytesTotal, "scan_done": meter.IsCounted(),
					"errors": meter.Failures(), "current_file": meter.Item(),
					"bytes_queued": meter.Counter(repo.CountQueued), "bytes_uploaded": meter.Counter(repo.CountUploaded)}
			})
		},
		Stop: func() { st.Stop(); stopJSON() },
	}
	res, err := job.Run(ctx)
	if res == nil {
		return err
	}
	printBackupResult(g, res.Result, res.Parent)
	warnForged(g, res.Forged)
	if res.SnapshotProblem != nil {
		g.warn("floe: %v", res.SnapshotProblem)
		if hint := hintFor(res.SnapshotProblem); hint != "" {
			g.warn("hint: %s", hint)
		}
		g.exitCode = ExitPartial
	}
	if !res.DryRun && (res.Created || ui.IsTerminal(os.Stdout)) {
		g.say("\nnext:")
		for _, hint := range [][2]string{
			{"snapshots", "list snapshots"},
			{"ls latest", "list the files of the newest"},
			{"restore latest --target DIR", "restore it into DIR"},
			{"check", "verify the repository"},
		} {
			g.say("  %-40s %s", g.cmdPrefix()+" "+hint[0], hint[1])
		}
	}
	if len(res.Errors) > 0 {
		g.exitCode = ExitPartial
	}
	return err
}

func printBackupResult(g *globals, res *backup.Result, parent *snapshot.Record) {
	sn := res.Snapshot
	s := sn.Summary
	if g.json {
		errs := make([]map[string]string, 0, len(res.Errors))
		for _, e := range res.Errors {
			stdoutJSON.itemError(e.Path, "read", e.Err)
			errs = append(errs, map[string]string{"path": e.Path, "error": e.Err.Error()})
		}
		out := map[string]any{"snapshot": res.ID.String(), "summary": s, "consistency": consistencyJSON(sn.Consistency), "errors": errs}
		if res.DryRun {
			out["snapshot"], out["dry_run"] = nil, true
		}
		if parent != nil {
			out["parent"] = parent.ID.String()
		}
		stdoutJSON.summary(out)
		return
	}
	for _, e := range res.Errors {
		g.warn("error: %v", e)
	}
	if g.quiet {
		return
	}
	if parent != nil {
		g.say("parent snapshot %s", parent.ID.Short())
	}
	g.say("files: %d new, %d changed, %d unchanged; %s; %s", s.FilesNew, s.FilesChanged, s.FilesUnchanged, ui.Count(s.Dirs, "directory", "directories"), ui.Count(s.Errors, "error"))
	if res.DryRun {
		g.say("total size %s; new data %s (before compression)", ui.Bytes(s.TotalBytes), ui.Bytes(s.DataAdded))
		g.say("dry run: nothing was written")
		return
	}
	g.say("total size %s; new data %s, stored as %s", ui.Bytes(s.TotalBytes), ui.Bytes(s.DataAdded), ui.Bytes(s.DataAddedStored))
	if line := consistencyLine(sn.Consistency); line != "" {
		g.say("%s", line)
	}
	g.say("snapshot %s saved in %s", res.ID.Short(), ui.Duration(time.Duration(s.DurationSeconds*float64(time.Second))))
	if len(res.Errors) > 0 {
		g.say("some files could not be read (listed above); they are not in the snapshot")
	}
}

func consistencyJSON(c snapshot.Consistency) map[string]any {
	return map[string]any{"checked": c.Checked, "frozen": c.Frozen, "changed_during_read": c.ChangedDuringRead, "changed_count": c.ChangedCount}
}

// consistencyLine says which files changed while being read, if any.
func consistencyLine(c snapshot.Consistency) string {
	if c.ChangedCount == 0 {
		return ""
	}
	shown := c.ChangedDuringRead
	more := ""
	if len(shown) > 3 {
		more = ", ..."
		shown = shown[:3]
	}
	return fmt.Sprintf("%s changed while being read: %s%s", ui.Count(c.ChangedCount, "file"), ui.Paths(shown, ", "), more)
}

// warnForged reports stored copies whose bytes did not match their IDs
// (forged by someone with write access to the storage, or damaged). Where
// the blob has another copy the operation used it (or a backup stored its
// own), so nothing was lost and the user should find out where the bad
// copy came from; where it has none, what needed the blob failed, and the
// errors name it.
func warnForged(g *globals, forged []repo.ForgedCopy) {
	for i, f := range forged {
		if i == 3 {
			g.warn("warning: ... and %d more", len(forged)-3)
			break
		}
		outcome := "another copy was used"
		if f.Others == 0 {
			outcome = "no other copy is known, so what needs it could not be read"
		}
		g.warn("warning: the copy of %s blob %s in pack %s is forged or damaged (%s); %s", f.Blob.Type, f.Blob.ID.Short(), f.Pack.Short(), f.Reason, outcome)
	}
	if len(forged) > 0 {
		g.warn("warning: run `floe check --read-data` to list every forged or damaged copy")
	}
}
