package fleetsrv

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/server"
)

// Config is the fleet part of `floe serve`.
type Config struct {
	Limits   LeaseLimits
	LeaseTTL time.Duration
	Slack    time.Duration
	Alerts   AlertConfig
	Log      *log.Logger
	// UI, when set, makes the dashboard's handler (mounted at /ui/) from
	// the fleet service.
	UI func(*Service) http.Handler
	// Now is the clock of job states and alerts (nil: time.Now); the
	// end-to-end tests run it faster, as the agents' (leases stay on
	// the wall clock: their TTL is about processes that died).
	Now func() time.Time
	// NotEnrolledHint: see Options.
	NotEnrolledHint string
}

// AlertConfig says when and where alerts go.
type AlertConfig struct {
	Notifiers []Notifier
	// Every is how often alerts are evaluated (default 1 minute).
	Every time.Duration
	// Remind repeats a notification of an alert still active (0: never).
	Remind time.Duration
	Rules  fleet.AlertRules
}

// Mounts returns the server.MountFunc that opens the fleet database in
// the state directory, serves the fleet API (and the dashboard), exports
// the fleet's metrics and evaluates alerts until the server stops.
func (c Config) Mounts() server.MountFunc {
	return func(ctx context.Context, env server.Env) ([]server.Mount, error) {
		db, err := OpenDB(ctx, env.StateDir)
		if err != nil {
			return nil, err
		}
		svc := New(Options{DB: db, Tokens: env.Tokens, Ledger: env.Ledger, Audit: env.Audit, Slack: c.Slack, Log: c.Log, NotEnrolledHint: c.NotEnrolledHint, Now: c.Now, Repos: env.Repos,
			Leases: NewLeases(c.Limits, c.LeaseTTL, nil)})
		if env.Metrics != nil {
			if err := env.Metrics.Register(&collector{svc: svc}); err != nil {
				db.Close()
				return nil, fmt.Errorf("fleet metrics: %w", err)
			}
		}
		actx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			svc.AlertLoop(actx, c.Alerts)
		}()
		mounts := []server.Mount{{Prefixes: []string{fleet.APIPrefix}, Handler: svc, Close: func() error {
			cancel()
			<-done
			return db.Close()
		}}}
		if c.UI != nil {
			mounts = append(mounts, server.Mount{Prefixes: []string{"/ui/"}, Handler: c.UI(svc)})
		}
		return mounts, nil
	}
}

// Usage returns the repositories' usage against their quotas.
func (s *Service) Usage() []fleet.RepoUsage {
	if s.opts.Ledger == nil {
		return nil
	}
	var out []fleet.RepoUsage
	for repo, v := range s.opts.Ledger.RepoUsage() {
		out = append(out, fleet.RepoUsage{Repo: repo, Bytes: v[0], Quota: v[1]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Repo < out[j].Repo })
	return out
}

// EvaluateAlerts runs one evaluation at the service's now: it computes the
// conditions, compares them with the stored active alerts, sends what
// changed and stores the new active alerts. A notification that could
// not be sent is logged; the state still advances (a target down for
// hours would otherwise repeat every alert when it returns; reminders
// repeat active ones).
func (s *Service) EvaluateAlerts(ctx context.Context, cfg AlertConfig) ([]fleet.Notification, error) {
	st, err := s.Status(ctx)
	if err != nil {
		return nil, err
	}
	active, err := s.opts.DB.Alerts(ctx)
	if err != nil {
		return nil, err
	}
	conds := fleet.Conditions(st.Jobs, s.Usage(), cfg.Rules, st.Now)
	next, notes := fleet.EvaluateAlerts(active, conds, st.Now, cfg.Remind)
	for _, n := range notes {
		for _, nt := range cfg.Notifiers {
			if err := nt.Notify(ctx, n); err != nil {
				s.opts.Log.Printf("fleet: alert %s %s: %v", n.Event, n.Kind, err)
			}
		}
	}
	if err := s.opts.DB.SaveAlerts(ctx, next); err != nil {
		return notes, err
	}
	return notes, nil
}

// AlertLoop evaluates alerts every cfg.Every until ctx ends.
func (s *Service) AlertLoop(ctx context.Context, cfg AlertConfig) {
	every := cfg.Every
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.EvaluateAlerts(ctx, cfg); err != nil && ctx.Err() == nil {
				s.opts.Log.Printf("fleet: alerts: %v", err)
			}
		}
	}
}

// collector exports each host's and job's state at scrape time.
type collector struct{ svc *Service }

var (
	descLastSuccess = prometheus.NewDesc("floe_fleet_last_success_timestamp_seconds", "Unix time of the last successful run of a job.", []string{"host", "job"}, nil)
	descState       = prometheus.NewDesc("floe_fleet_job_state", "1 for the job's current state (ok, running, never, overdue, failed).", []string{"host", "job", "state"}, nil)
	descDuration    = prometheus.NewDesc("floe_fleet_last_run_duration_seconds", "Duration of the last run of a job.", []string{"host", "job"}, nil)
	descNew         = prometheus.NewDesc("floe_fleet_last_run_new_bytes", "New bytes of the last run of a job.", []string{"host", "job"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLastSuccess
	ch <- descState
	ch <- descDuration
	ch <- descNew
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.svc.Status(ctx)
	if err != nil {
		c.svc.opts.Log.Printf("fleet metrics: %v", err)
		return
	}
	for _, j := range st.Jobs {
		if j.Job == "" {
			continue
		}
		if !j.LastSuccess.IsZero() {
			ch <- prometheus.MustNewConstMetric(descLastSuccess, prometheus.GaugeValue, float64(j.LastSuccess.UnixMilli())/1000, j.Host, j.Job)
		}
		for _, s := range []fleet.State{fleet.StateOK, fleet.StateRunning, fleet.StateNever, fleet.StateOverdue, fleet.StateFailed} {
			v := 0.0
			if j.State == s {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, j.Host, j.Job, string(s))
		}
		if j.LastRun != nil {
			ch <- prometheus.MustNewConstMetric(descDuration, prometheus.GaugeValue, j.LastRun.End.Sub(j.LastRun.Start).Seconds(), j.Host, j.Job)
			ch <- prometheus.MustNewConstMetric(descNew, prometheus.GaugeValue, float64(j.LastRun.BytesNew), j.Host, j.Job)
		}
	}
}
