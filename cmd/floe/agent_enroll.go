package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/agent"
	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/ui"
)

func newAgentEnrollCommand(g *globals, f *agentFlags) *cobra.Command {
	var fingerprint string
	c := &cobra.Command{
		Use:   "enroll https://SERVER:PORT TOKEN",
		Short: "Join the fleet of a floe server with a one-time token from `floe serve host add`",
		Long: `Exchange a one-time enrollment token (printed by ` + "`floe serve host add`" + ` on the
server) for this host's credentials: a backup token for its repository,
kept with the server's address in STATE_DIR/server (mode 0600). From then
on the agent takes a lease from the server before each run (the server's
--max-concurrent-backups) and reports every run to it (floe fleet status,
the dashboard, alerts).

The token file STATE_DIR/server/token is a backup token: use it as the
token_file of the jobs whose repository is on that server.

Without --server-fingerprint the server's certificate is trusted on first
use and remembered in STATE_DIR/server/known_servers.`,
		Example: `  floe agent enroll https://backup.example:8443 floe_enroll_Qm9v... --server-fingerprint sha256:...`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadAgentConfig(f.configFile())
			if err != nil {
				return err
			}
			server := strings.TrimSuffix(args[0], "/")
			token := args[1]
			if token == "-" {
				b, err := readAllStdin()
				if err != nil {
					return err
				}
				token = strings.TrimSpace(string(b))
			}
			if !strings.HasPrefix(token, "floe_enroll_") {
				return usageError{errors.New("TOKEN is the enrollment token `floe serve host add` printed (floe_enroll_...)")}
			}
			cr, err := agent.Enroll(cmd.Context(), cfg, server, fingerprint, token, func(s string) { fmt.Fprintln(os.Stderr, s) }, trustHint)
			if err != nil {
				if errors.Is(err, fleet.ErrRefused) {
					return &exitError{code: ExitRefused, err: fmt.Errorf("%w (the token works once and expires: ask for a new one with floe serve host add)", err)}
				}
				return err
			}
			dir := agent.ServerDir(cfg)
			if g.json {
				return writeDocument(map[string]any{"host": cr.Host, "repo": cr.Repo, "server": cr.Server,
					"token_file": filepath.Join(dir, fleet.TokenFileName)})
			}
			g.say("enrolled as host %s, repository %s on %s", ui.Path(cr.Host), ui.Path(cr.Repo), ui.Path(cr.Server))
			g.say("backup token in %s (use it as token_file of the jobs on %s/%s); restart the agent to take leases from the server and report to it",
				filepath.Join(dir, fleet.TokenFileName), cr.Server, cr.Repo)
			return nil
		},
	}
	c.Flags().StringVar(&fingerprint, "server-fingerprint", "", "accept only the server certificate with this `sha256:HEX` fingerprint (floe serve prints it)")
	return c
}

func readAllStdin() ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(os.Stdin, 4096))
	if err != nil {
		return nil, fmt.Errorf("read the token from standard input: %w", err)
	}
	return b, nil
}
