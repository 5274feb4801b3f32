package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage/remote"
	"github.com/floe-backup/floe/internal/transfer"
	"github.com/floe-backup/floe/internal/ui"
)

// transferFlags pick the snapshots of copy and export and their parallelism.
type transferFlags struct {
	all         bool
	connections int
	filter      snapshotFilterFlags
}

func (f *transferFlags) add(c *cobra.Command) {
	c.Flags().BoolVar(&f.all, "all", false, "every snapshot (that passes --host/--tag/--path)")
	f.filter.add(c)
	addConnectionsFlag(c, &f.connections)
}

func addConnectionsFlag(c *cobra.Command, n *int) {
	c.Flags().IntVar(n, "connections", transfer.DefaultConnections, "how many loads and saves run at once (`N`; by default more for remote repositories)")
}

// checkConnections checks --connections and leaves it 0 (the default,
// which a remote repository may raise: storage.ConnectionsHint) unless it
// was given. Here it shadows the global --connections (connections to a
// floe server): given, it also sizes that pool, one connection per 4
// requests at once, as the server's connections hint counts.
func checkConnections(cmd *cobra.Command, g *globals, n *int) error {
	if *n < 1 || *n > 256 {
		return usageError{fmt.Errorf("--connections must be 1..256, not %d", *n)}
	}
	if !cmd.Flags().Changed("connections") {
		*n = 0
		return nil
	}
	g.connections = min((*n+3)/4, remote.MaxConnections)
	return nil
}

// selected returns the snapshots of r that the arguments and flags name.
func (f *transferFlags) selected(ctx context.Context, g *globals, r *repo.Repository, args []string) ([]*snapshot.Record, error) {
	filtered := len(f.filter.hosts)+len(f.filter.tags)+len(f.filter.paths) > 0
	switch {
	case len(args) > 0 && f.all:
		return nil, usageError{errors.New("give snapshots or --all, not both")}
	case len(args) == 0 && !f.all && !filtered:
		return nil, usageError{errors.New("give the snapshots (IDs, prefixes or \"latest\"), --all, or --host/--tag/--path to select them")}
	}
	sel, err := selectSnapshots(ctx, g, r, args, f.filter.filter())
	if err != nil {
		return nil, err
	}
	if len(sel) == 0 {
		return nil, snapshot.ErrNoSnapshot
	}
	return sel, nil
}

func newCopyCommand(g *globals) *cobra.Command {
	var (
		f                                            transferFlags
		to, toPasswordFile, toPasswordCmd, toKeyFile string
		verify                                       bool
	)
	c := &cobra.Command{
		Use:   "copy [SNAPSHOT...] --to REPO2",
		Short: "Copy snapshots into another repository, sending only what it lacks",
		Long: `Copy snapshots of the repository (-r) into the repository --to, sending
only the blobs it does not have yet. SNAPSHOT is an ID, a unique prefix
of one, or "latest" (after --host/--tag/--path); --all copies every
snapshot, and --host/--tag/--path alone every snapshot they select.

When REPO2 was created with
  floe init -r REPO2 --copy-chunker-params-from REPO
both repositories name content alike: blobs and trees are copied by ID,
and a copy of a snapshot that shares most data with one already copied
costs only the difference. Between other repositories every blob is
named again with REPO2's key and the trees are rewritten, so the whole
snapshot is read (but still only new blobs are stored).

Each copy keeps the snapshot's time, host, paths, tags, summary and
consistency record, and records the snapshot it is a copy of. A snapshot
that REPO2 has already (or a copy of it) is skipped, so running the same
copy again after an interruption continues where it stopped: what
arrived is kept and not sent again.

--verify reads every blob of the selected snapshots' copies back from
REPO2 (also of those skipped as already there) and fails (exit 13) if
any is missing or does not match its ID.

REPO2 is opened with --to-password-file, --to-password-command or
--to-key-file (a full key: copy must see which snapshots REPO2 has), or
a password prompt. The global --limit-upload and --limit-download
apply to both repositories; --connections sets how many blobs move at
once.`,
		Example: `  floe copy latest --to /mnt/offsite --to-password-file /root/.offsite-pw
  floe copy --all --to /mnt/offsite --to-key-file /root/offsite.key --verify
  floe copy --host web1 --tag daily --to /mnt/offsite --to-password-file pw --limit-upload 10240
  floe init -r /mnt/offsite --copy-chunker-params-from /srv/backup --from-password-file pw   # once, first`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if to == "" {
				return usageError{errors.New("--to REPO2 is required")}
			}
			if err := checkConnections(cmd, g, &f.connections); err != nil {
				return err
			}
			src, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer src.Close()
			sel, err := f.selected(ctx, g, src, args)
			if err != nil {
				return err
			}
			dstT := g.otherTarget(to, toPasswordFile, toPasswordCmd, toKeyFile)
			dstT.Prompt = promptNaming("--to-password-file, --to-password-command or --to-key-file")
			dst, err := connect.Open(ctx, dstT, connect.Options{LoadIndex: true})
			if err != nil {
				return fmt.Errorf("destination %s: %w", to, err)
			}
			defer dst.Close()
			prog := &ui.Meter{}
			start := time.Now()
			st := g.status()
			st.Run(200*time.Millisecond, func() string { return transferLine(start, prog) })
			stopJSON := g.jsonStatus(start, func() map[string]any { return transferStatus(prog) })
			res, err := transfer.Copy(ctx, src, dst, sel, transfer.Options{Connections: f.connections, Verify: verify, Progress: prog})
			st.Stop()
			stopJSON()
			if res != nil {
				reportTransfer(g, "copy", to, res, start)
			}
			return transferError(err)
		},
	}
	c.Flags().StringVar(&to, "to", "", "the repository to copy into (`REPO2`)")
	c.Flags().StringVar(&toPasswordFile, "to-password-file", "", "password file of --to")
	c.Flags().StringVar(&toPasswordCmd, "to-password-command", "", "command that prints the password of --to")
	c.Flags().StringVar(&toKeyFile, "to-key-file", "", "key file of --to")
	c.Flags().BoolVar(&verify, "verify", false, "read every blob of the copied snapshots back from --to")
	f.add(c)
	return c
}

// transferStatus is the JSON status of copy, export and import.
func transferStatus(p *ui.Meter) map[string]any {
	st := map[string]any{"phase": p.PhaseName()}
	for _, name := range []string{transfer.CountSnapshotsDone, transfer.CountSnapshotsTotal, transfer.CountBlobsDone,
		transfer.CountBlobsSent, transfer.CountBytesRead, transfer.CountBytesSent, transfer.CountBytesVerified} {
		st[name] = p.Counter(name)
	}
	return st
}

// transferLine is the status line of copy, export and import.
func transferLine(start time.Time, p *ui.Meter) string {
	el := time.Since(start)
	var b strings.Builder
	phase := p.PhaseName()
	fmt.Fprintf(&b, "[%s] %s: snapshot %d/%d", ui.Duration(el), phase, p.Counter(transfer.CountSnapshotsDone), p.Counter(transfer.CountSnapshotsTotal))
	if phase == "verify" {
		v := p.Counter(transfer.CountBytesVerified)
		fmt.Fprintf(&b, ", %s verified", ui.Bytes(uint64(v)))
		return b.String()
	}
	sent := p.Counter(transfer.CountBytesSent)
	fmt.Fprintf(&b, ", %s, %s read, %s sent, %s", ui.Count(p.Counter(transfer.CountBlobsDone), "blob"), ui.Bytes(uint64(p.Counter(transfer.CountBytesRead))),
		ui.Bytes(uint64(sent)), ui.Rate(sent, el))
	return b.String()
}

// reportTransfer prints the outcome of a copy or an import.
func reportTransfer(g *globals, what, dest string, res *transfer.Result, start time.Time) {
	copied, skipped := 0, 0
	for _, s := range res.Snapshots {
		if s.Skipped {
			skipped++
		} else {
			copied++
		}
	}
	if g.json {
		for _, s := range res.Snapshots {
			action := "copied"
			switch {
			case s.Skipped:
				action = "skipped"
			case what != "copy":
				action = what
			}
			stdoutJSON.verbose(map[string]any{"action": action, "source": s.Source.String(), "destination": s.Destination.String()})
		}
		stdoutJSON.summary(map[string]any{"destination": dest, "snapshots": res.Snapshots,
			"copied": copied, "skipped": skipped, "shared_chunk_key": res.SharedKey, "verbatim": res.Verbatim,
			"blobs_checked": res.BlobsChecked, "blobs_sent": res.Saved.Blobs, "bytes_sent": res.Saved.RawBytes,
			"bytes_stored": res.Saved.StoredBytes, "packs": res.Saved.Packs,
			"verified": res.Verified, "verified_blobs": res.VerifiedBlobs, "verified_bytes": res.VerifiedBytes,
			"duration_seconds": time.Since(start).Seconds()})
		return
	}
	for _, s := range res.Snapshots {
		if s.Skipped {
			g.say("skipped snapshot %s: %s has it already (%s)", s.Source.Short(), dest, s.Destination.Short())
		} else {
			g.say("%s snapshot %s -> %s", what, s.Source.Short(), s.Destination.Short())
		}
	}
	el := time.Since(start)
	g.say("%s copied, %d skipped; %s, %s (%s stored) in %s, %s",
		ui.Count(copied, "snapshot"), skipped, ui.Count(res.Saved.Blobs, "new blob"), ui.Bytes(res.Saved.RawBytes), ui.Bytes(res.Saved.StoredBytes),
		ui.Duration(el), ui.Rate(int64(res.Saved.RawBytes), el))
	if res.Verified {
		g.say("verified %s, %s, read back from %s", ui.Count(res.VerifiedBlobs, "blob"), ui.Bytes(res.VerifiedBytes), dest)
	}
}

// transferError gives failed verification and damaged exports exit code 13.
func transferError(err error) error {
	var ve *transfer.VerifyError
	var ee *transfer.ExportError
	if errors.As(err, &ve) || errors.As(err, &ee) {
		return &exitError{ExitDamage, err}
	}
	return err
}
