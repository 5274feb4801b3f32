package main

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/dump"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/ui"
)

func newDumpCommand(g *globals) *cobra.Command {
	var (
		archive, output string
		filter          snapshotFilterFlags
	)
	c := &cobra.Command{
		Use:   "dump SNAPSHOT[:PATH] [PATH]",
		Short: "Write a file, or a directory as a tar archive, to standard output",
		Long: `Write what a snapshot holds at PATH to standard output (or --output FILE):
a regular file's content as it is; a directory, with everything below it,
as a tar archive (POSIX PAX format); any other node (symlink, device, ...)
as a tar archive of that one entry. --archive tar makes a tar archive of a
regular file too. Without PATH, the whole snapshot is dumped.

Names in the archive are relative to the directory above PATH, as
"tar -C PARENT -c NAME" would make them: dumping /etc gives etc/,
etc/passwd, ...; dumping / gives etc/, usr/, ... They never start with "/"
or hold "..". The archive keeps long and non-UTF-8 names, modes, uid/gid
and user/group names, mtime/atime/ctime to the nanosecond, symlinks, hard
links (later names of a file as links to the first), FIFOs, devices and
xattrs (SCHILY.xattr records, which GNU tar restores with --xattrs).
Sparse files are written with their holes as zeros. Sockets cannot be
stored in tar and are skipped with a warning. A device number larger than
a PAX header holds (no Linux system has one) is written with a GNU tar
header (whole seconds, no xattrs), one larger than GNU tar reads
(2147483647) is skipped with a warning.

floe refuses to write an archive to a terminal.`,
		Example: `  floe dump latest /etc/passwd
  floe dump latest /etc > etc.tar
  floe dump 4f2a9c1e:/home/alice | tar -x -C /tmp/restore
  floe dump latest --host db1 /var/lib/pg --output /mnt/tape/pg.tar`,
		Args: usageArgs(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if archive != "tar" {
				return usageError{fmt.Errorf("--archive %q: only \"tar\" is supported", archive)}
			}
			forceTar := cmd.Flags().Changed("archive")
			sp, err := g.openSnapshotPath(ctx, args, filter.filter())
			if err != nil {
				return err
			}
			defer sp.r.Close()
			r, l, sn, p, node := sp.r, sp.l, sp.sn, sp.path, sp.node
			asTar := forceTar || node.Type != snapshot.TypeFile

			var w io.Writer = os.Stdout
			var file *os.File
			if output != "" && output != "-" {
				// a dump may hold secrets (/etc/shadow): owner-only
				file, err = os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
				if err != nil {
					return fmt.Errorf("create output: %w", err)
				}
				w = file
			} else if asTar {
				if err := refuseTerminal(os.Stdout, "tar archive"); err != nil {
					return err
				}
			}
			bw := bufio.NewWriterSize(w, 1<<20)
			fail := func(err error) error {
				if file != nil {
					file.Close()
					file = nil
					os.Remove(output)
				}
				return fmt.Errorf("dump %s:%s: %w", sn.ID.Short(), p, err)
			}
			if !asTar {
				if _, err := dump.File(ctx, r, node, bw); err != nil {
					return fail(err)
				}
			} else {
				res, err := dump.Tar(ctx, r, l, p, node, bw)
				if err != nil {
					return fail(err)
				}
				for _, s := range res.Skipped {
					g.warn("warning: skipped %s", s)
				}
				if !g.quiet && ui.IsTerminal(os.Stderr) {
					g.warn("dumped %s, %s, %s, %d other, %s", ui.Count(res.Files, "file"), ui.Count(res.Dirs, "directory", "directories"),
						ui.Count(res.Links, "hard link"), res.Others, ui.Bytes(res.Bytes))
				}
			}
			if err := bw.Flush(); err != nil {
				return fail(err)
			}
			if file != nil {
				if err := file.Sync(); err != nil {
					return fail(err)
				}
				if err := file.Close(); err != nil {
					return fail(err)
				}
			}
			return nil
		},
	}
	c.Flags().StringVar(&archive, "archive", "tar", "archive format for directories (only tar)")
	c.Flags().StringVarP(&output, "output", "o", "", "write to `FILE` instead of standard output (created mode 0600)")
	filter.add(c)
	return c
}
