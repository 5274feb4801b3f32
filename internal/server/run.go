package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/floe-backup/floe/internal/netbatch"
)

// Config is what `floe serve` runs.
type Config struct {
	Root string // one subdirectory per repository
	// Storage, instead of Root: repositories that are prefixes of one
	// storage location (floe serve --storage s3:...); StateDir is then
	// required.
	Storage  *PrefixRepos
	StateDir string // tokens, audit log, self-signed certificate; default StateDirFor(Root)
	Listen   string // host:port
	TLSCert  string // certificate and key files; empty: self-signed in StateDir
	TLSKey   string
	TLSNames []string // extra names of a self-signed certificate
	AuditLog string   // default StateDir/audit.log
	// MetricsListen, when set, serves Prometheus metrics over plain HTTP
	// at /metrics on this address (keep it on a private interface).
	MetricsListen string

	// Verifier checks uploads before they become visible (floe serve:
	// FormatVerifier); nil: only the name check.
	Verifier UploadVerifier

	MaxObjectSize      int64
	MaxUploadsPerToken int
	// BufferedIO writes and reads packs through the page cache instead
	// of around it (RootDir.SetBufferedIO).
	BufferedIO bool
	// ShutdownTimeout bounds the wait for requests in progress after ctx
	// ends (SIGTERM); default 30 s.
	ShutdownTimeout time.Duration
	// MetricsReady is called once the metrics listener listens.
	MetricsReady func(addr string)
	// Mounts, when set, adds front ends beside the repository protocol
	// (the fleet API and the dashboard).
	Mounts MountFunc
	// Ready is called once the server listens.
	Ready func(addr, fingerprint string, createdCert bool)
}

// StateDirFor is the default state directory of a root: a dot directory,
// which no repository name can be.
func StateDirFor(root string) string { return filepath.Join(root, ".floe-server") }

// openState makes the state directory and its upload spool and opens the
// audit log (default stateDir/audit.log): what both the TLS server and
// serve --stdio keep there.
func openState(stateDir, auditLog string) (audit *AuditLog, spool string, err error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("state directory: %w", err)
	}
	spool = filepath.Join(stateDir, "spool")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, "", fmt.Errorf("state directory: %w", err)
	}
	if auditLog == "" {
		auditLog = filepath.Join(stateDir, "audit.log")
	}
	if audit, err = OpenAuditLog(auditLog); err != nil {
		return nil, "", err
	}
	return audit, spool, nil
}

// Timeouts of the HTTP server (variables for tests: a slowloris test
// need not wait 10 s). readHeaderTimeout also bounds the TLS handshake.
var (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

const maxHeaderBytes = 64 << 10

// Run serves until ctx ends, then shuts down gracefully: it stops
// accepting, lets requests in progress finish (an upload either completes
// or leaves nothing), and returns nil.
func Run(ctx context.Context, cfg Config) error {
	var repos Repositories
	var sweepRepos func()
	envRoot := ""
	switch {
	case cfg.Storage != nil && cfg.Root != "":
		return errors.New("serve: give --root or --storage, not both")
	case cfg.Storage != nil:
		if cfg.StateDir == "" {
			return errors.New("serve --storage needs --state-dir DIR (tokens, audit log, certificate)")
		}
		repos, sweepRepos = cfg.Storage, cfg.Storage.Sweep
	case cfg.Root != "":
		rd, err := NewRootDir(cfg.Root)
		if err != nil {
			return err
		}
		rd.SetBufferedIO(cfg.BufferedIO)
		if cfg.StateDir == "" {
			cfg.StateDir = StateDirFor(rd.dir)
		}
		repos, sweepRepos, envRoot = rd, rd.Sweep, rd.dir
	default:
		return fmt.Errorf("serve: %w", ErrNoRoot)
	}
	audit, spool, err := openState(cfg.StateDir, cfg.AuditLog)
	if err != nil {
		return err
	}
	defer audit.Close()
	tokens, err := OpenTokenStore(cfg.StateDir)
	if err != nil {
		return err
	}
	cert, fp, created, err := LoadCertificate(cfg.StateDir, cfg.TLSCert, cfg.TLSKey, cfg.TLSNames)
	if err != nil {
		return err
	}
	ledger, err := OpenLedger(cfg.StateDir)
	if err != nil {
		return err
	}
	metrics := NewMetrics()
	metrics.SetLedger(ledger)
	h, err := New(Options{Repos: repos, Tokens: tokens, Audit: audit, SpoolDir: spool, Ledger: ledger, Metrics: metrics, Verifier: cfg.Verifier,
		MaxObjectSize: cfg.MaxObjectSize, MaxUploadsPerToken: cfg.MaxUploadsPerToken})
	if err != nil {
		return err
	}
	var handler http.Handler = h
	if cfg.Mounts != nil {
		mounts, err := cfg.Mounts(ctx, Env{Root: envRoot, StateDir: cfg.StateDir, Tokens: tokens, Ledger: ledger, Audit: audit, Metrics: metrics.Registry(), Repos: repos})
		if err != nil {
			return err
		}
		for _, m := range mounts {
			if m.Close != nil {
				defer m.Close()
			}
		}
		handler = withMounts(h, mounts)
	}
	srv := &http.Server{
		Handler:           handler,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(os.Stderr, "floe serve: ", 0),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 64,
			// room for uploads in flight: a window per round trip caps
			// throughput at window/RTT
			MaxReceiveBufferPerConnection: 32 << 20,
			MaxReceiveBufferPerStream:     16 << 20,
			SendPingTimeout:               time.Minute,
			PingTimeout:                   30 * time.Second,
		},
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("serve: metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metrics.Handler())
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes}
		go msrv.Serve(mln)
		defer msrv.Close()
		if cfg.MetricsReady != nil {
			cfg.MetricsReady(mln.Addr().String())
		}
	}
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr().String(), fp, created)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(netbatch.Listener{Listener: ln}, "", "") }()
	sweep := time.NewTicker(time.Hour)
	defer sweep.Stop()
wait:
	for {
		select {
		case err := <-errc:
			return fmt.Errorf("serve: %w", err)
		case <-sweep.C:
			go sweepRepos()
		case <-ctx.Done():
			break wait
		}
	}
	timeout := cfg.ShutdownTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		return fmt.Errorf("serve: shutdown: %w", err)
	}
	return nil
}
