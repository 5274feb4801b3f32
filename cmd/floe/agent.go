package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/agent"
	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/ui"
)

// agentTestClockEnv must be 1 for the test clock flags: a daemon in
// production never runs on a fast clock by mistake.
const agentTestClockEnv = "FLOE_AGENT_TEST_CLOCK"

type agentFlags struct {
	config     string
	logFormat  string
	timeScale  float64
	clockStart string
}

func newAgentCommand(g *globals) *cobra.Command {
	f := &agentFlags{}
	c := &cobra.Command{
		Use:   "agent [--config FILE]",
		Short: "Run backups on a schedule (the fleet agent)",
		Long: `Run the backups of /etc/floe/agent.toml on their schedules, as a daemon
(systemd starts it: see floe agent install). Each job's start is spread in
its window by a hash of the host and job names, so that a fleet does not
start at once. A run missed while the host was down runs once when the
agent starts; failures are retried with backoff; one job at a time uses a
repository. Every run is logged as one structured line on stdout (text or
--log-format json), which journald keeps; secrets never are.

SIGTERM or SIGINT cancels a running backup cleanly (the next one goes on
from what was stored) and the agent exits 0. SIGHUP (systemctl reload)
reads the configuration again once the runs going on have ended; one with
problems is logged and the old one kept.`,
		Example: `  floe agent config check                 # validate /etc/floe/agent.toml
  floe agent next                         # when each job runs next
  floe agent run system                   # run the job "system" now
  floe agent install && systemctl daemon-reload && systemctl enable --now floe-agent`,
		Args: cobra.NoArgs,
		// not the root's: the agent's repositories are in its
		// configuration, and under systemd there is no $HOME to find a
		// default repository in
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			envDefault(&g.cacheDir, "FLOE_CACHE_DIR")
			return g.startProfiles()
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, clock, log, err := f.setup(cmd)
			if err != nil {
				return err
			}
			return serveAgent(cmd.Context(), g, f, cfg, clock, log)
		},
	}
	pf := c.PersistentFlags()
	pf.StringVar(&f.config, "config", "", "the agent's configuration `FILE` (env FLOE_AGENT_CONFIG; default "+agent.DefaultConfigFile+")")
	pf.StringVar(&f.logFormat, "log-format", "text", "log lines as text (key=value) or json")
	// for the end-to-end tests: a clock that starts at a given time and
	// runs faster, accepted only with FLOE_AGENT_TEST_CLOCK=1
	pf.Float64Var(&f.timeScale, "time-scale", 0, "test only: run the clock this many times faster")
	pf.StringVar(&f.clockStart, "clock-start", "", "test only: start the clock at this RFC 3339 time")
	_ = pf.MarkHidden("time-scale")
	_ = pf.MarkHidden("clock-start")
	c.AddCommand(newAgentRunCommand(g, f), newAgentConfigCommand(g, f), newAgentNextCommand(g, f), newAgentInstallCommand(g, f))
	c.AddCommand(newAgentEnrollCommand(g, f))
	return c
}

// serveAgent runs the daemon; SIGHUP reloads the configuration (runs going
// on end first), or keeps the old one when the new one has problems.
func serveAgent(ctx context.Context, g *globals, f *agentFlags, cfg *agent.Config, clock agent.Clock, log *slog.Logger) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		if cfg.CacheDir == "" {
			cfg.CacheDir = g.cacheDir
		}
		stopCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- agent.NewDaemon(cfg, version, log, clock).Serve(ctx, stopCtx) }()
		var next *agent.Config
		for next == nil {
			select {
			case err := <-done:
				stop()
				return err
			case <-hup:
				c, err := agent.Load(f.configFile())
				if err != nil {
					log.Error("configuration not reloaded: "+ui.Sanitize(err.Error()), slog.String("config", f.configFile()))
					continue
				}
				next = c
			}
		}
		log.Info("reloading the configuration", slog.String("config", f.configFile()))
		stop()
		if err := <-done; err != nil || ctx.Err() != nil {
			return err
		}
		cfg = next
	}
}

func (f *agentFlags) configFile() string {
	if f.config != "" {
		return f.config
	}
	if v := os.Getenv("FLOE_AGENT_CONFIG"); v != "" {
		return v
	}
	return agent.DefaultConfigFile
}

func (f *agentFlags) clock() (agent.Clock, error) {
	if f.timeScale == 0 && f.clockStart == "" {
		return agent.RealClock{}, nil
	}
	if os.Getenv(agentTestClockEnv) != "1" {
		return nil, usageError{fmt.Errorf("--time-scale and --clock-start are for tests: they need %s=1", agentTestClockEnv)}
	}
	start := time.Now()
	if f.clockStart != "" {
		t, err := time.Parse(time.RFC3339, f.clockStart)
		if err != nil {
			return nil, usageError{fmt.Errorf("--clock-start: %w", err)}
		}
		start = t
	}
	scale := f.timeScale
	if scale == 0 {
		scale = 1
	}
	if !(scale > 0) || math.IsInf(scale, 0) {
		return nil, usageError{errors.New("--time-scale must be more than 0")}
	}
	return agent.NewScaledClock(start, scale), nil
}

func (f *agentFlags) logger() (*slog.Logger, error) {
	switch f.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stdout, nil)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stdout, nil)), nil
	}
	return nil, usageError{fmt.Errorf("--log-format %q: use text or json", f.logFormat)}
}

// setup loads the configuration and makes the clock and the logger.
func (f *agentFlags) setup(cmd *cobra.Command) (*agent.Config, agent.Clock, *slog.Logger, error) {
	log, err := f.logger()
	if err != nil {
		return nil, nil, nil, err
	}
	clock, err := f.clock()
	if err != nil {
		return nil, nil, nil, err
	}
	cfg, err := loadAgentConfig(f.configFile())
	if err != nil {
		return nil, nil, nil, err
	}
	return cfg, clock, log, nil
}

// loadAgentConfig loads a configuration; its problems, one a line, are
// the error.
func loadAgentConfig(file string) (*agent.Config, error) {
	cfg, err := agent.Load(file)
	var ce *agent.ConfigError
	if errors.As(err, &ce) {
		for _, p := range ce.Problems {
			fmt.Fprintln(os.Stderr, ui.Sanitize(problemLine(ce.File, p)))
		}
		n := len(ce.Problems)
		return nil, fmt.Errorf("%s: %s", file, ui.Count(n, "problem"))
	}
	return cfg, err
}

// agentConfigCheckJSON prints `agent config check --json`: the jobs of a
// good configuration, or every problem of a bad one (exit 1), for a
// deployment script that checks a configuration before it installs it.
func agentConfigCheckJSON(file string) error {
	type jobOut struct {
		Name       string   `json:"name"`
		Type       string   `json:"type"`
		Repository string   `json:"repository"`
		Paths      []string `json:"paths"`
		Schedule   []string `json:"schedule"`
		Window     string   `json:"window,omitempty"`
	}
	type problemOut struct {
		Line    int    `json:"line,omitempty"`
		Message string `json:"message"`
	}
	jobs, problems := []jobOut{}, []problemOut{}
	cfg, err := agent.Load(file)
	var ce *agent.ConfigError
	switch {
	case errors.As(err, &ce):
		for _, p := range ce.Problems {
			problems = append(problems, problemOut{p.Line, p.Msg})
		}
	case err != nil:
		return err // not a configuration: the JSON error object says why
	default:
		for _, j := range cfg.Jobs {
			typ := j.Type
			if typ == "" {
				typ = agent.JobBackup
			}
			paths := j.Paths
			if paths == nil {
				paths = []string{}
			}
			jobs = append(jobs, jobOut{j.Name, typ, j.Repository, paths, append([]string{}, j.Schedule...), j.Window})
		}
	}
	if err := writeDocument(map[string]any{"file": file, "ok": len(problems) == 0, "jobs": jobs, "problems": problems}); err != nil {
		return err
	}
	if len(problems) > 0 {
		return documentFailed{fmt.Errorf("%s: %s", file, ui.Count(len(problems), "problem"))}
	}
	return nil
}

func problemLine(file string, p agent.Problem) string {
	if p.Line > 0 {
		return file + ":" + strconv.Itoa(p.Line) + ": " + p.Msg
	}
	return file + ": " + p.Msg
}

func newAgentRunCommand(g *globals, f *agentFlags) *cobra.Command {
	var verify bool
	c := &cobra.Command{
		Use:   "run [--verify] JOB",
		Short: "Run one job of the agent now",
		Long: `Run the backup of one job of the agent's configuration now, in this process,
and log it like the daemon does. It waits while another run uses the
job's repository (the daemon's included). --verify runs the job's
verification (check --read-data-subset) instead.

Exit status as floe backup's: 0, 3 when some files could not be read, 10,
11, 12 when the repository cannot be opened, 13 when --verify found damage.`,
		Example: `  floe agent run system            # the job named "system" in /etc/floe/agent.toml
  floe agent run --verify system   # its verification
  floe agent --config ./agent.toml run system`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, clock, log, err := f.setup(cmd)
			if err != nil {
				return err
			}
			if cfg.CacheDir == "" {
				cfg.CacheDir = g.cacheDir
			}
			j, err := cfg.Job(args[0])
			if err != nil {
				return usageError{err}
			}
			if verify && j.Subset == nil {
				return usageError{fmt.Errorf("job %s has no verify_subset", j.Name)}
			}
			r := agent.NewRunner(cfg, version, log, clock)
			local := &agent.LocalLeases{Dir: agent.LeaseDir(cfg), Waiting: func(j *agent.Job) {
				log.Info("waiting for another run on the same repository to end", slog.String("job", j.Name))
			}}
			// an enrolled host asks the floe server for a lease and reports to it
			leases, reporter, err := agent.WithServer(cfg, local, agent.LogReporter{Log: log})
			if err != nil {
				log.Error("floe server not used: " + err.Error())
			}
			task := fleet.TaskBackup
			switch {
			case verify:
				task = fleet.TaskCheck
			case j.Type == agent.JobRetention:
				task = fleet.TaskRetention
			}
			release, err := leases.Lease(cmd.Context(), j, task)
			if err != nil {
				return err
			}
			var rep fleet.Run
			if verify {
				st, serr := agent.State(cfg, j.Name)
				if serr != nil {
					log.Warn(serr.Error(), slog.String("job", j.Name))
				}
				rep, err = r.Verify(cmd.Context(), j, st.Verified)
			} else if task == fleet.TaskRetention {
				rep, err = r.Retention(cmd.Context(), j)
			} else {
				rep, err = r.Backup(cmd.Context(), j)
			}
			release()
			rep.Scheduled = rep.Started
			// the server calls the job overdue after its next scheduled run
			plan := j.Plan
			if verify {
				plan = j.VerifyPlan
			}
			if plan != nil {
				rep.NextDue = plan.Next(rep.Finished)
			}
			if err := reporter.Report(cmd.Context(), rep); err != nil {
				log.Error("report not sent: "+err.Error(), slog.String("job", j.Name))
			}
			if rerr := agent.Record(cfg, rep); rerr != nil {
				log.Warn(rerr.Error(), slog.String("job", j.Name))
			}
			var de *agent.DamageError
			switch {
			case errors.As(err, &de):
				return &exitError{ExitDamage, err}
			case rep.Status == fleet.StatusPartial:
				g.exitCode = ExitPartial
				if err != nil {
					return &exitError{ExitPartial, err}
				}
			}
			return err
		},
	}
	c.Flags().BoolVar(&verify, "verify", false, "run the job's verification instead of its backup")
	return c
}

func newAgentConfigCommand(g *globals, f *agentFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Work with the agent's configuration",
		Example: `  floe agent config check
  floe agent config check /etc/floe/agent.toml.new`,
		Args: cobra.NoArgs,
	}
	c.AddCommand(&cobra.Command{
		Use:   "check [FILE]",
		Short: "Check the agent's configuration",
		Long: `Check the agent's configuration (FILE, or --config, or /etc/floe/agent.toml):
syntax, unknown keys, schedules, windows, credentials and paths. Each
problem is printed as FILE:LINE: message; the exit status is 1 when there
is any.`,
		Example: `  floe agent config check                                # /etc/floe/agent.toml, or --config
  floe agent config check /etc/floe/agent.toml.new && mv /etc/floe/agent.toml.new /etc/floe/agent.toml && systemctl reload floe-agent`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := f.configFile()
			if len(args) == 1 {
				file = args[0]
			}
			if g.json {
				return agentConfigCheckJSON(file)
			}
			cfg, err := loadAgentConfig(file)
			if err != nil {
				return err
			}
			fmt.Printf("%s: ok, %s\n", file, ui.Count(len(cfg.Jobs), "job"))
			for _, j := range cfg.Jobs {
				when := "run by hand only (no schedule)"
				if j.Plan != nil {
					when = "schedule " + fmt.Sprint([]string(j.Schedule))
					if j.Window != "" {
						when += fmt.Sprintf(", window %s (this host starts %s into it)", j.Window, j.Plan.Offset())
					}
				}
				what := fmt.Sprint(j.Paths) + " ->"
				if j.Type == agent.JobRetention {
					what = "retention of"
				}
				fmt.Println(ui.Sanitize(fmt.Sprintf("  %s: %s %s; %s", j.Name, what, j.Repository, when)))
			}
			return nil
		},
	})
	return c
}

func newAgentNextCommand(g *globals, f *agentFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "next",
		Short: "Show when each job of the agent runs next",
		Example: `  floe agent next
  floe agent next --config /etc/floe/agent.toml --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, clock, _, err := f.setup(cmd)
			if err != nil {
				return err
			}
			up, err := agent.Next(cfg, clock.Now())
			if err != nil {
				g.warn("warning: %v", err)
			}
			if g.json {
				return writeDocument(map[string]any{"jobs": up})
			}
			for i, u := range up {
				// in the zone the schedules are in
				loc := cfg.Jobs[i].Location
				line := u.Job + ": "
				switch {
				case u.CatchUp:
					line += "now (a run was missed)"
				case u.Next.IsZero():
					line += "run by hand only"
				default:
					line += u.Next.In(loc).Format("Mon 2006-01-02 15:04:05 MST")
				}
				if !u.VerifyNext.IsZero() {
					line += "; verify " + u.VerifySubset + " " + u.VerifyNext.In(loc).Format("Mon 2006-01-02 15:04 MST")
				}
				if !u.VerifyAfter.IsZero() {
					line += "; verify " + u.VerifySubset + " after the first backup from " + u.VerifyAfter.In(loc).Format("2006-01-02")
				}
				if u.Last != nil {
					line += fmt.Sprintf("; last run %s: %s", u.Last.Started.In(loc).Format("2006-01-02 15:04"), u.Last.Status)
				}
				fmt.Println(ui.Sanitize(line))
			}
			return nil
		},
	}
}

func newAgentInstallCommand(g *globals, f *agentFlags) *cobra.Command {
	var unitDir string
	c := &cobra.Command{
		Use:   "install",
		Short: "Write the agent's systemd unit",
		Long: `Write the systemd unit floe-agent.service into /etc/systemd/system (or
--unit-dir), running this floe binary with the configuration of --config.
Then: systemctl daemon-reload && systemctl enable --now floe-agent.`,
		Example: `  floe agent install && systemctl daemon-reload && systemctl enable --now floe-agent
  floe agent install --config /etc/floe/agent.toml --unit-dir /run/systemd/system`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			bin, err := os.Executable()
			if err != nil {
				return err
			}
			if bin, err = filepath.EvalSymlinks(bin); err != nil {
				return err
			}
			cfg, err := filepath.Abs(f.configFile())
			if err != nil {
				return err
			}
			if _, err := os.Stat(cfg); err != nil {
				g.warn("warning: %s does not exist yet: write it, then check it with `floe agent config check`", cfg)
			}
			path, err := agent.Install(unitDir, bin, cfg)
			if err != nil {
				return err
			}
			g.say("wrote %s\nnext: systemctl daemon-reload && systemctl enable --now %s", path, agent.UnitName)
			return nil
		},
	}
	c.Flags().StringVar(&unitDir, "unit-dir", "/etc/systemd/system", "write the unit into this `DIR`")
	return c
}
