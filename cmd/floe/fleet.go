package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/storage/remote"
)

// fleetClient is the client of a floe server's fleet API, from --server
// (FLOE_SERVER), --token-file and --server-fingerprint.
func (g *globals) fleetClient(server string) (*fleet.Client, error) {
	envDefault(&server, "FLOE_SERVER")
	if server == "" {
		return nil, usageError{errors.New("give the floe server with --server https://HOST:PORT (or FLOE_SERVER)")}
	}
	if g.tokenFile == "" {
		return nil, usageError{errors.New("the fleet API needs a viewer or admin token: --token-file or FLOE_TOKEN_FILE (`floe serve token add --role viewer` makes one)")}
	}
	tok, err := location.ReadTokenFile(g.tokenFile)
	if err != nil {
		return nil, err
	}
	so := g.serverOptions()
	hc, err := remote.NewHTTPClient(strings.TrimSuffix(server, "/"), remote.Options{Fingerprint: so.ServerFingerprint, KnownServersFile: so.KnownServersFile, Warn: so.Warn, TrustHint: so.TrustHint})
	if err != nil {
		return nil, usageError{err}
	}
	hc.Timeout = 2 * time.Minute
	return &fleet.Client{Base: strings.TrimSuffix(server, "/"), Token: tok, HTTP: hc}, nil
}

// fleetError gives refusals the refusal exit code.
func fleetError(err error, code int) error {
	if errors.Is(err, fleet.ErrRefused) {
		code = ExitRefused
	}
	return &exitError{code: code, err: err}
}

func newFleetCommand(g *globals) *cobra.Command {
	var server string
	c := &cobra.Command{
		Use:   "fleet",
		Short: "See the state of the fleet's backups on a floe server (status, runs, report)",
		Long: `Ask a floe server (--server https://HOST:PORT, or FLOE_SERVER) for the state
of every enrolled host and job, with a viewer or admin token (--token-file).`,
		Example: `  floe fleet status --server https://backup:8443 --token-file viewer.token
  floe fleet runs --host web1
  floe fleet report | mail -s "floe fleet" ops@example.com`,
	}
	c.PersistentFlags().StringVar(&server, "server", "", "the floe server, `https://HOST:PORT` (env FLOE_SERVER)")

	status := &cobra.Command{
		Use:   "status",
		Short: "Every host and job: last success, age, next due, state; exits as a Nagios plugin",
		Long: `Every host and job, worst first: last success, its age, when it is due next
(as the agent reported), state and size (bytes read by the last success).

States: ok, running, never (no run reported yet), overdue (no success by its
next due time plus the server's slack), failed (the last run failed).

Exit codes, as Nagios plugins: 0 OK (every job ok or running), 1 WARNING (a
job never ran), 2 CRITICAL (a job failed or is overdue), 3 UNKNOWN (the
server could not be asked: unreachable, no --server or token file), 14
the server refused the token.`,
		Example: `  floe fleet status --server https://backup.example:8443 --token-file viewer.token
  floe fleet status --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.fleetClient(server)
			if err != nil {
				// a monitoring plugin that cannot ask says UNKNOWN
				return &exitError{code: 3, err: err}
			}
			st, err := cl.Status(cmd.Context())
			if err != nil {
				return fleetError(err, 3)
			}
			code := fleet.ExitCode(st.Jobs)
			if g.json {
				fleet.SortWorstFirst(st.Jobs)
				if err := writeDocument(map[string]any{"now": st.Now, "summary": fleet.SummaryLine(st.Jobs), "exit_code": code, "jobs": st.Jobs}); err != nil {
					return err
				}
			} else {
				fmt.Println(fleet.SummaryLine(st.Jobs))
				if err := fleet.WriteStatus(os.Stdout, st); err != nil {
					return err
				}
			}
			g.exitCode = code
			return nil
		},
	}

	var host string
	var limit int
	runs := &cobra.Command{
		Use:     "runs [--host HOST]",
		Short:   "The last runs of a host (or of every host), newest first",
		Example: `  floe fleet runs --host web1`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.fleetClient(server)
			if err != nil {
				return err
			}
			rs, err := cl.Runs(cmd.Context(), host, time.Time{}, limit)
			if err != nil {
				return fleetError(err, ExitError)
			}
			if g.json {
				return writeDocument(map[string]any{"runs": rs})
			}
			return fleet.WriteRuns(os.Stdout, rs)
		},
	}
	runs.Flags().StringVar(&host, "host", "", "only this `host`")
	runs.Flags().IntVar(&limit, "limit", 50, "at most this many runs")

	var since time.Duration
	report := &cobra.Command{
		Use:   "report",
		Short: "A summary of the fleet and its recent runs, as text for a daily mail",
		Example: `  floe fleet report | mail -s "floe fleet report" ops@example.com
  floe fleet report --since 168h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.fleetClient(server)
			if err != nil {
				return err
			}
			st, err := cl.Status(cmd.Context())
			if err != nil {
				return fleetError(err, ExitError)
			}
			from := st.Now.Add(-since)
			rs, err := cl.Runs(cmd.Context(), "", from, 10000)
			if err != nil {
				return fleetError(err, ExitError)
			}
			if g.json {
				return writeDocument(map[string]any{"status": st, "runs": rs, "since": from})
			}
			return fleet.WriteReport(os.Stdout, st, rs, from)
		},
	}
	report.Flags().DurationVar(&since, "since", 24*time.Hour, "include runs of this last `duration`")
	c.AddCommand(status, runs, report)
	return c
}
