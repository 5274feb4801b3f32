package server

import (
	"context"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Env is what a front end mounted beside the repository protocol (the
// fleet API, the dashboard) gets of a running server.
type Env struct {
	Root, StateDir string // Root: "" when the repositories are a storage location's prefixes (--storage)
	Tokens         *TokenStore
	Ledger         *Ledger
	// Audit is the server's audit log (nil: none).
	Audit *AuditLog
	// Metrics registers the mounted front end's own collectors.
	Metrics prometheus.Registerer
	// Repos are the repositories served (for storage accounting).
	Repos Repositories
}

// Mount serves routes beside the repository protocol. Every path with one
// of Prefixes goes to Handler; the prefixes must not be repository paths
// (start them with "/_", which no repository name starts with, or use a
// ReservedRepoNames name).
type Mount struct {
	Prefixes []string
	Handler  http.Handler
	// Close, if set, is called when the server stops.
	Close func() error
}

// MountFunc makes the mounted front ends of Run (cmd/floe builds it, so
// that this package does not depend on what it mounts).
type MountFunc func(ctx context.Context, env Env) ([]Mount, error)

// ReservedRepoNames are names a repository cannot take: their paths are
// mounted front ends (the dashboard is /ui).
var ReservedRepoNames = []string{"ui"}

// withMounts routes requests of mounted prefixes to their handlers and
// everything else to the repository protocol.
func withMounts(repos http.Handler, mounts []Mount) http.Handler {
	if len(mounts) == 0 {
		return repos
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, m := range mounts {
			for _, p := range m.Prefixes {
				if r.URL.Path == strings.TrimSuffix(p, "/") || strings.HasPrefix(r.URL.Path, p) {
					m.Handler.ServeHTTP(w, r)
					return
				}
			}
		}
		repos.ServeHTTP(w, r)
	})
}

// Registry is the registry of the metrics, for mounted front ends.
func (m *Metrics) Registry() prometheus.Registerer { return m.reg }

// RepoUsage returns, for every repository whose size the ledger knows
// (it learns it when a server with metrics first opens it, or at the
// first upload after the server starts), what it holds (in whole blocks,
// Charged) and its quota (0: none).
func (l *Ledger) RepoUsage() map[string][2]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.reloadQuotasLocked()
	out := map[string][2]int64{}
	for repo, n := range l.repoUsed {
		out[repo] = [2]int64{n, l.repoQuota[repo]}
	}
	return out
}
