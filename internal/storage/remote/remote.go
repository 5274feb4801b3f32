// Package remote is the storage.Backend of a repository served by `floe
// serve` (internal/server): the storage interface over HTTP/2 and TLS, as
// docs/PROTOCOL.md describes. Locations look like
// https://HOST:PORT/REPO. Idempotent requests (all of them: uploads are
// named by their content) are retried with backoff on connection errors,
// 5xx and 429; refusals (401, 403, 413, 422) are clear errors that are not
// retried.
package remote

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/floe-backup/floe/internal/idle"
	"github.com/floe-backup/floe/internal/netbatch"
	"github.com/floe-backup/floe/internal/storage"
)

// ErrCredentialsInURL: a token or password was given in the location; it
// belongs in a token file.
var ErrCredentialsInURL = errors.New("credentials do not go in the URL; put the token in a file")

// deniedError is a refusal of the credential: errors.Is(err,
// storage.ErrDenied) holds for it.
type deniedError struct{ msg string }

func (e deniedError) Error() string        { return e.msg }
func (e deniedError) Is(target error) bool { return target == storage.ErrDenied }

// Errors of refused requests, wrapped with the server's explanation.
var (
	// ErrUnauthorized: no token, or one the server does not know (401).
	ErrUnauthorized error = deniedError{"the server refused the credential"}
	// ErrForbidden: the token's role does not allow the request (403).
	ErrForbidden error = deniedError{"the server refused: the token's role does not allow this"}
	// ErrQuota: the upload would exceed the token's or the repository's
	// quota (507); nothing was stored.
	ErrQuota error = deniedError{"the server refused: quota exceeded"}
	// ErrTooLarge: the object is larger than the server accepts (413).
	ErrTooLarge = errors.New("the server refused: object too large")
	// ErrRejected: the upload's bytes do not match its name or did not
	// verify (422).
	ErrRejected = errors.New("the server rejected the upload")
)

// Options configure a Backend.
type Options struct {
	// Token is the credential (from a token file; never logged).
	Token string
	// Fingerprint pins the server's certificate ("sha256:HEX").
	Fingerprint string
	// KnownServersFile remembers fingerprints trusted on first use; empty:
	// no trust on first use.
	KnownServersFile string
	// Warn prints messages for people (first-use trust).
	Warn func(string)
	// TrustHint ends the message of first-use trust: how to check or pin
	// the fingerprint, in the front end's terms (its commands and flags).
	TrustHint string
	// Retries is how often a failed request is retried (default 6, about
	// 30 s in all); RetryDelay the first delay (default 250 ms), doubled
	// each time up to 8 s.
	Retries    int
	RetryDelay time.Duration
	// SpoolDir holds packs being written (SaveStream) until they are
	// complete and named; default os.TempDir().
	SpoolDir string
	// Connections is how many connections to open to the server (TCP
	// connections for https://, ssh processes for ssh://); requests are
	// spread over them in turn. One HTTP/2 connection multiplexes every
	// request, but it is one TCP stream: on a long fat link with loss,
	// several fill it better. 0: DefaultConnections.
	Connections int
	// SSHCommand is the ssh program and its options for ssh:// locations
	// (default: "ssh").
	SSHCommand []string
	// IdleTimeout is how long the server may keep the client waiting:
	// for an answer's headers once the request is sent (a 1 GiB pack is
	// fsynced before its answer), for each read of an answer's body, and
	// for the server to take more of an upload's body. A request that
	// waits longer fails (and is retried as a broken connection), so
	// that a server that stalls, by accident or on purpose, never hangs
	// a command. 0: DefaultIdleTimeout.
	IdleTimeout time.Duration
}

// DefaultIdleTimeout is the default of Options.IdleTimeout.
const DefaultIdleTimeout = 5 * time.Minute

// DefaultConnections is the default of Options.Connections: the
// connections hint (Connections: 8 requests at once) spread over two
// connections, so that one lost packet does not stall every request.
const DefaultConnections = 2

// MaxConnections bounds Options.Connections.
const MaxConnections = 64

// Backend is a repository on a floe server.
type Backend struct {
	base string // https://host:port, or http://floe-ssh over ssh
	repo string
	loc  string // what Location shows
	opts Options
	// a pool of transports, one connection each, used in turn
	pool []*pooled
	next atomic.Uint64
	// ssh: the connection could not be made at all (ssh refused the
	// login, no floe on the other side): not retried
	fatal func() error
	// verifies: the server said it verifies uploads (Floe-Verifies-Uploads)
	verifies atomic.Bool
	// upload sends pack uploads over HTTP/1.1 (uploadTransport); nil
	// over ssh
	upload       *http.Transport
	uploadClient *http.Client
	// download reads streamed ranges of 1 MiB and more (a restore's
	// packs) over HTTP/1.1 (downloadTransport); nil over ssh
	download       *http.Transport
	downloadClient *http.Client
	// config holds the config's bytes as Open read them until the first
	// LoadWhole of the config (repo.Open's) takes them: one request
	// less before a command can derive its key
	configMu sync.Mutex
	config   []byte
}

var _ storage.Backend = (*Backend)(nil)

// IsURL reports whether loc is meant for a floe server (https://, ssh://,
// and http:// so that it gets a clear error instead of being taken for a
// path).
func IsURL(loc string) bool {
	return strings.HasPrefix(loc, "https://") || strings.HasPrefix(loc, "http://") || IsSSH(loc)
}

// ParseURL splits https://HOST[:PORT]/REPO into the server's base URL,
// host:port and the repository name. Errors never repeat credentials that
// were wrongly put in the URL.
func ParseURL(loc string) (base, hostport, repo string, err error) {
	u, err := url.Parse(loc)
	if err != nil {
		return "", "", "", fmt.Errorf("repository location is not a URL: %v", redactErr(err))
	}
	shown := *u
	shown.User = nil
	shownLoc := redactLocation(shown.String())
	if u.User != nil {
		return "", "", "", fmt.Errorf("repository location %s: %w", shownLoc, ErrCredentialsInURL)
	}
	if u.Scheme != "https" {
		return "", "", "", fmt.Errorf("repository location %s: a floe server is reached with https://HOST:PORT/REPO", shownLoc)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.Host == "" {
		return "", "", "", fmt.Errorf("repository location %s: want https://HOST:PORT/REPO", shownLoc)
	}
	repo = strings.TrimSuffix(strings.TrimPrefix(u.Path, "/"), "/")
	if repo == "" || strings.Contains(repo, "/") || u.RawPath != "" {
		return "", "", "", fmt.Errorf("repository location %s: want https://HOST:PORT/REPO with one repository name", shownLoc)
	}
	hostport = u.Host
	if u.Port() == "" {
		hostport = net.JoinHostPort(u.Hostname(), "443")
	}
	return "https://" + u.Host, hostport, repo, nil
}

// redactLocation is loc for an error message about a location that is
// not of the form wanted: what precedes its last '@' (after a scheme's
// "://") may be a password typed in a wrong form ("user:pw@host/repo"
// without https://, "ssh://user:pw@/path"), so it is not repeated.
func redactLocation(loc string) string {
	at := strings.LastIndex(loc, "@")
	if at < 0 {
		return loc
	}
	start := 0
	if i := strings.Index(loc, "://"); i >= 0 && i < at {
		start = i + len("://")
	}
	return loc[:start] + "***" + loc[at:]
}

// redactErr keeps only the reason of a url.Parse error, which would
// otherwise quote the whole location (a token in it included).
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (o *Options) defaults() error {
	if o.Retries == 0 {
		o.Retries = 6
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 250 * time.Millisecond
	}
	if o.SpoolDir == "" {
		o.SpoolDir = os.TempDir()
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.Connections == 0 {
		o.Connections = DefaultConnections
	}
	if o.Connections < 1 || o.Connections > MaxConnections {
		return fmt.Errorf("connections must be 1 to %d", MaxConnections)
	}
	return nil
}

// http2Config: large windows, since packs are many MiB and a round trip
// per small window would cap throughput.
func http2Config() *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxReceiveBufferPerConnection: 32 << 20,
		MaxReceiveBufferPerStream:     16 << 20,
		// A Transport left at 0 announces 16 KiB, the protocol's
		// minimum: a restore then came as 16 KiB DATA frames, each two
		// TLS records and two write system calls on the server (the
		// 9-byte frame header spills into a record of its own) and a
		// wake-up of this side's read loop. 1 MiB frames are one
		// header per 64 full records.
		MaxReadFrameSize: 1 << 20,
		PingTimeout:      30 * time.Second,
		SendPingTimeout:  time.Minute,
		// one connection per transport: the pool decides how many
		StrictMaxConcurrentRequests: true,
	}
}

// New returns the backend of loc (https:// or ssh://) without contacting
// the server.
func New(loc string, opts Options) (*Backend, error) {
	if IsSSH(loc) {
		return newSSH(loc, opts)
	}
	base, hostport, repo, err := ParseURL(loc)
	if err != nil {
		return nil, err
	}
	if opts.Fingerprint != "" {
		if opts.Fingerprint, err = ParseFingerprint(opts.Fingerprint); err != nil {
			return nil, err
		}
	}
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(hostport)
	tr := &trust{host: host, hostport: hostport, pinned: opts.Fingerprint, knownFile: opts.KnownServersFile, warn: opts.Warn, hint: opts.TrustHint}
	b := &Backend{base: base, repo: repo, loc: base + "/" + repo, opts: opts}
	for range opts.Connections {
		b.addTransport(b.httpsTransport(host, tr))
	}
	b.upload = b.uploadTransport(host, tr)
	b.uploadClient = newClient(b.upload)
	b.download = b.downloadTransport(host, tr)
	b.downloadClient = newClient(b.download)
	return b, nil
}

// uploadMin is the smallest upload body that goes over HTTP/1.1 (see
// uploadTransport): packs; index files, keys and snapshot records stay
// on the multiplexed HTTP/2 connections.
const uploadMin = 1 << 20

// uploadWriteBuffer is the write buffer of the HTTP/1.1 upload
// connections: the body is written to TLS in writes of this size (the
// transport's default, 4 KiB, would make every TLS record a 4 KiB one).
const uploadWriteBuffer = 1 << 20

// uploadTransport returns the transport of pack uploads over https:
// HTTP/1.1 on connections of their own, one per upload in progress: a
// backup runs ParallelSaves at once (one per connection of the pool), a
// copy up to serverUploads (the uploads the server lets one token run at
// once by default; over HTTP/2 more than that were refused with 429 and
// retried). Over HTTP/2 the server
// copied every byte of a pack twice more than over HTTP/1.1 (net/http
// copies each DATA frame into the stream's buffer, and the handler's
// read out of it) and handed each frame between three goroutines; over
// HTTP/1.1 TLS decrypts the body straight into the server's upload
// buffer. The large bench set through floe serve: the server's CPU for
// the initial backup 2.16 s -> 1.85 s (3 runs each, bench/REMOTE.md).
// The client writes no HTTP/2 frames either. Everything else (and every
// request over ssh) stays on the pool's HTTP/2 connections; an upload
// refused before its body is read (role, quota, size) gets its answer
// as over HTTP/2 (the transport reads the answer while it sends).
func (b *Backend) uploadTransport(host string, tr *trust) *http.Transport {
	t := b.http1Transport(host, tr)
	t.WriteBufferSize = uploadWriteBuffer
	t.MaxConnsPerHost = serverUploads
	t.MaxIdleConnsPerHost = serverUploads
	return t
}

// downloadMin is the shortest streamed range (OpenStream) read over
// HTTP/1.1 (see downloadTransport): shorter ones, and every whole-object
// load, stat and list, stay on the pool's HTTP/2 connections.
const downloadMin = 1 << 20

// downloadTransport returns the transport of streamed range reads of
// downloadMin and more over https: HTTP/1.1 on connections of their own,
// one per stream in progress (a restore's workers), kept open between
// them. Over HTTP/2 each DATA frame was copied by the client's read loop
// into the stream's buffer and out of it again by the reader, and handed
// between two goroutines, and the server copied each 1 MiB it sent into
// its frame writer and handed it to its connection's goroutine; over
// HTTP/1.1 the server's TLS encrypts the handler's write as it is, and
// the client's decrypts into the blob loader's buffer (one copy, from the
// TLS record). The large bench set through floe serve on loopback: see
// docs/PERFORMANCE.md, "Restore over HTTP/1.1". Not bounded like the
// uploads: a stream held open while its reader uploads (a copy) must not
// wait for a connection that another stream holds.
func (b *Backend) downloadTransport(host string, tr *trust) *http.Transport {
	t := b.http1Transport(host, tr)
	t.MaxIdleConnsPerHost = serverUploads
	return t
}

// http1Transport is httpsTransport that speaks HTTP/1.1 only.
func (b *Backend) http1Transport(host string, tr *trust) *http.Transport {
	t := b.httpsTransport(host, tr)
	t.HTTP2 = nil
	t.ForceAttemptHTTP2 = false
	// a non-nil empty map: no HTTP/2 on these connections
	t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	t.TLSClientConfig.NextProtos = []string{"http/1.1"}
	return t
}

// pooled is one transport of the pool. Its first request goes alone:
// requests sent together to a transport without a connection would each
// dial one, and the pool would hold more connections than asked for.
type pooled struct {
	tr     *http.Transport
	client *http.Client
	mu     sync.Mutex
	warm   atomic.Bool
}

func (p *pooled) do(hr *http.Request) (*http.Response, error) {
	if p.warm.Load() {
		return p.client.Do(hr)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	resp, err := p.client.Do(hr)
	if err == nil {
		p.warm.Store(true)
	}
	return resp, err
}

func (b *Backend) addTransport(t *http.Transport) {
	b.pool = append(b.pool, &pooled{tr: t, client: newClient(t)})
}

// newClient is a client over t that follows no redirect. The protocol
// has none, and Go's client would send the Authorization header along
// to the same host name on another port or over plain http (it only
// compares host names): a hostile or confused server could have the
// token sent in the clear, or an upload's bytes sent elsewhere. A
// redirect is answered as the error it is (statusError).
func newClient(t http.RoundTripper) *http.Client {
	return &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

// server names the server in messages.
func (b *Backend) server() string { return strings.TrimSuffix(b.loc, "/"+b.repo) }

// pick returns the pool's transports in turn, skipping those that have
// not connected yet while another has: right after Open the others are
// still in their TLS handshakes (warmPool), and a request sent to one of
// them waited for it (1 to 4 ms on loopback, a round trip or two more on
// a far link) while the first connection was idle.
func (b *Backend) pick() *pooled {
	n := uint64(len(b.pool))
	i := b.next.Add(1) - 1
	for k := range n {
		if p := b.pool[(i+k)%n]; p.warm.Load() {
			return p
		}
	}
	return b.pool[i%n]
}

func (b *Backend) httpsTransport(host string, tr *trust) *http.Transport {
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		// beneath TLS: the records of an uploaded pack leave in 256 KiB
		// writes, not one write each (internal/netbatch)
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return netbatch.NewConn(c), nil
		},
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			ServerName: host,
			// The chain is checked by trust.verify instead, which
			// also accepts a pinned or remembered self-signed
			// certificate (InsecureSkipVerify only turns off the
			// built-in check; VerifyConnection always runs).
			InsecureSkipVerify: true,
			VerifyConnection:   tr.verify,
		},
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   20 * time.Second,
		ResponseHeaderTimeout: b.opts.IdleTimeout, // a 1 GiB pack is fsynced before the answer
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   1,
		HTTP2:                 http2Config(),
	}
}

// openConfigMax bounds the config that Open reads and keeps (a config is
// a few hundred bytes; a larger one is left to the caller's own limit).
const openConfigMax = 64 << 10

// Open returns the backend of an existing repository: it reads the
// config, so that a missing repository, a wrong token or an untrusted
// server show at once, and keeps its bytes for the first LoadWhole of
// the config (a HEAD before, and repo.Open's GET after it: one round
// trip more before the key could be derived).
func Open(ctx context.Context, loc string, opts Options) (*Backend, error) {
	b, err := New(loc, opts)
	if err != nil {
		return nil, err
	}
	cfg, err := b.LoadWhole(ctx, storage.Handle{Type: storage.Config}, openConfigMax)
	if err == nil {
		b.config = cfg
	}
	if err != nil && !errors.Is(err, storage.ErrTooLarge) {
		b.Close()
		if errors.Is(err, storage.ErrNotExist) {
			return nil, fmt.Errorf("no repository at %s: %w", b.Location(), storage.ErrNotExist)
		}
		return nil, fmt.Errorf("open repository at %s: %w", b.Location(), err)
	}
	b.warmPool()
	return b, nil
}

// warmPool has the other connections of the pool connect (TLS handshake,
// or start ssh) now, all at once, instead of each on its first request,
// which then waits for it: a command's first parallel loads (index
// files, snapshots) would otherwise pay one more round trip or two. It
// runs after the first request succeeded, so that a server trusted on
// first use is remembered before the others check its certificate. Each
// sends a HEAD of the config; a failure is left to the requests that
// follow (they retry).
func (b *Backend) warmPool() {
	for _, p := range b.pool {
		if p.warm.Load() {
			continue
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			hr, err := http.NewRequestWithContext(ctx, http.MethodHead, b.base+b.objectPath(storage.Handle{Type: storage.Config}), nil)
			if err != nil {
				return
			}
			if b.opts.Token != "" {
				hr.Header.Set("Authorization", "Bearer "+b.opts.Token)
			}
			if resp, err := p.do(hr); err == nil {
				resp.Body.Close()
			}
		}()
	}
}

// Create asks the server to create the repository (admin role).
func Create(ctx context.Context, loc string, opts Options) (*Backend, error) {
	b, err := New(loc, opts)
	if err != nil {
		return nil, err
	}
	res, err := b.do(ctx, request{method: http.MethodPut, path: "/" + b.repo + "/"})
	if err == nil && res.status != http.StatusCreated {
		err = b.statusError(res)
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("create repository at %s: %w", b.Location(), err)
	}
	return b, nil
}

// Location implements storage.Backend.
func (b *Backend) Location() string { return b.loc }

// Close implements storage.Backend.
func (b *Backend) Close() error {
	for _, p := range b.pool {
		p.tr.CloseIdleConnections()
	}
	if b.upload != nil {
		b.upload.CloseIdleConnections()
	}
	if b.download != nil {
		b.download.CloseIdleConnections()
	}
	return nil
}

func (b *Backend) objectPath(h storage.Handle) string {
	if h.Type == storage.Config {
		return "/" + b.repo + "/config"
	}
	return "/" + b.repo + "/" + string(h.Type) + "/" + h.Name
}

type request struct {
	method string
	path   string
	query  string
	// body returns a fresh body for each attempt (nil: none)
	body func() (io.ReadCloser, error)
	size int64
	// maxBody, if > 0, bounds a successful answer: a longer one is
	// refused (errBodyTooLarge) before it is read
	maxBody int64
	// exact: the caller asked for exactly maxBody bytes (a range): the
	// buffer is sized from the Content-Length at once
	exact bool
	// stream: a 200 answer's body is not read but handed back in
	// response.body, for the caller to read and close (OpenStream)
	stream bool
	// bulk: a stream of downloadMin or more, read over HTTP/1.1
	// (OpenStream sets it only where there is a downloadClient)
	bulk bool
}

// errBodyTooLarge: a successful answer longer than request.maxBody.
type errBodyTooLarge struct{ size int64 }

func (e errBodyTooLarge) Error() string { return fmt.Sprintf("answer of %d bytes", e.size) }

type response struct {
	status  int
	header  http.Header
	data    []byte
	retried bool // an earlier attempt may have reached the server
	// body: the unread body of a 200 answer to a request.stream
	body io.ReadCloser
	size int64 // its Content-Length (-1: not told)
}

// maxListAnswer bounds a list answer: a line is about 100 bytes, so 1
// GiB is some ten million objects (a repository of 160 TiB in packs of
// 16 MiB). A server that sends more is refused, not read into memory
// without end. A variable for tests.
var maxListAnswer int64 = 1 << 30

// maxErrorBody bounds what is read of an error answer.
const maxErrorBody = 64 << 10

// maxPrealloc bounds what an answer's announced Content-Length may make
// the client allocate before its bytes arrive, where the caller did not
// ask for exactly that length (lists, whole objects).
const maxPrealloc = 16 << 20

// do sends req, retrying connection errors, 5xx and 429 with backoff,
// and reads the whole answer.
func (b *Backend) do(ctx context.Context, req request) (response, error) {
	var lastErr error
	delay := b.opts.RetryDelay
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return response{}, err
		}
		res, err := b.once(ctx, req)
		res.retried = attempt > 0
		retry := false
		switch {
		case err != nil:
			var tooLarge errBodyTooLarge
			if ctx.Err() != nil || errors.Is(err, ErrFingerprint) || isTLSTrustError(err) || errors.As(err, &tooLarge) {
				return res, err
			}
			if b.fatal != nil {
				if ferr := b.fatal(); ferr != nil {
					return res, ferr
				}
			}
			retry, lastErr = true, fmt.Errorf("server %s unreachable: %w", b.server(), err)
		case res.status >= 500 && res.status != http.StatusInsufficientStorage || res.status == http.StatusTooManyRequests:
			retry, lastErr = true, b.statusError(res)
		}
		if !retry {
			return res, nil
		}
		if attempt >= b.opts.Retries {
			return res, fmt.Errorf("%w (gave up after %d attempts)", lastErr, attempt+1)
		}
		wait := delay + rand.N(delay/2+1)
		if ra, perr := strconv.Atoi(res.header.Get("Retry-After")); perr == nil && ra > 0 && ra <= 10 {
			wait = max(wait, time.Duration(ra)*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, 8*time.Second)
	}
}

func isTLSTrustError(err error) bool {
	var ce *tls.CertificateVerificationError
	return errors.As(err, &ce)
}

func (b *Backend) once(ctx context.Context, req request) (_ response, err error) {
	u := b.base + req.path
	if req.query != "" {
		u += "?" + req.query
	}
	// the watchdog cancels the request when the server keeps it waiting
	// longer than the idle timeout; a streamed body holds it until closed
	ctx, cancel := context.WithCancel(ctx)
	wd := idle.New(b.opts.IdleTimeout, cancel)
	streaming := false
	defer func() {
		if !streaming {
			wd.Stop()
		}
		if err != nil && wd.Fired() {
			err = wd.Err()
		}
	}()
	var body io.ReadCloser
	if req.body != nil {
		if body, err = req.body(); err != nil {
			return response{}, err
		}
		body = wd.RequestBody(body)
	}
	hr, err := http.NewRequestWithContext(ctx, req.method, u, body)
	if err != nil {
		if body != nil {
			body.Close()
		}
		return response{}, err
	}
	if req.body != nil {
		hr.ContentLength = req.size
		hr.GetBody = func() (io.ReadCloser, error) {
			rc, err := req.body()
			if err != nil {
				return nil, err
			}
			return wd.RequestBody(rc), nil
		}
		if req.size == 0 {
			hr.Body = http.NoBody
		}
	}
	if b.opts.Token != "" {
		hr.Header.Set("Authorization", "Bearer "+b.opts.Token)
	}
	var resp *http.Response
	if b.uploadClient != nil && req.method == http.MethodPut && req.size >= uploadMin {
		// An upload is idempotent (named by its bytes): marked so (the
		// key itself is not sent), the transport sends it again at
		// once on another connection when a kept-alive one turns out
		// closed, before any byte of it was written.
		hr.Header["Idempotency-Key"] = []string{}
		resp, err = b.uploadClient.Do(hr)
	} else if req.bulk {
		resp, err = b.downloadClient.Do(hr)
	} else {
		resp, err = b.pick().do(hr)
	}
	wd.RequestDone()
	if err != nil {
		return response{}, err
	}
	resp.Body = wd.ResponseBody(resp.Body)
	res := response{status: resp.StatusCode, header: resp.Header}
	b.verifies.Store(resp.Header.Get("Floe-Verifies-Uploads") == "1")
	if req.stream && resp.StatusCode == http.StatusOK {
		res.body, res.size = resp.Body, resp.ContentLength
		streaming = true // closing the body stops the watchdog
		return res, nil
	}
	defer resp.Body.Close()
	limit := int64(maxErrorBody)
	if resp.StatusCode < 300 {
		limit = 1 << 62
		if req.maxBody > 0 {
			if resp.ContentLength > req.maxBody {
				return res, errBodyTooLarge{resp.ContentLength}
			}
			// without a Content-Length: one byte more tells
			limit = req.maxBody + 1
		}
	}
	// bytes.MinRead more than the answer: bytes.Buffer.ReadFrom grows a
	// buffer with less room than that left before it reads on, and the
	// last read (the one that finds EOF) would copy the whole answer into
	// a buffer twice its size. The Content-Length is the server's word,
	// not bytes received: unless the caller asked for exactly that many
	// bytes (a range), at most maxPrealloc is allocated on it, and the
	// rest once that much has come. One header of a hostile server
	// crashed the client (makeslice: cap out of range), and under a
	// maxBody (a list's 1 GiB, a whole pack's 4 GiB) still made it
	// allocate the bound before a byte arrived.
	want := max(0, min(resp.ContentLength, limit))
	prealloc := want
	if !req.exact {
		prealloc = min(prealloc, maxPrealloc)
	}
	buf := bytes.NewBuffer(make([]byte, 0, prealloc+bytes.MinRead))
	rest := io.LimitReader(resp.Body, limit)
	if want > prealloc {
		if _, err := io.CopyN(buf, rest, prealloc); err != nil && err != io.EOF {
			return res, fmt.Errorf("reading the answer: %w", err)
		}
		if int64(buf.Len()) == prealloc {
			buf.Grow(int(want-prealloc) + bytes.MinRead)
		}
	}
	if _, err := io.Copy(buf, rest); err != nil {
		return res, fmt.Errorf("reading the answer: %w", err)
	}
	if resp.ContentLength >= 0 && resp.StatusCode < 300 && int64(buf.Len()) != resp.ContentLength {
		return res, fmt.Errorf("answer cut short: %d of %d bytes", buf.Len(), resp.ContentLength)
	}
	if req.maxBody > 0 && resp.StatusCode < 300 && int64(buf.Len()) > req.maxBody {
		return res, errBodyTooLarge{int64(buf.Len())}
	}
	res.data = buf.Bytes()
	return res, nil
}

// statusError turns an unexpected answer into an error wrapping the
// storage error it stands for, with the server's explanation.
func (b *Backend) statusError(res response) error {
	var eb struct {
		Error string `json:"error"`
	}
	msg := ""
	if json.Unmarshal(res.data, &eb) == nil {
		msg = eb.Error
	}
	if msg == "" && res.header != nil {
		msg = res.header.Get("Floe-Error") // answers to HEAD have no body
	}
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	var base error
	switch res.status {
	case http.StatusBadRequest:
		base = storage.ErrInvalid
	case http.StatusUnauthorized:
		base = ErrUnauthorized
	case http.StatusForbidden:
		base = ErrForbidden
	case http.StatusNotFound:
		return storage.ErrNotExist
	case http.StatusConflict:
		return storage.ErrExist
	case http.StatusRequestEntityTooLarge:
		base = ErrTooLarge
	case http.StatusRequestedRangeNotSatisfiable:
		base = io.ErrUnexpectedEOF
	case http.StatusUnprocessableEntity:
		base = ErrRejected
	case http.StatusInsufficientStorage:
		base = ErrQuota
	default:
		if res.status >= 300 && res.status < 400 {
			// the Location is the server's claim, shown quoted and
			// cut (never followed, see newClient)
			return fmt.Errorf("server %s answered %d, a redirect to %s, which floe does not follow (the location must name the server itself)",
				b.server(), res.status, strconv.Quote(shownLocation(res.header.Get("Location"))))
		}
		if msg == "" {
			msg = http.StatusText(res.status)
		}
		return fmt.Errorf("server %s answered %d: %s", b.server(), res.status, msg)
	}
	if msg == "" {
		return base
	}
	return fmt.Errorf("%w (HTTP %d: %s)", base, res.status, msg)
}

func bytesBody(data []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
}

// Save implements storage.Backend. A retried upload that finds an
// identical object already there succeeded (its first attempt did).
func (b *Backend) Save(ctx context.Context, h storage.Handle, data []byte) error {
	return b.put(ctx, h, bytesBody(data), int64(len(data)))
}

func (b *Backend) put(ctx context.Context, h storage.Handle, body func() (io.ReadCloser, error), size int64) error {
	if err := h.Validate(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	res, err := b.do(ctx, request{method: http.MethodPut, path: b.objectPath(h), body: body, size: size})
	if err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	switch {
	case res.status == http.StatusCreated:
		return nil
	case res.status == http.StatusOK && res.header.Get("Floe-Result") == "identical":
		if res.retried {
			return nil
		}
		return fmt.Errorf("save %s: %w", h, storage.ErrExist)
	}
	return fmt.Errorf("save %s: %w", h, b.statusError(res))
}

// rangeQuery is the query of a GET of length bytes from offset (0: to
// the end), as docs/PROTOCOL.md has it.
func rangeQuery(offset, length int64) (string, error) {
	if offset < 0 || length < 0 {
		return "", fmt.Errorf("%w: negative range offset %d length %d", storage.ErrInvalid, offset, length)
	}
	q := url.Values{}
	if offset > 0 {
		q.Set("offset", strconv.FormatInt(offset, 10))
	}
	if length > 0 {
		q.Set("length", strconv.FormatInt(length, 10))
	}
	return q.Encode(), nil
}

// Load implements storage.Backend.
func (b *Backend) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	q, err := rangeQuery(offset, length)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	// a range's answer is bounded by its length: a server that sends
	// more (or without end) is refused after length+1 bytes
	res, err := b.do(ctx, request{method: http.MethodGet, path: b.objectPath(h), query: q, maxBody: length, exact: length > 0})
	var tooLarge errBodyTooLarge
	if errors.As(err, &tooLarge) {
		return nil, fmt.Errorf("load %s: server sent more than the %d-byte range (%s)", h, length, tooLarge)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	if res.status != http.StatusOK {
		return nil, fmt.Errorf("load %s: %w", h, b.statusError(res))
	}
	if length > 0 && int64(len(res.data)) != length {
		return nil, fmt.Errorf("load %s: server sent %d bytes for a %d-byte range", h, len(res.data), length)
	}
	return res.data, nil
}

var _ storage.RangeStreamer = (*Backend)(nil)

// OpenStream returns length bytes of h from offset (to its end when
// length is 0) as the body of one GET, read as it arrives: a restore
// (repo.BlobLoader.LoadRange) then reads a pack with one request,
// decrypts each blob as soon as it is in, and holds a blob at a time.
// Load holds the whole answer first, in a fresh buffer per request: on a
// restore of many small files through a server that was the fresh
// memory's page faults, the collector, one more copy of every blob, and
// no decoding until a 4 MiB range was in. Opening the stream is retried
// as any request; a body that breaks off is not resumed (the caller
// loads the rest by other means) and one shorter than the server
// announced ends in io.ErrUnexpectedEOF.
func (b *Backend) OpenStream(ctx context.Context, h storage.Handle, offset, length int64) (io.ReadCloser, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("open %s: %w", h, err)
	}
	q, err := rangeQuery(offset, length)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", h, err)
	}
	bulk := length >= downloadMin && b.downloadClient != nil
	res, err := b.do(ctx, request{method: http.MethodGet, path: b.objectPath(h), query: q, stream: true, bulk: bulk})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", h, err)
	}
	if res.body == nil {
		return nil, fmt.Errorf("open %s: %w", h, b.statusError(res))
	}
	if length > 0 && res.size != length {
		res.body.Close()
		return nil, fmt.Errorf("open %s: server announced %d bytes for a %d-byte range", h, res.size, length)
	}
	if bulk {
		// HTTP/1.1: nothing to give back but TCP's window, and TLS
		// holds a record already; a buffer would copy most bytes once
		// more
		return &streamBody{rc: res.body, r: res.body, left: res.size, h: h}, nil
	}
	br := streamBufs.Get().(*bufio.Reader)
	br.Reset(res.body)
	return &streamBody{rc: res.body, r: br, br: br, left: res.size, h: h}, nil
}

// streamBufs hold the bodies of OpenStream's answers over HTTP/2. A reader takes a
// blob at a time, tens of KiB on a tree of small files, and HTTP/2 gives
// back the window a body's reads free as soon as 4 KiB are free: read
// straight from the body, every blob sent the server a WINDOW_UPDATE
// frame (a TLS record it reads and decrypts, a wake-up), which cost it
// more CPU than sending the data. Read through 256 KiB, the window goes
// back a few times per MiB.
var streamBufs = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, streamBuf) }}

const streamBuf = 256 << 10

// errTooLong: a streamed answer went on beyond its announced length.
var errTooLong = errors.New("the server sent more than it announced")

// streamBody is OpenStream's body: an end before the announced length is
// an error, not an EOF.
type streamBody struct {
	rc   io.ReadCloser
	r    io.Reader     // br, or rc itself over HTTP/1.1; nil once closed
	br   *bufio.Reader // streamBufs' (nil over HTTP/1.1)
	left int64         // bytes still announced; -1: no length was announced
	h    storage.Handle
}

func (s *streamBody) Read(p []byte) (int, error) {
	if s.r == nil {
		return 0, fmt.Errorf("load %s: read after close", s.h)
	}
	n, err := s.r.Read(p)
	if s.left >= 0 {
		s.left -= int64(n)
		switch {
		case s.left < 0:
			err = errTooLong
		case err == io.EOF && s.left > 0:
			err = fmt.Errorf("answer cut short, %d bytes missing: %w", s.left, io.ErrUnexpectedEOF)
		}
	}
	if err != nil && err != io.EOF {
		err = fmt.Errorf("load %s: %w", s.h, err)
	}
	return n, err
}

func (s *streamBody) Close() error {
	if s.r == nil {
		return nil
	}
	if s.br != nil {
		s.br.Reset(nil)
		streamBufs.Put(s.br)
		s.br = nil
	}
	s.r = nil
	return s.rc.Close()
}

// LoadWhole implements storage.WholeLoader: one GET instead of a HEAD
// for the size and a GET of that length; an answer whose Content-Length
// is above limit is refused before its body is read.
func (b *Backend) LoadWhole(ctx context.Context, h storage.Handle, limit int64) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	if h.Type == storage.Config {
		b.configMu.Lock()
		data := b.config
		b.config = nil
		b.configMu.Unlock()
		if data != nil && int64(len(data)) <= limit {
			return data, nil
		}
	}
	if limit <= 0 {
		// only an empty object fits: the size says so
		fi, err := b.Stat(ctx, h)
		if err != nil {
			return nil, err
		}
		if fi.Size > 0 {
			return nil, storage.TooLargeError(h, fi.Size, limit)
		}
		return []byte{}, nil
	}
	res, err := b.do(ctx, request{method: http.MethodGet, path: b.objectPath(h), maxBody: limit})
	var tooLarge errBodyTooLarge
	if errors.As(err, &tooLarge) {
		return nil, storage.TooLargeError(h, tooLarge.size, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	if res.status != http.StatusOK {
		return nil, fmt.Errorf("load %s: %w", h, b.statusError(res))
	}
	if res.data == nil {
		return []byte{}, nil
	}
	return res.data, nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, h storage.Handle) (storage.FileInfo, error) {
	if err := h.Validate(); err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	res, err := b.do(ctx, request{method: http.MethodHead, path: b.objectPath(h)})
	if err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	if res.status != http.StatusOK {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, b.statusError(res))
	}
	size, err := strconv.ParseInt(res.header.Get("Floe-Size"), 10, 64)
	if err != nil || size < 0 {
		return storage.FileInfo{}, fmt.Errorf("stat %s: server sent no valid size", h)
	}
	return storage.FileInfo{Name: h.Name, Size: size}, nil
}

// List implements storage.Backend. The whole list is read before fn is
// called, so that a retried request never reports a name twice.
func (b *Backend) List(ctx context.Context, t storage.FileType, fn func(storage.FileInfo) error) error {
	if err := storage.ValidateListType(t); err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	res, err := b.do(ctx, request{method: http.MethodGet, path: "/" + b.repo + "/" + string(t) + "/", maxBody: maxListAnswer})
	if err != nil {
		return fmt.Errorf("list %s: %w", t, listTooLong(err))
	}
	if res.status != http.StatusOK {
		return fmt.Errorf("list %s: %w", t, b.statusError(res))
	}
	infos, err := parseList(t, res.data)
	if err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	return storage.ListEach(ctx, t, infos, fn)
}

// Remove implements storage.Backend. A retried remove that finds the
// object gone succeeded (its first attempt did).
func (b *Backend) Remove(ctx context.Context, h storage.Handle) error {
	if err := h.Validate(); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	res, err := b.do(ctx, request{method: http.MethodDelete, path: b.objectPath(h)})
	if err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	switch {
	case res.status == http.StatusNoContent || res.status == http.StatusOK:
		return nil
	case res.status == http.StatusNotFound && res.retried:
		return nil
	}
	return fmt.Errorf("remove %s: %w", h, b.statusError(res))
}

// listLine is one line of a list answer.
type listLine struct {
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	End      bool   `json:"end"`
	Error    string `json:"error"`
	Token    string `json:"token"`
	Host     string `json:"host"`
	Received string `json:"received"`
}

// parseList decodes a list answer (JSON lines ending with {"end":true}).
// Names that are not valid object names are skipped, as a directory's
// strays are: a hostile server cannot inject a path.
func parseList(t storage.FileType, data []byte) ([]storage.FileInfo, error) {
	infos, _, err := parseListOrigins(t, data)
	return infos, err
}

// parseListOrigins is parseList that also returns the origins a list
// with ?uploads=1 carries.
func parseListOrigins(t storage.FileType, data []byte) ([]storage.FileInfo, map[string]storage.Origin, error) {
	var infos []storage.FileInfo
	origins := map[string]storage.Origin{}
	dec := json.NewDecoder(bytes.NewReader(data))
	for dec.More() {
		var e listLine
		if err := dec.Decode(&e); err != nil {
			return nil, nil, fmt.Errorf("bad answer from the server: %w", err)
		}
		switch {
		case e.Error != "":
			return nil, nil, fmt.Errorf("server: %s", e.Error)
		case e.End:
			return infos, origins, nil
		default:
			if (storage.Handle{Type: t, Name: e.Name}).Validate() != nil || e.Size < 0 {
				continue
			}
			infos = append(infos, storage.FileInfo{Name: e.Name, Size: e.Size})
			if e.Received != "" {
				at, err := time.Parse(time.RFC3339Nano, e.Received)
				if err != nil || at.IsZero() {
					continue
				}
				origins[e.Name] = storage.Origin{Host: e.Host, Credential: e.Token, Received: at}
			}
		}
	}
	return nil, nil, errors.New("the server's answer was cut short")
}

// Origins implements storage.Origins: the server records which credential
// uploaded each object and when (roles restore and admin may read it).
func (b *Backend) Origins(ctx context.Context, t storage.FileType) (map[string]storage.Origin, error) {
	if err := storage.ValidateListType(t); err != nil {
		return nil, fmt.Errorf("origins of %s: %w", t, err)
	}
	res, err := b.do(ctx, request{method: http.MethodGet, path: "/" + b.repo + "/" + string(t) + "/", query: "uploads=1", maxBody: maxListAnswer})
	if err != nil {
		return nil, fmt.Errorf("origins of %s: %w", t, listTooLong(err))
	}
	if res.status != http.StatusOK {
		return nil, fmt.Errorf("origins of %s: %w", t, b.statusError(res))
	}
	_, origins, err := parseListOrigins(t, res.data)
	if err != nil {
		return nil, fmt.Errorf("origins of %s: %w", t, err)
	}
	return origins, nil
}

// VerifiesUploads reports whether the server verifies every uploaded pack
// and index file blob by blob (it says so in every answer; Open asks it
// once). Repository format v2 trusts index entries of such a backend for
// dedup (docs/TRUST-DESIGN); a server that only checks object names does
// not qualify.
func (b *Backend) VerifiesUploads() bool { return b.verifies.Load() }

// Connections implements storage.ConnectionsHint: round trips to a server
// are slow next to a local disk, so copy, export and import run as many
// requests at once as the server lets one token upload (its default
// --max-uploads), or more when more connections were asked for.
func (b *Backend) Connections() int { return max(8, 4*len(b.pool)) }

// ConnectionCount is how many connections the backend spreads requests
// over (Options.Connections).
func (b *Backend) ConnectionCount() int { return len(b.pool) }

// serverUploads is the floe server's default --max-uploads
// (server.DefaultMaxUploads): uploads of one token beyond it are refused
// with 429 and retried after a backoff, which is slower than waiting.
const serverUploads = 8

// ParallelSaves implements storage.ParallelSaver: a backup's packs upload
// one per connection at once, so that every connection carries data (one
// TCP connection cannot fill a long fat link), but no more than the
// server lets one token upload at once by default.
func (b *Backend) ParallelSaves() int { return min(len(b.pool), serverUploads) }

// shownLocation is a Location header of a redirect as messages show it:
// printable ASCII, at most 200 bytes.
func shownLocation(s string) string {
	b := make([]byte, 0, min(len(s), 200))
	for i := 0; i < len(s) && len(b) < 200; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b = append(b, c)
		}
	}
	return string(b)
}

// listTooLong names a list answer longer than maxListAnswer as such.
func listTooLong(err error) error {
	var tooLarge errBodyTooLarge
	if errors.As(err, &tooLarge) {
		return fmt.Errorf("the server's answer is longer than %d bytes (%s)", maxListAnswer, tooLarge)
	}
	return err
}
