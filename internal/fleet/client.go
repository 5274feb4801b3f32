package fleet

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// APIPrefix starts every route of the fleet API on a floe server. A
// repository name cannot start with '_', so these never clash with
// repositories.
const APIPrefix = "/_fleet/v1/"

// Lease is a permission to run a backup now, granted by the server within
// its limits of concurrent backups. The holder renews it before Expires;
// a lease not renewed (the agent died) expires and frees its slot.
type Lease struct {
	ID      string    `json:"id"`
	Host    string    `json:"host"`
	Repo    string    `json:"repo"`
	Job     string    `json:"job"`
	Granted time.Time `json:"granted"`
	Expires time.Time `json:"expires"`
	// TTLSeconds is how long a renewal extends the lease.
	TTLSeconds int64 `json:"ttl_seconds"`
}

// LeaseRequest asks for a lease. Ticket is empty on the first request and
// the answer's ticket afterwards, which keeps the place in the queue.
type LeaseRequest struct {
	Job         string `json:"job"`
	Ticket      string `json:"ticket,omitempty"`
	WaitSeconds int    `json:"wait_seconds,omitempty"`
}

// LeaseQueued is the answer (202) while the request waits in the queue.
type LeaseQueued struct {
	Ticket   string `json:"ticket"`
	Position int    `json:"position"` // 1: next
}

// Credentials are what enrollment gives a host: a backup token for its
// repository on the server (and, kept by the agent, the server's address
// and pinned certificate fingerprint).
type Credentials struct {
	Host        string `json:"host"`
	Repo        string `json:"repo"`
	Token       string `json:"token"`
	Server      string `json:"server"`
	Fingerprint string `json:"fingerprint,omitempty"`
}

// LeaseJob is the name a lease is taken under: the job, and for a
// verification "JOB:check" (a backup and a verification of one job are
// separate runs).
func LeaseJob(job string, task Task) string {
	if task == "" || task == TaskBackup {
		return job
	}
	return job + ":" + string(task)
}

// EnrollRequest is the body of an enrollment.
type EnrollRequest struct {
	Token string `json:"token"`
}

// StatusAnswer is the fleet's state as the server computed it at Now.
type StatusAnswer struct {
	Now  time.Time   `json:"now"`
	Jobs []JobStatus `json:"jobs"`
}

// ErrRefused is returned (wrapped) when the server refuses the credential
// (unknown, revoked or unenrolled host) or its role.
var ErrRefused = errors.New("the floe server refused")

// APIError is an error answer of the fleet API.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("floe server: %s (HTTP %d)", e.Message, e.Status)
}

// Is makes 401 and 403 answers match ErrRefused.
func (e *APIError) Is(target error) bool {
	return target == ErrRefused && (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden)
}

// Client talks to the fleet API of a floe server.
type Client struct {
	// Base is https://HOST:PORT.
	Base  string
	Token string
	HTTP  *http.Client
	// Poll is how long one lease request waits on the server before it
	// is asked again (default 30 s).
	Poll time.Duration
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) (int, http.Header, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.Base, "/")+path, body)
	if err != nil {
		return 0, nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("fleet API %s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return res.StatusCode, res.Header, fmt.Errorf("fleet API %s %s: %w", method, path, err)
	}
	if res.StatusCode >= 400 {
		var eb struct {
			Error string `json:"error"`
			Code  string `json:"code"`
		}
		if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
			eb.Error = http.StatusText(res.StatusCode)
		}
		return res.StatusCode, res.Header, &APIError{Status: res.StatusCode, Code: eb.Code, Message: eb.Error}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return res.StatusCode, res.Header, fmt.Errorf("fleet API %s %s: bad answer: %w", method, path, err)
		}
	}
	return res.StatusCode, res.Header, nil
}

// RequestLease asks once for a lease, waiting on the server up to wait.
// It returns the lease, or the queue ticket to ask again with.
func (c *Client) RequestLease(ctx context.Context, job, ticket string, wait time.Duration) (*Lease, *LeaseQueued, error) {
	var raw json.RawMessage
	status, _, err := c.do(ctx, http.MethodPost, APIPrefix+"leases", LeaseRequest{Job: job, Ticket: ticket, WaitSeconds: int(wait / time.Second)}, &raw)
	if err != nil {
		return nil, nil, err
	}
	if status == http.StatusAccepted {
		var q LeaseQueued
		if err := json.Unmarshal(raw, &q); err != nil {
			return nil, nil, fmt.Errorf("fleet API: bad lease answer: %w", err)
		}
		return nil, &q, nil
	}
	var l Lease
	if err := json.Unmarshal(raw, &l); err != nil {
		return nil, nil, fmt.Errorf("fleet API: bad lease answer: %w", err)
	}
	return &l, nil, nil
}

// Lease waits (in FIFO order with every other host) until the server
// grants a lease for job, or ctx ends.
func (c *Client) Lease(ctx context.Context, job string) (*Lease, error) {
	poll := c.Poll
	if poll <= 0 {
		poll = 30 * time.Second
	}
	ticket := ""
	for {
		asked := time.Now()
		l, q, err := c.RequestLease(ctx, job, ticket, poll)
		if err != nil {
			return nil, fmt.Errorf("lease for job %s: %w", job, err)
		}
		if l != nil {
			return l, nil
		}
		ticket = q.Ticket
		// The server holds a request up to poll; one that answers
		// "queued" at once (hostile, or broken) must not make the agent
		// ask again in a busy loop.
		if gap := min(poll, time.Second) - time.Since(asked); gap > 0 {
			t := time.NewTimer(gap)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// maxLeaseTTL bounds the lease time a server may announce: far above any
// real one, and small enough that the renewal period computed from it
// cannot overflow into a tiny (busy) or negative one.
const maxLeaseTTL = 30 * 24 * 3600

// Renew extends a lease; an expired one is an error (the slot may have
// gone to another host, but the run in progress may finish).
func (c *Client) Renew(ctx context.Context, id string) (*Lease, error) {
	var l Lease
	if _, _, err := c.do(ctx, http.MethodPost, APIPrefix+"leases/"+url.PathEscape(id)+"/renew", nil, &l); err != nil {
		return nil, fmt.Errorf("renew lease: %w", err)
	}
	return &l, nil
}

// Release gives a lease back.
func (c *Client) Release(ctx context.Context, id string) error {
	if _, _, err := c.do(ctx, http.MethodDelete, APIPrefix+"leases/"+url.PathEscape(id), nil, nil); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}

// Acquire takes a lease for job and renews it in the background until
// the returned release function is called (which gives it back). This is
// what an agent calls before a run.
func (c *Client) Acquire(ctx context.Context, job string) (release func(), err error) {
	l, err := c.Lease(ctx, job)
	if err != nil {
		return nil, err
	}
	every := time.Duration(min(l.TTLSeconds, maxLeaseTTL)) * time.Second / 3
	if every <= 0 {
		every = 10 * time.Second
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
				// a failed renewal is retried at the next tick; the run
				// goes on either way
				_, _ = c.Renew(rctx, l.ID)
			}
		}
	}()
	return func() {
		cancel()
		<-done
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = c.Release(sctx, l.ID)
	}, nil
}

// Report sends the report of a run.
func (c *Client) Report(ctx context.Context, r Run) error {
	if _, _, err := c.do(ctx, http.MethodPost, APIPrefix+"runs", r, nil); err != nil {
		return fmt.Errorf("send run report of job %s: %w", r.Job, err)
	}
	return nil
}

// Status returns every host and job (viewer or admin token).
func (c *Client) Status(ctx context.Context) (StatusAnswer, error) {
	var a StatusAnswer
	if _, _, err := c.do(ctx, http.MethodGet, APIPrefix+"status", nil, &a); err != nil {
		return a, fmt.Errorf("fleet status: %w", err)
	}
	return a, nil
}

// Runs returns the runs of host (all hosts if empty) that ended after
// since, newest first, at most limit (0: the server's default).
func (c *Client) Runs(ctx context.Context, host string, since time.Time, limit int) ([]RunRecord, error) {
	q := url.Values{}
	if host != "" {
		q.Set("host", host)
	}
	if !since.IsZero() {
		q.Set("since", since.UTC().Format(time.RFC3339))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var runs []RunRecord
	if _, _, err := c.do(ctx, http.MethodGet, APIPrefix+"runs?"+q.Encode(), nil, &runs); err != nil {
		return nil, fmt.Errorf("fleet runs: %w", err)
	}
	return runs, nil
}

// Enroll exchanges a one-time enrollment token (from `floe serve host
// add`) for the host's credentials. hc is the client to reach the server
// with (it decides which certificate to trust).
func Enroll(ctx context.Context, hc *http.Client, base, enrollToken string) (Credentials, error) {
	c := &Client{Base: base, HTTP: hc}
	var cr Credentials
	if _, _, err := c.do(ctx, http.MethodPost, APIPrefix+"enroll", EnrollRequest{Token: strings.TrimSpace(enrollToken)}, &cr); err != nil {
		return cr, fmt.Errorf("enroll: %w", err)
	}
	cr.Server = strings.TrimSuffix(base, "/")
	return cr, nil
}

// Credential files written by WriteCredentials in a directory.
const (
	TokenFileName       = "token"
	CredentialsFileName = "credentials.json"
)

// WriteCredentials writes the token (TOKEN file, for --token-file) and the
// credentials (JSON) into dir, both mode 0600, replacing older ones.
func WriteCredentials(dir string, cr Credentials) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("credentials directory: %w", err)
	}
	b, err := json.MarshalIndent(cr, "", "  ")
	if err != nil {
		return err
	}
	for name, data := range map[string][]byte{TokenFileName: []byte(cr.Token + "\n"), CredentialsFileName: append(b, '\n')} {
		if err := writeFile0600(filepath.Join(dir, name), data); err != nil {
			return err
		}
	}
	return nil
}

// ReadCredentials reads what WriteCredentials wrote.
func ReadCredentials(dir string) (Credentials, error) {
	var cr Credentials
	b, err := os.ReadFile(filepath.Join(dir, CredentialsFileName))
	if err != nil {
		return cr, fmt.Errorf("read credentials: %w", err)
	}
	if err := json.Unmarshal(b, &cr); err != nil {
		return cr, fmt.Errorf("credentials %s are damaged: %w", filepath.Join(dir, CredentialsFileName), err)
	}
	return cr, nil
}

func writeFile0600(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
