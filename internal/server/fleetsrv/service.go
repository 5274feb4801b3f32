// Package fleetsrv is the server side of the fleet: the fleet API of
// `floe serve` (leases, run reports, enrollment, fleet state), the fleet
// database, alert notifications and metrics per host and job. It is
// mounted beside the repository protocol (server.Mount) and, like the
// server, holds no keys.
package fleetsrv

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/server"
)

// Options configure the fleet service.
type Options struct {
	DB     *DB
	Tokens *server.TokenStore
	Leases *Leases
	// Slack is how late a job may be before it is overdue (default 1 h).
	Slack time.Duration
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
	// Log receives errors that have no client to go to.
	Log *log.Logger
	// Ledger gives repository usage for quota alerts; nil: none.
	Ledger *server.Ledger
	// Audit records enrollments, reports and refused requests; nil: none.
	Audit *server.AuditLog
	// Repos are the repositories served, for the storage accounting of
	// the dashboard; nil: none.
	Repos server.Repositories
	// NotEnrolledHint ends the refusal of a host that is not enrolled:
	// how to enroll it, in the front end's terms (commands); "" for none.
	NotEnrolledHint string
}

// Service serves the fleet API.
type Service struct {
	opts Options
	mux  *http.ServeMux
}

// DefaultSlack is how late a job may be before it is overdue.
const DefaultSlack = time.Hour

// New returns the service.
func New(opts Options) *Service {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Slack <= 0 {
		opts.Slack = DefaultSlack
	}
	if opts.Leases == nil {
		opts.Leases = NewLeases(LeaseLimits{}, 0, opts.Now)
	}
	if opts.Log == nil {
		opts.Log = log.New(io.Discard, "", 0)
	}
	s := &Service{opts: opts, mux: http.NewServeMux()}
	p := strings.TrimSuffix(fleet.APIPrefix, "/")
	s.mux.HandleFunc("POST "+p+"/enroll", s.enroll)
	s.mux.HandleFunc("POST "+p+"/leases", s.host(s.lease))
	s.mux.HandleFunc("POST "+p+"/leases/{id}/renew", s.host(s.renew))
	s.mux.HandleFunc("DELETE "+p+"/leases/{id}", s.host(s.release))
	s.mux.HandleFunc("POST "+p+"/runs", s.host(s.report))
	s.mux.HandleFunc("GET "+p+"/status", s.viewer(s.status))
	s.mux.HandleFunc("GET "+p+"/runs", s.viewer(s.runs))
	s.mux.HandleFunc(p+"/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such fleet API route")
	})
	return s
}

// ServeHTTP serves the fleet API (paths under fleet.APIPrefix).
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// audit writes a record of a fleet request: op is "fleet:" and the route.
func (s *Service) audit(r *http.Request, tok server.Token, op string, status int, result, reason string) {
	if s.opts.Audit == nil {
		return
	}
	s.opts.Audit.Write(server.AuditRecord{Time: s.opts.Now().UTC(), Token: tok.ID, Host: tok.Host, Remote: r.RemoteAddr, Repo: tok.Repo,
		Op: "fleet:" + op, Status: status, Result: result, Reason: reason})
}

// refuse answers a refused request and audits it.
func (s *Service) refuse(w http.ResponseWriter, r *http.Request, tok server.Token, op string, status int, code, msg string) {
	s.audit(r, tok, op, status, "refused", msg)
	writeError(w, status, code, msg)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(server.ErrorBody{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, server.CodeBadRequest, "bad request body: "+err.Error())
		return false
	}
	return true
}

// hostCtx is an authenticated, enrolled host.
type hostCtx struct {
	tok  server.Token
	host Host
}

// host authenticates an enrolled host: its token must be the one its
// enrollment gave, and the host must not be revoked.
func (s *Service) host(fn func(w http.ResponseWriter, r *http.Request, h hostCtx)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		op := r.Method + " " + strings.TrimPrefix(r.URL.Path, fleet.APIPrefix)
		tok, err := s.opts.Tokens.Authenticate(r.Header.Get("Authorization"))
		if err != nil {
			s.refuse(w, r, server.Token{}, op, http.StatusUnauthorized, server.CodeUnauthorized, err.Error())
			return
		}
		h, err := s.opts.DB.Host(r.Context(), tok.Host)
		switch {
		case errors.Is(err, ErrNoHost):
			msg := fmt.Sprintf("host %s is not enrolled in the fleet", tok.Host)
			if s.opts.NotEnrolledHint != "" {
				msg += " (" + s.opts.NotEnrolledHint + ")"
			}
			s.refuse(w, r, tok, op, http.StatusForbidden, server.CodeForbidden, msg)
			return
		case err != nil:
			s.opts.Log.Printf("fleet: %v", err)
			writeError(w, http.StatusInternalServerError, server.CodeInternal, "fleet database error")
			return
		case !h.Revoked.IsZero():
			s.refuse(w, r, tok, op, http.StatusForbidden, server.CodeForbidden, fmt.Sprintf("host %s is revoked", h.Name))
			return
		case h.TokenID != tok.ID:
			s.refuse(w, r, tok, op, http.StatusForbidden, server.CodeForbidden, fmt.Sprintf("token %s is not the enrolled credential of host %s", tok.ID, h.Name))
			return
		}
		_ = s.opts.DB.Seen(r.Context(), h.Name, s.opts.Now())
		fn(w, r, hostCtx{tok: tok, host: h})
	}
}

// viewer authenticates a viewer or admin token.
func (s *Service) viewer(fn http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		op := r.Method + " " + strings.TrimPrefix(r.URL.Path, fleet.APIPrefix)
		tok, err := s.opts.Tokens.Authenticate(r.Header.Get("Authorization"))
		if err != nil {
			s.refuse(w, r, server.Token{}, op, http.StatusUnauthorized, server.CodeUnauthorized, err.Error())
			return
		}
		if tok.Roles&(server.RoleViewer|server.RoleAdmin) == 0 {
			s.refuse(w, r, tok, op, http.StatusForbidden, server.CodeForbidden, fmt.Sprintf("token %s has role %s; the fleet's state needs viewer or admin", tok.ID, tok.Roles))
			return
		}
		fn(w, r)
	}
}

// Enrollment tokens: a prefix (so that one is recognisable) and 256
// random bits; the database keeps their SHA-256.
const enrollPrefix = "floe_enroll_"

// NewEnrollToken returns a one-time enrollment token and its hash.
func NewEnrollToken() (token, hash string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	token = enrollPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return token, HashEnrollToken(token), nil
}

// HashEnrollToken is what the database keeps of an enrollment token.
func HashEnrollToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func (s *Service) enroll(w http.ResponseWriter, r *http.Request) {
	var req fleet.EnrollRequest
	if !readJSON(w, r, &req) {
		return
	}
	if !strings.HasPrefix(req.Token, enrollPrefix) {
		s.refuse(w, r, server.Token{}, "enroll", http.StatusUnauthorized, server.CodeUnauthorized, "not an enrollment token (floe serve host add prints one)")
		return
	}
	now := s.opts.Now()
	hash := HashEnrollToken(req.Token)
	h, err := s.opts.DB.PendingEnrollment(r.Context(), hash, now)
	if errors.Is(err, ErrBadEnrolment) {
		s.refuse(w, r, server.Token{}, "enroll", http.StatusUnauthorized, server.CodeUnauthorized, err.Error())
		return
	}
	if err != nil {
		s.opts.Log.Printf("fleet: %v", err)
		writeError(w, http.StatusInternalServerError, server.CodeInternal, "fleet database error")
		return
	}
	tok, t, err := s.opts.Tokens.Add(h.Repo, h.Name, server.RoleBackup)
	if err != nil {
		s.opts.Log.Printf("fleet: enroll %s: %v", h.Name, err)
		writeError(w, http.StatusInternalServerError, server.CodeInternal, "cannot make the host's token")
		return
	}
	if err := s.opts.DB.CompleteEnrollment(r.Context(), h.Name, hash, t.ID, now); err != nil {
		// another request used the token first: this credential must not live
		_ = s.opts.Tokens.Revoke(t.ID)
		s.refuse(w, r, server.Token{}, "enroll", http.StatusUnauthorized, server.CodeUnauthorized, err.Error())
		return
	}
	s.audit(r, t, "enroll", http.StatusOK, "ok", "")
	writeJSON(w, http.StatusOK, fleet.Credentials{Host: h.Name, Repo: h.Repo, Token: tok})
}

// MaxLeaseWait bounds how long one lease request waits on the server.
const MaxLeaseWait = 60 * time.Second

func (s *Service) lease(w http.ResponseWriter, r *http.Request, h hostCtx) {
	var req fleet.LeaseRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := fleet.ValidName("job", req.Job); err != nil {
		writeError(w, http.StatusBadRequest, server.CodeBadRequest, err.Error())
		return
	}
	wait := min(time.Duration(req.WaitSeconds)*time.Second, MaxLeaseWait)
	deadline := time.Now().Add(wait)
	ticket := req.Ticket
	for {
		changed := s.opts.Leases.Changed()
		le, q, err := s.opts.Leases.Request(ticket, h.host.Name, h.host.Repo, req.Job)
		if err != nil {
			w.Header().Set("Retry-After", "60")
			s.refuse(w, r, h.tok, "lease", http.StatusTooManyRequests, server.CodeBusy, err.Error())
			return
		}
		if le != nil {
			writeJSON(w, http.StatusOK, le)
			return
		}
		ticket = q.Ticket
		left := time.Until(deadline)
		if left <= 0 {
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusAccepted, q)
			return
		}
		// expiries are noticed when someone asks: ask at least every second
		t := time.NewTimer(min(left, time.Second))
		select {
		case <-changed:
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
		t.Stop()
	}
}

func (s *Service) renew(w http.ResponseWriter, r *http.Request, h hostCtx) {
	le, ok := s.opts.Leases.Renew(r.PathValue("id"), h.host.Name)
	if !ok {
		writeError(w, http.StatusGone, "expired", "no such lease: it expired or was released")
		return
	}
	writeJSON(w, http.StatusOK, le)
}

func (s *Service) release(w http.ResponseWriter, r *http.Request, h hostCtx) {
	if !s.opts.Leases.Release(r.PathValue("id"), h.host.Name) {
		writeError(w, http.StatusGone, "expired", "no such lease: it expired or was released")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) report(w http.ResponseWriter, r *http.Request, h hostCtx) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		writeError(w, http.StatusBadRequest, server.CodeBadRequest, "bad run report: "+err.Error())
		return
	}
	rep, err := fleet.DecodeRun(data, h.host.Name)
	if err != nil {
		writeError(w, http.StatusBadRequest, server.CodeBadRequest, err.Error())
		return
	}
	if rep.Host != h.host.Name {
		s.refuse(w, r, h.tok, "report", http.StatusForbidden, server.CodeForbidden, fmt.Sprintf("host %s may not report for host %s", h.host.Name, rep.Host))
		return
	}
	err = s.opts.DB.AddRun(r.Context(), rep)
	if errors.Is(err, ErrDuplicateRun) {
		// sent again after a lost answer: recorded once, and the agent
		// may drop it
		s.audit(r, h.tok, "report", http.StatusOK, "duplicate", "")
		w.WriteHeader(http.StatusOK)
		return
	}
	if err != nil {
		s.opts.Log.Printf("fleet: %v", err)
		writeError(w, http.StatusInternalServerError, server.CodeInternal, "fleet database error")
		return
	}
	s.audit(r, h.tok, "report", http.StatusCreated, "ok", "")
	w.WriteHeader(http.StatusCreated)
}

// Status computes every host's and job's state at now.
func (s *Service) Status(ctx context.Context) (fleet.StatusAnswer, error) {
	now := s.opts.Now().UTC()
	rows, err := s.opts.DB.Jobs(ctx)
	if err != nil {
		return fleet.StatusAnswer{}, err
	}
	out := fleet.StatusAnswer{Now: now, Jobs: make([]fleet.JobStatus, 0, len(rows))}
	for _, row := range rows {
		js := fleet.JobStatus{Host: row.Host.Name, Repo: row.Host.Repo, Job: row.Job, Task: row.Task, LastRun: row.LastRun,
			NextDue: row.NextDue, LastSeen: row.Host.LastSeen, Revoked: !row.Host.Revoked.IsZero()}
		if row.LastSuccess != nil {
			js.LastSuccess = row.LastSuccess.End
			js.AgeSeconds = int64(now.Sub(js.LastSuccess) / time.Second)
			js.Size = row.LastSuccess.BytesRead
		}
		js.Running = row.Job != "" && s.opts.Leases.Running(row.Host.Name, fleet.LeaseJob(row.Job, row.Task))
		js.State = fleet.JobState(fleet.JobInput{LastRun: row.LastRun, LastSuccess: js.LastSuccess, NextDue: row.NextDue, Running: js.Running}, now, s.opts.Slack)
		out.Jobs = append(out.Jobs, js)
	}
	return out, nil
}

func (s *Service) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.Status(r.Context())
	if err != nil {
		s.opts.Log.Printf("fleet: %v", err)
		writeError(w, http.StatusInternalServerError, server.CodeInternal, "fleet database error")
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Service) runs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since time.Time
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			writeError(w, http.StatusBadRequest, server.CodeBadRequest, "since: want RFC 3339 time")
			return
		}
		since = t
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			writeError(w, http.StatusBadRequest, server.CodeBadRequest, "limit: want 1 to 10000")
			return
		}
		limit = n
	}
	runs, err := s.opts.DB.Runs(r.Context(), q.Get("host"), since, limit)
	if err != nil {
		s.opts.Log.Printf("fleet: %v", err)
		writeError(w, http.StatusInternalServerError, server.CodeInternal, "fleet database error")
		return
	}
	writeJSON(w, http.StatusOK, runs)
}

// Runs returns runs that ended after since, of host (all if empty),
// newest first, at most limit.
func (s *Service) Runs(ctx context.Context, host string, since time.Time, limit int) ([]fleet.RunRecord, error) {
	return s.opts.DB.Runs(ctx, host, since, limit)
}

// AuthenticateViewer checks a token for the dashboard's login: a viewer
// or admin token. It returns who it is ("host (role, token id)").
func (s *Service) AuthenticateViewer(token string) (string, error) {
	tok, err := s.opts.Tokens.Authenticate("Bearer " + token)
	if err != nil {
		return "", err
	}
	if tok.Roles&(server.RoleViewer|server.RoleAdmin) == 0 {
		return "", fmt.Errorf("token %s has role %s; the dashboard needs viewer or admin", tok.ID, tok.Roles)
	}
	return fmt.Sprintf("%s (%s)", tok.Host, tok.Roles), nil
}

// maxAccountingRuns bounds the runs the repository and accounting pages
// read (about 3 years of daily backups of 100 hosts).
const maxAccountingRuns = 1_000_000

// repoOf maps each host to its repository.
func (s *Service) repoOf(ctx context.Context) (map[string]string, error) {
	hosts, err := s.opts.DB.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(hosts))
	for _, h := range hosts {
		m[h.Name] = h.Repo
	}
	return m, nil
}

// stored is what repository repo holds, by uploader (zero without Repos).
func (s *Service) stored(ctx context.Context, repo string) (server.StoredByUploader, error) {
	if s.opts.Repos == nil {
		return server.StoredByUploader{}, nil
	}
	return server.Accounting(ctx, s.opts.Repos, repo)
}

// Repos lists the fleet's repositories (those its hosts back up into).
func (s *Service) Repos(ctx context.Context) ([]string, error) {
	m, err := s.repoOf(ctx)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, r := range m {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	sort.Strings(out)
	return out, nil
}

// RepoStats is the repository page: what the server stores (by uploader)
// and what its hosts reported.
func (s *Service) RepoStats(ctx context.Context, repo string) (fleet.RepoStats, error) {
	repoOf, err := s.repoOf(ctx)
	if err != nil {
		return fleet.RepoStats{}, err
	}
	runs, err := s.opts.DB.Runs(ctx, "", time.Time{}, maxAccountingRuns)
	if err != nil {
		return fleet.RepoStats{}, err
	}
	mine := runs[:0]
	for _, r := range runs {
		if repoOf[r.Host] == repo {
			mine = append(mine, r)
		}
	}
	st, err := s.stored(ctx, repo)
	if err != nil {
		return fleet.RepoStats{}, err
	}
	var quota int64
	for _, u := range s.Usage() {
		if u.Repo == repo {
			quota = u.Quota
		}
	}
	return fleet.ComputeRepoStats(repo, st.Bytes, st.Objects, quota, st.ByHost, mine), nil
}

// Accounting is the charge-back table: per month, repository and host.
func (s *Service) Accounting(ctx context.Context) ([]fleet.AccountingRow, error) {
	repoOf, err := s.repoOf(ctx)
	if err != nil {
		return nil, err
	}
	runs, err := s.opts.DB.Runs(ctx, "", time.Time{}, maxAccountingRuns)
	if err != nil {
		return nil, err
	}
	stored := map[string]int64{}
	repos, err := s.Repos(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range repos {
		st, err := s.stored(ctx, r)
		if err != nil {
			s.opts.Log.Printf("fleet: accounting: %v", err)
			continue
		}
		stored[r] = st.Bytes
	}
	return fleet.ComputeAccounting(runs, repoOf, stored), nil
}
