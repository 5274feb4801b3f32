package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/transfer"
	"github.com/floe-backup/floe/internal/ui"
)

func newExportCommand(g *globals) *cobra.Command {
	var (
		f                     transferFlags
		to                    string
		newPwFile, newKeyFile string
	)
	c := &cobra.Command{
		Use:   "export [SNAPSHOT...] --to DIR",
		Short: "Write snapshots to a directory (a removable disk) as a self-contained repository",
		Long: `Write snapshots to DIR as a self-contained repository, to carry to another
site on a disk and bring in there with ` + "`floe import`" + `. SNAPSHOT is an ID,
a unique prefix of one, or "latest"; --all exports every snapshot, and
--host/--tag/--path alone every snapshot they select.

DIR gets the repository's config and keys, so the same password or key
file opens it; only the blobs the snapshots need, written into new packs
(blobs are stored identically in every pack, so their IDs, the trees and
the snapshot records are those of the source, and no other host's data
rides along); signed index files of those packs; and the snapshot
records. DIR is itself a repository: ` + "`floe -r DIR restore ...`" + ` works.

What the export's password opens: by default DIR holds a copy of every
key record of the source, so every password and key file of the source
(other hosts' included) opens it, and whoever opens it holds the
source's master secrets (README "Export"): the exported snapshots, and
anything in the source repository if they can also read its storage.
With --new-password-file or --new-key-file, DIR holds one fresh key
record instead, and only that credential opens it: give it to whoever
carries the disk, keep it apart from the source's passwords.

Last, export writes DIR/MANIFEST.json (every file's path, size and BLAKE3
hash, the snapshot IDs, the time and the source repository's ID) and then
DIR/MANIFEST.json.b3, the BLAKE3 hash of the manifest. An export that was
interrupted has no MANIFEST.json.b3, and import refuses it; run the same
export again to finish it (the packs already written are kept). The
manifest can also be checked without floe:
  cd DIR && b3sum -c MANIFEST.json.b3

DIR must be new, empty, or an unfinished export of this repository.`,
		Example: `  floe export latest --to /mnt/usb/floe-export
  floe export --host db1 --to /mnt/usb/db1 --connections 8
  floe import /mnt/usb/floe-export -r /srv/backup --from-password-file /root/.site1-pw   # at the other site`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if to == "" {
				return usageError{errors.New("--to DIR is required")}
			}
			if err := checkConnections(cmd, g, &f.connections); err != nil {
				return err
			}
			if newPwFile != "" && newKeyFile != "" {
				return usageError{errors.New("give --new-password-file or --new-key-file, not both")}
			}
			var nk *transfer.NewKey
			if newKeyFile != "" {
				nk = &transfer.NewKey{SaveKeyFile: func(kf *repo.KeyFile) error { return repo.WriteKeyFile(newKeyFile, kf) }}
			} else if newPwFile != "" {
				pw, err := newPassword(ctx, newPwFile)
				if err != nil {
					return err
				}
				nk = &transfer.NewKey{Password: pw}
			}
			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			sel, err := f.selected(ctx, g, r, args)
			if err != nil {
				return err
			}
			prog := &ui.Meter{}
			start := time.Now()
			st := g.status()
			st.Run(200*time.Millisecond, func() string {
				read, sent := prog.Counter(transfer.CountBytesRead), prog.Counter(transfer.CountBytesSent)
				return fmt.Sprintf("[%s] %s: %s read, %s written, %s", ui.Duration(time.Since(start)), prog.PhaseName(),
					ui.Bytes(uint64(read)), ui.Bytes(uint64(sent)), ui.Rate(sent, time.Since(start)))
			})
			stopJSON := g.jsonStatus(start, func() map[string]any { return transferStatus(prog) })
			res, err := transfer.Export(ctx, r, sel, to, transfer.ExportOptions{Connections: f.connections, Progress: prog, Limits: g.limits, NewKey: nk})
			st.Stop()
			stopJSON()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
					return err
				}
				return fmt.Errorf("%w (run the same export again to finish it)", err)
			}
			if g.json {
				stdoutJSON.summary(map[string]any{"dir": to, "snapshots": res.Manifest.Snapshots,
					"packs": res.Packs, "packs_copied": res.Copied, "files": len(res.Manifest.Files), "bytes": res.Bytes,
					"resumed": res.Resumed, "manifest": filepath.Join(to, transfer.ManifestName),
					"duration_seconds": time.Since(start).Seconds()})
				return nil
			}
			for _, id := range res.Manifest.Snapshots {
				g.say("exported snapshot %s", id.Short())
			}
			resumed := ""
			if res.Resumed {
				resumed = fmt.Sprintf(" (continued: %s there already)", ui.Count(res.Packs-res.Copied, "pack was", "packs were"))
			}
			g.say("%s, %s, %s in %s to %s in %s%s", ui.Count(len(res.Manifest.Snapshots), "snapshot"), ui.Count(res.Packs, "pack"),
				ui.Bytes(res.Bytes), ui.Count(len(res.Manifest.Files), "file"), to, ui.Duration(time.Since(start)), resumed)
			g.say("manifest: %s (check: cd %s && b3sum -c %s)", filepath.Join(to, transfer.ManifestName), to, transfer.ManifestSumName)
			return nil
		},
	}
	c.Flags().StringVar(&to, "to", "", "the directory to write (`DIR`)")
	c.Flags().StringVar(&newPwFile, "new-password-file", "", "give the export one key of its own, with the password in this file, instead of the source's keys")
	c.Flags().StringVar(&newKeyFile, "new-key-file", "", "give the export one key of its own, a key file written to this path (mode 0600), instead of the source's keys")
	f.add(c)
	return c
}

func newImportCommand(g *globals) *cobra.Command {
	var (
		connections                                    int
		fromPasswordFile, fromPasswordCmd, fromKeyFile string
	)
	c := &cobra.Command{
		Use:   "import DIR",
		Short: "Bring the snapshots of an export (floe export) into the repository",
		Long: `Bring the snapshots of an export directory (written by ` + "`floe export`" + `)
into the repository (-r).

First the export is checked: MANIFEST.json against MANIFEST.json.b3, and
every file the manifest lists for presence, size and BLAKE3 hash. A file
that is missing, truncated or altered, a manifest that does not match its
checksum, a missing MANIFEST.json.b3 (the export was not finished), or an
object of the repository layout that the manifest does not list, stops
the import before anything is written, with a list of every problem
(exit 13). Other files (lost+found, a desktop's trash) are ignored.

Then the snapshots are copied into the repository as ` + "`floe copy`" + ` does,
sending only what it lacks and skipping snapshots it has already, and
read back from it to verify them (exit 13 if any blob does not match).
When the repository has the same keys as the export (it is the exported
repository's sibling, made from it), packs are copied as they are.

The export opens with the password or key file of the repository it was
exported from: --from-password-file, --from-password-command or
--from-key-file; without them, with the credentials of -r.`,
		Example: `  floe import /mnt/usb/floe-export -r /srv/backup --password-file /root/.pw --from-password-file /root/.site1-pw
  floe import /mnt/usb/floe-export --connections 8 --limit-upload 51200`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			dir := args[0]
			if err := checkConnections(cmd, g, &connections); err != nil {
				return err
			}
			// asked for once: it may open the export too
			dstT := g.target()
			cred, err := dstT.ReadCredential(ctx)
			if err != nil {
				return err
			}
			dstT.Credential = &cred
			dst, err := connect.Open(ctx, dstT, connect.Options{LoadIndex: true})
			if err != nil {
				return err
			}
			defer dst.Close()
			own := fromPasswordFile == "" && fromPasswordCmd == "" && fromKeyFile == ""
			expT := dstT
			expT.Location, expT.Default = dir, false
			if !own {
				expT = g.otherTarget(dir, fromPasswordFile, fromPasswordCmd, fromKeyFile)
				expT.Prompt = promptNaming("--from-password-file, --from-password-command or --from-key-file")
				expCred, err := expT.ReadCredential(ctx)
				if err != nil {
					return err
				}
				expT.Credential = &expCred
			}
			prog := &ui.Meter{}
			start := time.Now()
			st := g.status()
			st.Run(200*time.Millisecond, func() string { return transferLine(start, prog) })
			stopJSON := g.jsonStatus(start, func() map[string]any { return transferStatus(prog) })
			res, err := transfer.Import(ctx, expT, dst, transfer.ImportOptions{
				Options: transfer.Options{Connections: connections, Progress: prog},
			})
			st.Stop()
			stopJSON()
			if errors.Is(err, repo.ErrWrongKey) && own {
				err = fmt.Errorf("%w; the export opens with the password or key file of the repository it came from: give --from-password-file or --from-key-file", err)
			}
			if res != nil {
				reportTransfer(g, "imported", g.repo, res.Result, start)
			}
			return transferError(err)
		},
	}
	addConnectionsFlag(c, &connections)
	c.Flags().StringVar(&fromPasswordFile, "from-password-file", "", "password file of the exported repository")
	c.Flags().StringVar(&fromPasswordCmd, "from-password-command", "", "command that prints the password of the exported repository")
	c.Flags().StringVar(&fromKeyFile, "from-key-file", "", "key file of the exported repository")
	return c
}
