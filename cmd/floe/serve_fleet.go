package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math"
	"net/http"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/agent"
	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/server/fleetsrv"
	"github.com/floe-backup/floe/internal/ui"
	"github.com/floe-backup/floe/internal/web"
)

// fleetDB opens the fleet database in the server's state directory.
func (f *serveFlags) fleetDB(ctx context.Context) (*fleetsrv.DB, error) {
	state, err := f.state()
	if err != nil {
		return nil, err
	}
	return fleetsrv.OpenDB(ctx, state)
}

// serveFleetFlags are the fleet options of `floe serve`.
type serveFleetFlags struct {
	cfg          fleetsrv.Config
	webhooks     []string
	smtp         string
	mailFrom     string
	mailTo       []string
	smtpUser     string
	alertsEvery  time.Duration
	remind       time.Duration
	silentAfter  time.Duration
	quotaPercent int
	timeScale    float64
	clockStart   string
}

// serveTestClockEnv must be 1 for floe serve's test clock flags.
const serveTestClockEnv = "FLOE_SERVE_TEST_CLOCK"

func addServeFleetFlags(c *cobra.Command) *serveFleetFlags {
	ff := &serveFleetFlags{}
	f := c.Flags()
	f.IntVar(&ff.cfg.Limits.Global, "max-concurrent-backups", 0, "backups of agents running at once in all (`N`; others queue in FIFO order; 0: no limit)")
	f.IntVar(&ff.cfg.Limits.PerRepo, "max-concurrent-backups-per-repo", 0, "backups of agents running at once per repository (`N`; 0: no limit)")
	f.DurationVar(&ff.cfg.LeaseTTL, "lease-ttl", fleetsrv.DefaultLeaseTTL, "a backup lease not renewed for this `duration` expires (the agent died)")
	f.DurationVar(&ff.cfg.Slack, "overdue-slack", fleetsrv.DefaultSlack, "a job is overdue when no success came by its next due time plus this `duration`")
	f.StringSliceVar(&ff.webhooks, "alert-webhook", nil, "POST alerts as JSON to this `URL` (repeatable)")
	f.StringVar(&ff.smtp, "alert-smtp", "", "mail alerts through this SMTP server `host:port` (user: --alert-smtp-user, password: env FLOE_SMTP_PASSWORD)")
	f.StringVar(&ff.mailFrom, "alert-mail-from", "floe@localhost", "sender `address` of alert mails")
	f.StringSliceVar(&ff.mailTo, "alert-mail-to", nil, "recipient `address` of alert mails (repeatable)")
	f.StringVar(&ff.smtpUser, "alert-smtp-user", "", "SMTP `user` (the password comes from FLOE_SMTP_PASSWORD)")
	f.DurationVar(&ff.alertsEvery, "alert-interval", time.Minute, "evaluate alerts every `duration`")
	f.DurationVar(&ff.remind, "alert-reminder", 24*time.Hour, "remind of an alert still active after this `duration` (0: never)")
	f.DurationVar(&ff.silentAfter, "agent-silent-after", 48*time.Hour, "alert when an enrolled agent has not talked to the server for this `duration` (0: never)")
	f.IntVar(&ff.quotaPercent, "alert-quota-percent", 90, "alert when a repository holds more than this `percent` of its quota")
	// for the end-to-end tests: job states and alerts on a clock that
	// runs as the agents' test clock does, only with FLOE_SERVE_TEST_CLOCK=1
	f.Float64Var(&ff.timeScale, "time-scale", 0, "test only: run the fleet's clock this many times faster")
	f.StringVar(&ff.clockStart, "clock-start", "", "test only: start the fleet's clock at this RFC 3339 time")
	_ = f.MarkHidden("time-scale")
	_ = f.MarkHidden("clock-start")
	return ff
}

func (ff *serveFleetFlags) alertConfig() (fleetsrv.AlertConfig, error) {
	ac := fleetsrv.AlertConfig{Every: ff.alertsEvery, Remind: ff.remind,
		Rules: fleet.AlertRules{SilentAfter: ff.silentAfter, QuotaPercent: ff.quotaPercent}}
	for _, u := range ff.webhooks {
		ac.Notifiers = append(ac.Notifiers, &fleetsrv.Webhook{URL: u})
	}
	if ff.smtp != "" {
		if len(ff.mailTo) == 0 {
			return ac, usageError{errors.New("--alert-smtp needs --alert-mail-to")}
		}
		ac.Notifiers = append(ac.Notifiers, &fleetsrv.Mail{Addr: ff.smtp, From: ff.mailFrom, To: ff.mailTo, User: ff.smtpUser, Password: os.Getenv("FLOE_SMTP_PASSWORD")})
	}
	return ac, nil
}

// apply wires the fleet API (and the dashboard) into the server's config.
func (ff *serveFleetFlags) apply(cfg *server.Config) error {
	if ff.cfg.Limits.Global < 0 || ff.cfg.Limits.PerRepo < 0 {
		return usageError{errors.New("--max-concurrent-backups takes 0 (no limit) or more")}
	}
	ac, err := ff.alertConfig()
	if err != nil {
		return err
	}
	ff.cfg.Alerts = ac
	if ff.timeScale != 0 || ff.clockStart != "" {
		if os.Getenv(serveTestClockEnv) != "1" {
			return usageError{fmt.Errorf("--time-scale and --clock-start are for tests: they need %s=1", serveTestClockEnv)}
		}
		start := time.Now()
		if ff.clockStart != "" {
			t, err := time.Parse(time.RFC3339, ff.clockStart)
			if err != nil {
				return usageError{fmt.Errorf("--clock-start: %w", err)}
			}
			start = t
		}
		scale := ff.timeScale
		if scale == 0 {
			scale = 1
		}
		if !(scale > 0) || math.IsInf(scale, 0) {
			return usageError{errors.New("--time-scale must be more than 0")}
		}
		ff.cfg.Now = agent.NewScaledClock(start, scale).Now
	}
	ff.cfg.Log = log.New(os.Stderr, "floe serve: ", 0)
	ff.cfg.NotEnrolledHint = "floe serve host add, then floe agent enroll"
	ff.cfg.UI = func(svc *fleetsrv.Service) http.Handler {
		return web.New(web.Options{Source: svc, Auth: svc.AuthenticateViewer})
	}
	cfg.Mounts = ff.cfg.Mounts()
	return nil
}

func newServeHostCommand(g *globals, sf *serveFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "host",
		Short: "Manage the fleet's hosts (add prints a one-time enrollment token, list, revoke)",
		Example: `  floe serve host add --root /srv/floe --repo fleet web1
  floe serve host list --root /srv/floe
  floe serve host revoke --root /srv/floe web1`,
	}
	var repoName string
	var expires time.Duration
	add := &cobra.Command{
		Use:   "add HOST --repo REPO",
		Short: "Add a host to the fleet; prints a one-time enrollment token for `floe agent enroll`",
		Long: `Add a host to the fleet and print a one-time enrollment token. On the host,
` + "`floe agent enroll https://SERVER:PORT TOKEN`" + ` exchanges it for the host's
credentials: a backup token for REPO, written with mode 0600. The token
works once and expires (--expires). Adding a revoked host again, or one
that never enrolled, issues a new token.`,
		Example: `  floe serve host add --root /srv/floe --repo fleet web1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := sf.state(); err != nil {
				return err
			}
			if repoName == "" {
				return usageError{errors.New("host add needs --repo")}
			}
			if err := server.ValidRepoName(repoName); err != nil {
				return usageError{err}
			}
			if err := fleet.ValidName("host", args[0]); err != nil {
				return usageError{err}
			}
			db, err := sf.fleetDB(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			tok, hash, err := fleetsrv.NewEnrollToken()
			if err != nil {
				return err
			}
			now := time.Now()
			if err := db.AddHost(cmd.Context(), args[0], repoName, hash, now.Add(expires), now); err != nil {
				return err
			}
			if g.json {
				return writeDocument(map[string]any{"host": args[0], "repo": repoName, "enrollment_token": tok, "expires": now.Add(expires).UTC()})
			}
			fmt.Println(tok)
			if !g.quiet {
				fmt.Fprintf(os.Stderr, "host %s added to the fleet (repository %s); on the host run `floe agent enroll https://SERVER:PORT TOKEN` within %s; the token works once\n",
					ui.Sanitize(args[0]), repoName, expires)
			}
			return nil
		},
	}
	add.Flags().StringVar(&repoName, "repo", "", "the `repository` the host backs up into")
	add.Flags().DurationVar(&expires, "expires", 24*time.Hour, "the enrollment token expires after this `duration`")

	list := &cobra.Command{
		Use:     "list",
		Short:   "List the fleet's hosts",
		Example: `  floe serve host list --root /srv/floe`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			db, err := sf.fleetDB(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			hosts, err := db.Hosts(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				if hosts == nil {
					hosts = []fleetsrv.Host{} // [] for scripts, not null
				}
				return writeDocument(map[string]any{"hosts": hosts})
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "HOST\tREPO\tSTATE\tTOKEN\tLAST SEEN")
			for _, h := range hosts {
				st := "enrolled"
				switch {
				case !h.Revoked.IsZero():
					st = "revoked"
				case h.Pending:
					st = "waiting for enrollment"
				}
				seen := "-"
				if !h.LastSeen.IsZero() {
					seen = h.LastSeen.Local().Format("2006-01-02 15:04:05")
				}
				tokID := h.TokenID
				if tokID == "" {
					tokID = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ui.Sanitize(h.Name), h.Repo, st, tokID, seen)
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:     "revoke HOST",
		Short:   "Revoke a host: its token is revoked and its reports refused",
		Example: `  floe serve host revoke --root /srv/floe web1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			db, err := sf.fleetDB(cmd.Context())
			if err != nil {
				return err
			}
			defer db.Close()
			tokID, err := db.RevokeHost(cmd.Context(), args[0], time.Now())
			if err != nil {
				return err
			}
			if tokID != "" {
				ts, err := sf.tokenStore(false)
				if err != nil {
					return err
				}
				if err := ts.Revoke(tokID); err != nil {
					g.warn("host %s: %v", ui.Sanitize(args[0]), err)
				}
			}
			if g.json {
				return writeDocument(map[string]any{"host": args[0], "token": tokID})
			}
			g.say("revoked host %s", ui.Sanitize(args[0]))
			return nil
		},
	}
	c.AddCommand(add, list, revoke)
	return c
}

func newServeAlertCommand(g *globals, sf *serveFlags) *cobra.Command {
	c := &cobra.Command{
		Use:     "alert",
		Short:   "Alert notifications (test)",
		Example: `  floe serve alert test --alert-webhook https://hooks.example/floe`,
	}
	test := &cobra.Command{
		Use:   "test",
		Short: "Send a test notification to the alert targets given as to floe serve",
		Example: `  floe serve alert test --alert-webhook https://hooks.example/floe
  FLOE_SMTP_PASSWORD=... floe serve alert test --alert-smtp mail.example:587 --alert-smtp-user floe --alert-mail-to ops@example.com`,
		Args: cobra.NoArgs,
	}
	ff := addServeFleetFlags(test)
	test.RunE = func(cmd *cobra.Command, args []string) error {
		ac, err := ff.alertConfig()
		if err != nil {
			return err
		}
		if len(ac.Notifiers) == 0 {
			return usageError{errors.New("give a target: --alert-webhook URL or --alert-smtp HOST:PORT with --alert-mail-to")}
		}
		for _, nt := range ac.Notifiers {
			// an answer now, not after the retries of a real alert
			if wh, ok := nt.(*fleetsrv.Webhook); ok {
				wh.Retries = 1
			}
		}
		host, _ := os.Hostname()
		now := time.Now().UTC()
		n := fleet.Notification{AlertKey: fleet.AlertKey{Kind: "test", Host: host}, Event: fleet.EventTest,
			Message: "test notification from floe serve alert test", Since: now, Time: now}
		ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
		defer cancel()
		failed := 0
		for _, nt := range ac.Notifiers {
			if err := nt.Notify(ctx, n); err != nil {
				g.warn("%v", err)
				failed++
			}
		}
		if failed > 0 {
			return fmt.Errorf("%d of %d alert targets failed", failed, len(ac.Notifiers))
		}
		g.say("sent a test notification to %d target(s)", len(ac.Notifiers))
		return nil
	}
	c.AddCommand(test)
	return c
}
