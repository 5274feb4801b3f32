package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/ui"
)

func newKeyCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "key",
		Short: "Manage the keys that open the repository",
		Example: `  floe key list
  floe key add --write-only --new-key-file /etc/floe/web1.key   # for a host
  floe key passwd --new-password-file /root/new-pw
  floe key remove 4f2a9c1e`,
		Long: `A repository can have several keys. Each opens it with a password or a key
file. A write-only key (key add --write-only) can make backups but cannot read
any: give one to each host, so a host that is broken into cannot read the
fleet's backups. Managing keys (add, remove, passwd) needs a full key; a
write-only key is refused with exit code 12. The last full key cannot be
removed.`,
	}
	var newPwFile, newKeyFile string
	var writeOnly bool
	add := &cobra.Command{
		Use:   "add",
		Short: "Add a key",
		Example: `  floe key add --new-password-file /root/pw2
  floe key add --write-only --new-key-file /etc/floe/host.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if newPwFile != "" && newKeyFile != "" {
				return usageError{errors.New("give --new-password-file or --new-key-file, not both")}
			}
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close()
			var pw []byte
			if newKeyFile == "" {
				if pw, err = newPassword(ctx, newPwFile); err != nil {
					return err
				}
			} else if _, err := os.Stat(newKeyFile); err == nil {
				return fmt.Errorf("key file %s exists already", newKeyFile)
			}
			id, kf, err := r.AddKey(ctx, pw, writeOnly)
			if err != nil {
				return err
			}
			if kf != nil {
				if err := repo.WriteKeyFile(newKeyFile, kf); err != nil {
					_, _ = r.RemoveKey(ctx, id)
					return err
				}
			}
			if g.json {
				return writeDocument(map[string]any{"id": id, "write_only": writeOnly, "key_file": newKeyFile})
			}
			kind := "full"
			if writeOnly {
				kind = "write-only"
			}
			g.say("added %s key %s", kind, id[:8])
			return nil
		},
	}
	add.Flags().StringVar(&newPwFile, "new-password-file", "", "read the new key's password from this file (default: prompt)")
	add.Flags().StringVar(&newKeyFile, "new-key-file", "", "make a key-file key and write it to this path (mode 0600)")
	add.Flags().BoolVar(&writeOnly, "write-only", false, "the key can add backups but not read any")

	list := &cobra.Command{
		Use:   "list",
		Short: "List keys",
		Long: `List the keys of the repository: ID, full or write-only, kind (password or
key file), and the host and user that made it. The key in use is marked *.`,
		Example: `  floe key list
  floe key list --json | jq -r '.keys[] | select(.write_only) | .hostname'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close()
			keys, err := r.Keys(ctx)
			if err != nil {
				return err
			}
			if g.json {
				return writeDocument(map[string]any{"keys": keys})
			}
			fmt.Printf(" %-8s  %-10s  %-9s  %-12s  %-10s  %s\n", "ID", "Access", "Kind", "Host", "User", "Created")
			for _, k := range keys {
				cur := " "
				if k.Current {
					cur = "*"
				}
				access := "full"
				if k.WriteOnly {
					access = "write-only"
				}
				fmt.Printf("%s%-8s  %-10s  %-9s  %-12s  %-10s  %s\n", cur, k.ID[:8], access, k.Kind, ui.Path(k.Hostname), ui.Path(k.Username), k.Created.Local().Format("2006-01-02 15:04"))
			}
			return nil
		},
	}
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a key (not the one in use)",
		Example: `  floe key list                 # find the ID (a unique prefix is enough)
  floe key remove 4f2a9c1e`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close()
			id, err := r.RemoveKey(ctx, args[0])
			if err != nil {
				return err
			}
			if g.json {
				return writeDocument(map[string]any{"removed": id})
			}
			g.say("removed key %s", id[:8])
			return nil
		},
	}
	passwd := &cobra.Command{
		Use:   "passwd",
		Short: "Change the password of the key in use",
		Example: `  floe key passwd                                  # asks for the new password twice
  floe key passwd --new-password-file /root/new-pw`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := g.openRepo(ctx, false)
			if err != nil {
				return err
			}
			defer r.Close()
			pw, err := newPassword(ctx, newPwFile)
			if err != nil {
				return err
			}
			id, err := r.ChangePassword(ctx, pw)
			if err != nil {
				return err
			}
			if g.json {
				return writeDocument(map[string]any{"id": id})
			}
			g.say("password changed; the key is now %s", id[:8])
			return nil
		},
	}
	passwd.Flags().StringVar(&newPwFile, "new-password-file", "", "read the new password from this file (default: prompt)")
	c.AddCommand(add, list, remove, passwd)
	return c
}
