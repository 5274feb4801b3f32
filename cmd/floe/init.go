package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/repo"
)

func newInitCommand(g *globals) *cobra.Command {
	var copyFrom, copyFromPasswordFile, copyFromKeyFile, compression string
	c := &cobra.Command{
		Use:   "init",
		Short: "Create a repository",
		Long: `Create a new repository at -r/--repo.

The first key is protected by the password from --password-file,
FLOE_PASSWORD_FILE, FLOE_PASSWORD_COMMAND or a prompt; or, with --key-file
PATH for a file that does not exist yet, it is a random key written to PATH
(mode 0600). Keep a copy of the password or key file somewhere else: without
it the backups cannot be read by anyone.

--compression sets the level every backup into this repository compresses
at, from every host, for good (it is part of the signed config, and a
blob's ID depends on it: hosts at different levels would not deduplicate
against each other, so it cannot be a flag of each backup):

  auto     files and trees at zstd's default level (about level 3), disk
           images (backup --image) at its fastest (about level 1); blobs
           that do not compress are stored raw (the default)
  fastest  everything at the fastest level: about 30% less CPU for a first
           backup of files than auto, 1-13% more stored (source text most)
  default  everything at zstd's default level, disk images too: about 5%
           less stored for an image than auto, at a third more CPU
  better   the smallest repository, at about twice default's compression CPU
  off      nothing is compressed (data that is already compressed or
           encrypted, or a CPU that cannot spare it)

With --copy-chunker-params-from the level is copied too, unless
--compression is given: so both repositories give one plaintext one ID.`,
		Example: `  floe init -r /srv/backup --password-file /root/.floe-pw
  floe init -r /srv/backup --key-file /root/floe.key
  floe init -r /srv/images --compression default   # images at zstd's default level too: ~5% less storage, more CPU
  floe init -r /mnt/disk/repo --copy-chunker-params-from /srv/backup --from-password-file /root/.floe-pw`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var opts repo.InitOptions
			level, err := compress.ParseLevel(compression)
			if err != nil {
				return usageError{fmt.Errorf("--compression: %w", err)}
			}
			opts.Compression = level
			if copyFrom != "" {
				from := g.otherTarget(copyFrom, copyFromPasswordFile, "", copyFromKeyFile)
				from.Prompt = promptNaming("--from-password-file or --from-key-file")
				r, err := connect.Open(ctx, from, connect.Options{})
				if err != nil {
					return fmt.Errorf("open %s: %w", copyFrom, err)
				}
				ch := r.Config().Chunker
				key := r.ChunkIDKey()
				opts.Chunker, opts.ChunkIDKey = &ch, &key
				if !cmd.Flags().Changed("compression") {
					opts.Compression = r.CompressionLevel()
				}
				r.Close()
			}
			r, keyPath, err := connect.Create(ctx, g.target(), opts)
			if err != nil {
				return err
			}
			defer r.Close()
			if g.json {
				return writeDocument(map[string]any{"repository": g.repo, "id": r.Config().ID, "key": r.KeyID(), "key_file": keyPath,
					"compression_level": r.CompressionLevel().String()})
			}
			g.say("created repository %s at %s (compression %s)", r.Config().ID[:8], g.repo, r.CompressionLevel())
			if keyPath != "" {
				g.say("key file: %s\nKeep a copy of it somewhere else: without it nobody can read these backups.", keyPath)
			}
			return nil
		},
	}
	c.Flags().StringVar(&compression, "compression", "auto", "compression `level` of every backup into the repository: "+compress.Levels+" (fixed at init)")
	c.Flags().StringVar(&copyFrom, "copy-chunker-params-from", "", "use the chunker parameters of this repository, so both deduplicate alike")
	c.Flags().StringVar(&copyFromPasswordFile, "from-password-file", "", "password file of the --copy-chunker-params-from repository")
	c.Flags().StringVar(&copyFromKeyFile, "from-key-file", "", "key file of the --copy-chunker-params-from repository")
	return c
}
