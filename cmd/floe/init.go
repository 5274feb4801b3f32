package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/repo"
)

func newInitCommand(g *globals) *cobra.Command {
	var copyFrom, copyFromPasswordFile, copyFromKeyFile string
	c := &cobra.Command{
		Use:   "init",
		Short: "Create a repository",
		Long: `Create a new repository at -r/--repo.

The first key is protected by the password from --password-file,
FLOE_PASSWORD_FILE, FLOE_PASSWORD_COMMAND or a prompt; or, with --key-file
PATH for a file that does not exist yet, it is a random key written to PATH
(mode 0600). Keep a copy of the password or key file somewhere else: without
it the backups cannot be read by anyone.`,
		Example: `  floe init -r /srv/backup --password-file /root/.floe-pw
  floe init -r /srv/backup --key-file /root/floe.key
  floe init -r /mnt/disk/repo --copy-chunker-params-from /srv/backup --from-password-file /root/.floe-pw`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var opts repo.InitOptions
			if copyFrom != "" {
				r, err := connect.Open(ctx, g.otherTarget(copyFrom, copyFromPasswordFile, "", copyFromKeyFile), connect.Options{})
				if err != nil {
					return fmt.Errorf("open %s: %w", copyFrom, err)
				}
				ch := r.Config().Chunker
				key := r.ChunkIDKey()
				opts.Chunker, opts.ChunkIDKey = &ch, &key
				r.Close()
			}
			r, keyPath, err := connect.Create(ctx, g.target(), opts)
			if err != nil {
				return err
			}
			defer r.Close()
			if g.json {
				return writeDocument(map[string]any{"repository": g.repo, "id": r.Config().ID, "key": r.KeyID(), "key_file": keyPath})
			}
			g.say("created repository %s at %s", r.Config().ID[:8], g.repo)
			if keyPath != "" {
				g.say("key file: %s\nKeep a copy of it somewhere else: without it nobody can read these backups.", keyPath)
			}
			return nil
		},
	}
	c.Flags().StringVar(&copyFrom, "copy-chunker-params-from", "", "use the chunker parameters of this repository, so both deduplicate alike")
	c.Flags().StringVar(&copyFromPasswordFile, "from-password-file", "", "password file of the --copy-chunker-params-from repository")
	c.Flags().StringVar(&copyFromKeyFile, "from-key-file", "", "key file of the --copy-chunker-params-from repository")
	return c
}
