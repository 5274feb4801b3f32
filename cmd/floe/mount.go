package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/mount"
)

func newMountCommand(g *globals) *cobra.Command {
	var (
		filter     snapshotFilterFlags
		allowOther bool
		cacheMiB   int
	)
	c := &cobra.Command{
		Use:   "mount DIR",
		Short: "Browse snapshots as a read-only file system (FUSE)",
		Long: `Mount the repository's snapshots on the existing directory DIR, read-only,
until Ctrl-C (or SIGTERM, or fusermount3 -u DIR). Files can be read and
copied with any tool, with their metadata as backed up: mode, owner, times,
link counts, symlinks, device nodes, FIFOs and extended attributes.

  DIR/ids/<short id>/...                        each snapshot, full paths as backed up
  DIR/hosts/<host>/<2006-01-02T15:04:05>/...    by host and time (local time)
  DIR/hosts/<host>/latest                       -> the host's newest snapshot
  DIR/dates/<2006-01-02>/<host>-<15:04:05>/...  by day
  DIR/latest                                    -> the newest snapshot

Snapshots made after mounting appear after mounting again. Needs FUSE:
/dev/fuse and fusermount3 (Debian: apt install fuse3).`,
		Example: `  mkdir -p /mnt/floe && floe mount /mnt/floe
  floe mount --host web1 /mnt/floe
  cp -a /mnt/floe/hosts/web1/latest/etc/nginx /tmp/nginx`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			dir := args[0]
			if err := mount.Check(dir); err != nil {
				return err
			}
			r, err := g.openRepo(ctx, true)
			if err != nil {
				return err
			}
			defer r.Close()
			s, err := mount.Mount(ctx, r, dir, mount.Options{Filter: filter.filter(), AllowOther: allowOther,
				CacheBytes: int64(cacheMiB) << 20, Logf: g.warn})
			if err != nil {
				return err
			}
			if g.json {
				_ = writeDocument(map[string]any{"mountpoint": dir, "snapshots": s.Snapshots()})
			}
			g.say("mounted at %s; press Ctrl-C or run `fusermount3 -u %s` to unmount", dir, dir)
			select {
			case <-s.Done():
				g.say("%s was unmounted", dir)
				return nil
			case <-ctx.Done():
			}
			err = s.Unmount()
			if errors.Is(err, mount.ErrBusy) {
				// Leaving would break the processes that use the mount;
				// detach it and serve them until they leave.
				sig := make(chan os.Signal, 1)
				signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
				defer signal.Stop(sig)
				if lerr := s.UnmountLazy(); lerr != nil {
					err = fmt.Errorf("%s is busy and could not be detached (%v): leave it (cd elsewhere, close its files) and run `fusermount3 -u %s`", dir, lerr, dir)
					g.warn("floe: %v", err) // main reports errors after a signal as "interrupted"
					return err
				}
				g.warn("%s is busy: detached it; floe ends when the last process using it leaves (Ctrl-C again to end now)", dir)
				select {
				case <-s.Done():
				case <-sig:
				}
				return nil
			}
			if err != nil {
				g.warn("floe: %v", err)
				return err
			}
			g.say("unmounted %s", dir)
			return nil
		},
	}
	filter.add(c)
	c.Flags().BoolVar(&allowOther, "allow-other", false, "let other users in, with the permissions as backed up (non-root: needs user_allow_other in /etc/fuse.conf)")
	c.Flags().IntVar(&cacheMiB, "cache-mib", mount.DefaultCacheBytes>>20, "memory for decrypted file data, in MiB")
	return c
}
