package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/storage/remote"
)

// ServerDir is where `floe agent enroll` keeps the host's credentials for
// the floe server (token and credentials.json, mode 0600). When they are
// there, the daemon takes its leases from the server and reports its runs
// to it.
func ServerDir(cfg *Config) string { return filepath.Join(cfg.StateDir, "server") }

// ServerLeases take a lease from the floe server (its limits of backups
// at once across the fleet, in FIFO order) after the local one (one run
// at a time per repository on this host). The server lease is renewed
// while the run goes on and given back after it.
//
// A server that cannot be reached does not stop a backup that can run
// (its repository may be elsewhere): the run goes on with the local lease
// alone and Warn says so. A server that refuses the host (revoked) stops
// it.
type ServerLeases struct {
	Local  *LocalLeases
	Client *fleet.Client
	Warn   func(job *Job, msg string)
}

func (l *ServerLeases) Lease(ctx context.Context, job *Job, task fleet.Task) (func(), error) {
	releaseLocal, err := l.Local.Lease(ctx, job, task)
	if err != nil {
		return nil, err
	}
	releaseServer, err := l.Client.Acquire(ctx, fleet.LeaseJob(job.Name, task))
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, fleet.ErrRefused) {
			if l.Warn != nil {
				l.Warn(job, "running without a lease of the floe server: "+err.Error())
			}
			return releaseLocal, nil
		}
		releaseLocal()
		return nil, err
	}
	return func() { releaseServer(); releaseLocal() }, nil
}

// ServerReporter logs each run (as LogReporter does) and sends it to the
// floe server. A report the server could not be reached for is kept in
// Pending (JSON lines, at most MaxPending, oldest dropped first) and sent
// before the next one, so that a server down for a while still learns
// every run. A report the server refuses (a revoked host) is not kept.
type ServerReporter struct {
	Log    LogReporter
	Client *fleet.Client
	// Pending is the file of reports not sent yet; empty: none kept.
	Pending string

	mu sync.Mutex
}

// MaxPending bounds the reports kept for a server that cannot be reached.
const MaxPending = 1000

func (r *ServerReporter) Report(ctx context.Context, run fleet.Run) error {
	_ = r.Log.Report(ctx, run)
	r.mu.Lock()
	defer r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	pending, err := r.readPending()
	if err != nil {
		return err
	}
	queue := append(pending, run)
	sent := 0
	var sendErr error
	for _, p := range queue {
		if sendErr = r.Client.Report(ctx, p); sendErr != nil {
			if errors.Is(sendErr, fleet.ErrRefused) {
				sent++ // refused: kept nowhere, it would be refused again
				continue
			}
			break
		}
		sent++
	}
	if err := r.writePending(queue[sent:]); err != nil {
		return errors.Join(sendErr, err)
	}
	if sendErr != nil && sent < len(queue) && r.Pending != "" {
		return fmt.Errorf("%w (kept to send later: %d report(s))", sendErr, len(queue)-sent)
	}
	return sendErr
}

func (r *ServerReporter) readPending() ([]fleet.Run, error) {
	if r.Pending == "" {
		return nil, nil
	}
	b, err := os.ReadFile(r.Pending)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pending reports: %w", err)
	}
	var out []fleet.Run
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var run fleet.Run
		if json.Unmarshal(line, &run) != nil {
			continue // a line cut off by a crash: skipped
		}
		out = append(out, run)
	}
	return out, nil
}

func (r *ServerReporter) writePending(runs []fleet.Run) error {
	if r.Pending == "" {
		return nil
	}
	if len(runs) == 0 {
		if err := os.Remove(r.Pending); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("pending reports: %w", err)
		}
		return nil
	}
	if len(runs) > MaxPending {
		runs = runs[len(runs)-MaxPending:]
	}
	var b bytes.Buffer
	for _, run := range runs {
		line, err := json.Marshal(run)
		if err != nil {
			return err
		}
		b.Write(append(line, '\n'))
	}
	tmp := r.Pending + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("pending reports: %w", err)
	}
	if err := os.Rename(tmp, r.Pending); err != nil {
		return fmt.Errorf("pending reports: %w", err)
	}
	return nil
}

// ServerClient is the fleet API client of the credentials in dir; nil
// (and no error) when the host is not enrolled.
func ServerClient(dir string) (*fleet.Client, error) {
	cr, err := fleet.ReadCredentials(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(filepath.Join(dir, fleet.CredentialsFileName)); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v); chmod 600 it", filepath.Join(dir, fleet.CredentialsFileName), fi.Mode().Perm())
	}
	hc, err := remote.NewHTTPClient(cr.Server, remote.Options{Fingerprint: cr.Fingerprint, KnownServersFile: filepath.Join(dir, KnownServersFileName)})
	if err != nil {
		return nil, err
	}
	// a lease request waits up to Poll on the server; nothing else takes long
	hc.Timeout = 2 * time.Minute
	return &fleet.Client{Base: cr.Server, Token: cr.Token, HTTP: hc, Poll: 30 * time.Second}, nil
}

// WithServer returns the leases and reports of a host: the floe server's
// (after the local lease) when the host is enrolled (ServerDir holds its
// credentials), else local and log alone.
func WithServer(cfg *Config, local *LocalLeases, log LogReporter) (Leaser, Reporter, error) {
	c, err := ServerClient(ServerDir(cfg))
	if err != nil || c == nil {
		return local, log, err
	}
	warn := func(j *Job, msg string) { log.Log.Warn(msg, slog.String("job", j.Name)) }
	return &ServerLeases{Local: local, Client: c, Warn: warn},
		&ServerReporter{Log: log, Client: c, Pending: filepath.Join(ServerDir(cfg), PendingFileName)}, nil
}

// useServer switches the daemon to the floe server's leases and reports
// when the host is enrolled.
func (d *Daemon) useServer() error {
	local, _ := d.Leases.(*LocalLeases)
	if local == nil {
		local = &LocalLeases{Dir: LeaseDir(d.Config)}
	}
	l, r, err := WithServer(d.Config, local, LogReporter{Log: d.Log})
	if err != nil {
		return err
	}
	d.Leases, d.Reports = l, r
	return nil
}

// PendingFileName, in ServerDir, keeps the reports not sent yet.
const PendingFileName = "pending.jsonl"

// KnownServersFileName, in ServerDir, remembers the server's certificate
// trusted at enrollment when no fingerprint was pinned.
const KnownServersFileName = "known_servers"

// Enroll exchanges a one-time enrollment token for this host's
// credentials and keeps them in ServerDir (mode 0600): from then on the
// daemon takes its leases from the server and reports to it. Without a
// fingerprint the server's certificate is trusted on first use (a CA, or
// remembered in ServerDir) and warn says so, ending with trustHint (how to
// check or pin it, in the front end's terms).
func Enroll(ctx context.Context, cfg *Config, server, fingerprint, token string, warn func(string), trustHint string) (fleet.Credentials, error) {
	dir := ServerDir(cfg)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fleet.Credentials{}, fmt.Errorf("enroll: %w", err)
	}
	hc, err := remote.NewHTTPClient(server, remote.Options{Fingerprint: fingerprint, KnownServersFile: filepath.Join(dir, KnownServersFileName), Warn: warn, TrustHint: trustHint})
	if err != nil {
		return fleet.Credentials{}, err
	}
	cr, err := fleet.Enroll(ctx, hc, server, token)
	if err != nil {
		return cr, err
	}
	if cr.Host != cfg.Host {
		warn(fmt.Sprintf("warning: the server enrolled this host as %q, but the agent's host is %q: set host = %q in the agent's configuration, or its reports are refused", cr.Host, cfg.Host, cr.Host))
	}
	cr.Fingerprint = fingerprint
	if err := fleet.WriteCredentials(dir, cr); err != nil {
		return cr, err
	}
	return cr, nil
}
