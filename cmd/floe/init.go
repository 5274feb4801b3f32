package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/ui"
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
			opts.KDF = kdfParams()
			if copyFrom != "" {
				src := &globals{repo: copyFrom, passwordFile: copyFromPasswordFile, keyFile: copyFromKeyFile}
				r, err := src.openRepo(ctx, false)
				if err != nil {
					return fmt.Errorf("open %s: %w", copyFrom, err)
				}
				ch := r.Config().Chunker
				key := r.ChunkIDKey()
				opts.Chunker, opts.ChunkIDKey = &ch, &key
				r.Close()
			}
			r, keyPath, err := g.initRepo(ctx, opts)
			if err != nil {
				return err
			}
			defer r.Close()
			if g.json {
				return ui.WriteJSON(os.Stdout, map[string]any{"repository": g.repo, "id": r.Config().ID, "key": r.KeyID(), "key_file": keyPath})
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

// initRepo creates the repository at g.repo. With --key-file naming a file
// that does not exist, or for the default repository without a password,
// the first key is a key file, written with mode 0600.
func (g *globals) initRepo(ctx context.Context, opts repo.InitOptions) (*repo.Repository, string, error) {
	var cred repo.Credential
	keyPath := ""
	switch {
	case g.keyFile != "":
		if _, err := os.Stat(g.keyFile); err == nil {
			return nil, "", fmt.Errorf("key file %s exists already; init writes a new key file (give a new path)", g.keyFile)
		}
		keyPath = g.keyFile
	case g.passwordFile != "" || g.passwordCommand != "":
		c, err := g.credential(ctx)
		if err != nil {
			return nil, "", err
		}
		cred = c
	case g.usingDefault:
		p, err := defaultKeyFile()
		if err != nil {
			return nil, "", err
		}
		keyPath = p
	default:
		pw, err := newPassword(ctx, "")
		if err != nil {
			return nil, "", err
		}
		cred.Password = pw
	}
	if keyPath != "" {
		if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
			return nil, "", fmt.Errorf("create key file directory: %w", err)
		}
		// fail before creating the repository if the key file cannot be written
		f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, "", fmt.Errorf("create key file: %w", err)
		}
		f.Close()
		os.Remove(keyPath)
	}
	be, err := location.Create(g.repo)
	if err != nil {
		return nil, "", err
	}
	if be, err = wrapBackend(be); err != nil {
		return nil, "", err
	}
	r, kf, err := repo.Init(ctx, be, cred, opts)
	if err != nil {
		be.Close()
		return nil, "", err
	}
	if kf != nil {
		if err := repo.WriteKeyFile(keyPath, kf); err != nil {
			return nil, "", fmt.Errorf("repository created, but writing its key file failed (the repository cannot be opened without it; delete %s and init again): %w", g.repo, err)
		}
	}
	return r, keyPath, nil
}
