// Package server is the repository server of `floe serve`: the
// storage.Backend interface over HTTP (docs/PROTOCOL.md), serving many
// repositories, each any storage.Backend. It holds no keys and never
// imports repo, snapshot or crypto: it moves opaque bytes, and enforces
// what a credential may do (roles) and that storage only grows (every
// object is named by the BLAKE3-256 of its bytes, checked while the upload
// streams, and never overwritten).
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
)

// Repositories opens the repositories a server serves by name (names are
// already checked with ValidRepoName).
type Repositories interface {
	// Open returns the backend of an existing repository, or an error
	// wrapping storage.ErrNotExist.
	Open(ctx context.Context, name string) (storage.Backend, error)
	// Create makes a new repository, or fails wrapping storage.ErrExist.
	Create(ctx context.Context, name string) (storage.Backend, error)
}

// UploadVerifier checks an uploaded object before it becomes visible,
// beyond the name check the server always does. A server with a verifier
// tells clients so (HeaderVerifies), and clients then trust that every
// pack and index file it holds was verified: a verifier must check every
// blob of a pack (and what an index file claims) or refuse the upload.
// FormatVerifier is the one of repository format v2. data holds the
// complete received bytes, whose BLAKE3-256 is already known to equal
// h.Name; be is the repository they are uploaded to (an index file is
// checked against the packs stored there). An error refuses the upload
// (422) and nothing is stored.
type UploadVerifier interface {
	VerifyUpload(ctx context.Context, be storage.Backend, h storage.Handle, data io.ReaderAt, size int64) error
}

// Options configure a Server.
type Options struct {
	Repos Repositories
	// Tokens authenticate requests (Authorization: Bearer), unless
	Tokens *TokenStore
	// Credential is set: then it is the credential of every request and
	// Tokens is not used: `floe serve --stdio` behind ssh, where sshd has
	// authenticated the key and its forced command gives the role.
	Credential *Token
	Audit      *AuditLog // nil: no audit log
	// Ledger enforces quotas; nil: no quotas.
	Ledger *Ledger
	// Metrics counts requests; nil: none.
	Metrics *Metrics
	// Verifier, when set, checks uploads (see UploadVerifier); the server
	// then holds each upload in memory (see UploadMemory) or spools it to
	// a temporary file in SpoolDir first.
	Verifier UploadVerifier
	SpoolDir string
	// MaxObjectSize bounds an upload; a larger Content-Length is refused
	// before its body is read. 0: DefaultMaxObjectSize.
	MaxObjectSize int64
	// MaxUploadsPerToken bounds concurrent uploads of one credential;
	// more are refused with 429 (clients retry). 0: DefaultMaxUploads.
	MaxUploadsPerToken int
	// MaxLoadsPerToken bounds concurrent loads and lists of one
	// credential (a load holds a buffer of loadChunk, a list a
	// directory's names, until its client has taken the answer); more
	// are refused with 429. 0: DefaultMaxLoads.
	MaxLoadsPerToken int
	// BodyIdleTimeout cuts off an upload that sends nothing for this
	// long, and a load or list whose client takes nothing for this long
	// (idleWriter); 0: DefaultBodyIdleTimeout.
	BodyIdleTimeout time.Duration
	// UploadMemory bounds the memory that holds uploads being received
	// and verified (up to 64 MiB each; larger ones and those beyond the
	// bound are spooled to SpoolDir). 0: DefaultUploadMemory; negative:
	// spool every upload above 1 MiB.
	UploadMemory int64
	// AllowAnyName turns off the check that an object's name is the
	// BLAKE3-256 of its bytes. Only the storage conformance suite sets it
	// (it stores arbitrary bytes under arbitrary names); floe serve never.
	AllowAnyName bool
}

// Defaults of Options.
const (
	// A pack is at most 1 GiB (config pack_size) plus one blob.
	DefaultMaxObjectSize = 1<<30 + 64<<20
	DefaultMaxUploads    = 8
	// DefaultMaxLoads is what the most parallel client runs at once
	// (a copy with --connections 64: 4 requests per connection), so
	// that it bounds a credential's buffers (256 MiB) without slowing
	// any honest client.
	DefaultMaxLoads = 256
	// maxConfigSize bounds the config object, which is small.
	maxConfigSize = 1 << 20
	// DefaultBodyIdleTimeout is how long an upload may send nothing.
	DefaultBodyIdleTimeout = time.Minute
)

// Server is an http.Handler. Create it with New.
type Server struct {
	opts Options

	mu      sync.Mutex
	uploads map[string]int // token id -> uploads in progress
	loads   map[string]int // token id -> loads in progress
	journal journal
	// uploaders: who uploaded each object, so that a removal gives its
	// uploader's quota back
	uploaders uploaderCache
	mem       *memBudget // buffers of uploads received into memory
}

// New returns a server.
func New(opts Options) (*Server, error) {
	if opts.Repos == nil || opts.Tokens == nil && opts.Credential == nil {
		return nil, errors.New("server: Repos and Tokens (or a Credential) are required")
	}
	if opts.MaxObjectSize <= 0 {
		opts.MaxObjectSize = DefaultMaxObjectSize
	}
	if opts.MaxUploadsPerToken <= 0 {
		opts.MaxUploadsPerToken = DefaultMaxUploads
	}
	if opts.MaxLoadsPerToken <= 0 {
		opts.MaxLoadsPerToken = DefaultMaxLoads
	}
	if opts.SpoolDir == "" {
		opts.SpoolDir = os.TempDir()
	}
	if opts.BodyIdleTimeout <= 0 {
		opts.BodyIdleTimeout = DefaultBodyIdleTimeout
	}
	if opts.UploadMemory == 0 {
		opts.UploadMemory = DefaultUploadMemory
	}
	var mem *memBudget
	if opts.UploadMemory > 0 {
		mem = newMemBudget(opts.UploadMemory)
	}
	return &Server{opts: opts, uploads: map[string]int{}, loads: map[string]int{}, mem: mem}, nil
}

// Headers of the protocol.
const (
	// HeaderSize carries an object's size in the answer to HEAD.
	HeaderSize = "Floe-Size"
	// HeaderResult is "created" or "identical" in the answer to a PUT.
	HeaderResult = "Floe-Result"
	// HeaderError is the reason of a refused HEAD request.
	HeaderError = "Floe-Error"
	// HeaderVerifies is "1" on every answer of a server with an
	// UploadVerifier: clients may then trust index entries of uploads
	// as verified (repository format v2, "VerifiesUploads").
	HeaderVerifies = "Floe-Verifies-Uploads"
)

// headerSafe keeps printable ASCII, so that a reason fits in a header.
func headerSafe(s string) string {
	b := make([]byte, 0, min(len(s), 500))
	for i := 0; i < len(s) && len(b) < 500; i++ {
		if c := s[i]; c >= 0x20 && c < 0x7f {
			b = append(b, c)
		}
	}
	return string(b)
}

// Error codes of the JSON error body {"error": "...", "code": "..."}.
const (
	CodeBadRequest   = "bad_request"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeNotFound     = "not_found"
	CodeExists       = "exists"
	CodeRange        = "range"
	CodeTooLarge     = "too_large"
	CodeNameMismatch = "name_mismatch"
	CodeRejected     = "rejected"
	CodeBusy         = "busy"
	CodeQuota        = "quota"
	CodeInternal     = "internal"
)

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// request is one request in progress and its audit record.
type request struct {
	w   http.ResponseWriter
	r   *http.Request
	rec AuditRecord
	tok Token
	// for the metrics
	status int
	code   string
	sent   int64
}

func (q *request) fail(s *Server, status int, code string, err error) {
	q.status, q.code = status, code
	q.rec.Status = status
	q.rec.Reason = err.Error()
	switch {
	case status >= 500:
		q.rec.Result = "error"
	default:
		q.rec.Result = "refused"
	}
	// reads of missing objects and ranges past the end are answers, not
	// refusals: not worth an audit line
	if !(status == http.StatusNotFound || status == http.StatusRequestedRangeNotSatisfiable) || q.rec.Op == string(OpSave) || q.rec.Op == string(OpRemove) {
		s.opts.Audit.Write(q.rec)
	}
	q.w.Header().Set("Content-Type", "application/json")
	if q.r.Method == http.MethodHead {
		// HEAD answers have no body: the reason goes in a header
		q.w.Header().Set(HeaderError, headerSafe(err.Error()))
	}
	if status == http.StatusTooManyRequests {
		q.w.Header().Set("Retry-After", "1")
	}
	q.w.WriteHeader(status)
	if q.r.Method != http.MethodHead {
		_ = json.NewEncoder(q.w).Encode(ErrorBody{Error: err.Error(), Code: code})
	}
}

func (q *request) done(s *Server, status int, result string) {
	q.status = status
	q.rec.Status, q.rec.Result = status, result
	s.opts.Audit.Write(q.rec)
}

func opFor(method string, kind RouteKind) (Op, bool) {
	switch kind {
	case RouteRepo:
		return OpCreate, method == http.MethodPut
	case RouteList:
		return OpList, method == http.MethodGet
	case RouteObject:
		switch method {
		case http.MethodGet:
			return OpLoad, true
		case http.MethodHead:
			return OpStat, true
		case http.MethodPut:
			return OpSave, true
		case http.MethodDelete:
			return OpRemove, true
		}
	}
	return "", false
}

// ServeHTTP checks, in this order and before any storage access: the
// path, the method, the token, the role, the body size; then it serves.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.opts.Verifier != nil {
		w.Header().Set(HeaderVerifies, "1")
	}
	start := time.Now()
	q := &request{w: w, r: r, rec: AuditRecord{Time: start.UTC(), Remote: r.RemoteAddr, Op: r.Method}, status: http.StatusOK}
	defer s.opts.Metrics.observe(q, start)
	if r.URL.RawPath != "" {
		q.fail(s, http.StatusBadRequest, CodeBadRequest, fmt.Errorf("%w: percent-encoded paths are not used by the protocol", ErrBadPath))
		return
	}
	route, err := ParsePath(r.URL.Path)
	if err != nil {
		q.rec.Object = truncate(r.URL.Path, 200)
		q.fail(s, http.StatusBadRequest, CodeBadRequest, err)
		return
	}
	q.rec.Repo = route.Repo
	if route.Kind == RouteObject {
		q.rec.Object = route.Handle.String()
	} else if route.Kind == RouteList {
		q.rec.Object = string(route.Handle.Type) + "/"
	}
	op, ok := opFor(r.Method, route.Kind)
	if !ok {
		q.w.Header().Set("Allow", allowFor(route.Kind))
		q.fail(s, http.StatusMethodNotAllowed, CodeBadRequest, fmt.Errorf("method %s not allowed on %s", r.Method, route))
		return
	}
	q.rec.Op = string(op)
	tok, err := s.authenticate(r)
	if err != nil {
		if !errors.Is(err, ErrUnauthorized) {
			q.fail(s, http.StatusInternalServerError, CodeInternal, err)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="floe"`)
		q.fail(s, http.StatusUnauthorized, CodeUnauthorized, err)
		return
	}
	q.tok = tok
	q.rec.Token, q.rec.Host = tok.ID, tok.Host
	if tok.Repo != route.Repo {
		q.fail(s, http.StatusForbidden, CodeForbidden, fmt.Errorf("%s is for repository %q, not %q", tok.Describe(), tok.Repo, route.Repo))
		return
	}
	if !tok.Roles.Allows(op, route.Handle.Type) {
		what := string(route.Handle.Type)
		if route.Kind == RouteRepo {
			what = "the repository"
		}
		q.fail(s, http.StatusForbidden, CodeForbidden, fmt.Errorf("%s has role %s, which may not %s %s",
			tok.Describe(), tok.Roles, op, what))
		return
	}
	switch op {
	case OpCreate:
		s.create(q, route)
	case OpList:
		s.list(q, route)
	case OpStat:
		s.stat(q, route)
	case OpLoad:
		s.load(q, route)
	case OpSave:
		s.save(q, route)
	case OpRemove:
		s.remove(q, route)
	}
}

func (s *Server) authenticate(r *http.Request) (Token, error) {
	if s.opts.Credential != nil {
		return *s.opts.Credential, nil
	}
	return s.opts.Tokens.Authenticate(r.Header.Get("Authorization"))
}

func allowFor(k RouteKind) string {
	switch k {
	case RouteRepo:
		return "PUT"
	case RouteList:
		return "GET"
	}
	return "GET, HEAD, PUT, DELETE"
}

// storageError answers a backend error.
func (s *Server) storageError(q *request, err error) {
	switch {
	case errors.Is(err, storage.ErrNotExist):
		q.fail(s, http.StatusNotFound, CodeNotFound, err)
	case errors.Is(err, storage.ErrExist):
		q.fail(s, http.StatusConflict, CodeExists, err)
	case errors.Is(err, storage.ErrInvalid):
		q.fail(s, http.StatusBadRequest, CodeBadRequest, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		q.fail(s, http.StatusRequestedRangeNotSatisfiable, CodeRange, err)
	case errors.Is(err, context.Canceled):
		q.fail(s, 499, CodeBadRequest, err) // the client went away
	default:
		q.fail(s, http.StatusInternalServerError, CodeInternal, err)
	}
}

func (s *Server) backend(q *request, route Route) (storage.Backend, bool) {
	be, err := s.opts.Repos.Open(q.r.Context(), route.Repo)
	if err != nil {
		s.storageError(q, fmt.Errorf("repository %s: %w", route.Repo, err))
		return nil, false
	}
	if s.opts.Ledger != nil && s.opts.Metrics != nil {
		s.opts.Ledger.track(be, route.Repo)
	}
	if s.opts.Metrics != nil {
		s.opts.Metrics.seedLastWrites(route.Repo, func() (map[string]time.Time, error) {
			j := journalOf(s.opts.Repos, route.Repo, be, &s.journal)
			if j == nil {
				return nil, nil // no journal: nothing from before the start
			}
			return lastUploads(context.Background(), j)
		})
	}
	return be, true
}

func (s *Server) create(q *request, route Route) {
	if _, err := s.opts.Repos.Create(q.r.Context(), route.Repo); err != nil {
		s.storageError(q, err)
		return
	}
	q.w.WriteHeader(http.StatusCreated)
	q.done(s, http.StatusCreated, "ok")
}

// ListEntry is one line of a list answer; the last line has End set (a
// list cut short has none, so the client notices).
type ListEntry struct {
	Name string `json:"name,omitempty"`
	Size int64  `json:"size,omitempty"`
	// with ?uploads=1 (roles restore, admin): who uploaded the object
	// (token id, host name) and when the server received it (RFC 3339)
	Token    string `json:"token,omitempty"`
	Host     string `json:"host,omitempty"`
	Received string `json:"received,omitempty"`
	End      bool   `json:"end,omitempty"`
	Error    string `json:"error,omitempty"`
}

func (s *Server) list(q *request, route Route) {
	var uploads map[string]UploadRecord
	withUploads := q.r.URL.Query().Get("uploads") == "1"
	if withUploads && q.tok.Roles&(RoleRestore|RoleAdmin) == 0 {
		q.fail(s, http.StatusForbidden, CodeForbidden, fmt.Errorf("%s has role %s, which may not read who uploaded %s", q.tok.Describe(), q.tok.Roles, route.Handle.Type))
		return
	}
	// a list holds a directory's names (and the journal) while its
	// client takes the answer: it counts as a load
	if !s.acquireSlot(s.loads, s.opts.MaxLoadsPerToken, q.tok.ID) {
		q.fail(s, http.StatusTooManyRequests, CodeBusy,
			fmt.Errorf("%s already has %d loads and lists in progress", q.tok.Describe(), s.opts.MaxLoadsPerToken))
		return
	}
	defer s.releaseSlot(s.loads, q.tok.ID)
	be, ok := s.backend(q, route)
	if !ok {
		return
	}
	if withUploads {
		if j := journalOf(s.opts.Repos, route.Repo, be, &s.journal); j != nil {
			var err error
			if uploads, err = j.read(q.r.Context(), route.Handle.Type); err != nil {
				s.storageError(q, err)
				return
			}
		}
	}
	q.w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(s.answerWriter(q))
	err := be.List(q.r.Context(), route.Handle.Type, func(fi storage.FileInfo) error {
		e := ListEntry{Name: fi.Name, Size: fi.Size}
		if rec, ok := uploads[fi.Name]; ok {
			e.Token, e.Host, e.Received = rec.Token, rec.Host, rec.Time.Format(time.RFC3339Nano)
		}
		return enc.Encode(e)
	})
	if err != nil {
		_ = enc.Encode(ListEntry{Error: err.Error()})
		return
	}
	_ = enc.Encode(ListEntry{End: true})
}

func (s *Server) stat(q *request, route Route) {
	be, ok := s.backend(q, route)
	if !ok {
		return
	}
	fi, err := be.Stat(q.r.Context(), route.Handle)
	if err != nil {
		s.storageError(q, err)
		return
	}
	q.w.Header().Set(HeaderSize, strconv.FormatInt(fi.Size, 10))
	q.w.WriteHeader(http.StatusOK)
}

func (s *Server) load(q *request, route Route) {
	var off, n int64
	query := q.r.URL.Query()
	for _, p := range []struct {
		name string
		v    *int64
	}{{"offset", &off}, {"length", &n}} {
		if v := query.Get(p.name); v != "" {
			x, err := strconv.ParseInt(v, 10, 64)
			if err != nil || x < 0 {
				q.fail(s, http.StatusBadRequest, CodeBadRequest, fmt.Errorf("%w: %s must be a number >= 0", storage.ErrInvalid, p.name))
				return
			}
			*p.v = x
		}
	}
	if !s.acquireSlot(s.loads, s.opts.MaxLoadsPerToken, q.tok.ID) {
		q.fail(s, http.StatusTooManyRequests, CodeBusy,
			fmt.Errorf("%s already has %d loads and lists in progress", q.tok.Describe(), s.opts.MaxLoadsPerToken))
		return
	}
	defer s.releaseSlot(s.loads, q.tok.ID)
	be, ok := s.backend(q, route)
	if !ok {
		return
	}
	if ro, ok := be.(storage.RangeOpener); ok {
		s.loadStream(q, ro, route.Handle, off, n)
		return
	}
	data, err := be.Load(q.r.Context(), route.Handle, off, n)
	if err != nil {
		s.storageError(q, err)
		return
	}
	q.w.Header().Set("Content-Type", "application/octet-stream")
	q.w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	q.w.WriteHeader(http.StatusOK)
	sent, _ := s.answerWriter(q).Write(data)
	q.sent = int64(sent)
}

// loadChunk is how much of an object loadStream reads at a time: a whole
// pack or range was read into a fresh buffer of its size before, memory
// that each load had to fault in and that 50 clients' restores could
// multiply.
const loadChunk = 1 << 20

// loadBufs holds loadChunk buffers aligned for direct reads.
var loadBufs = sync.Pool{New: func() any {
	b := directio.Buffer(loadChunk)
	return &b
}}

// loadStream sends length bytes at off of h (to the end when length is
// 0), read a chunk at a time at aligned offsets, so that the backend can
// read them around the page cache (local.Backend.SetDirectIO). The first
// chunk is read before the answer starts, so that a missing object or a
// bad range gets its status; a read error later cuts the stream off (the
// client sees a short body).
func (s *Server) loadStream(q *request, ro storage.RangeOpener, h storage.Handle, off, length int64) {
	r, err := ro.OpenRange(q.r.Context(), h)
	if err != nil {
		s.storageError(q, err)
		return
	}
	defer r.Close()
	n, err := storage.CheckRange(off, length, r.Size())
	if err != nil {
		s.storageError(q, fmt.Errorf("load %s: %w", h, err))
		return
	}
	bp := loadBufs.Get().(*[]byte)
	defer loadBufs.Put(bp)
	buf := *bp
	size, end := r.Size(), off+n
	// chunk reads the bytes [pos, min(end, next chunk boundary)) and
	// returns them: the read starts at the block boundary below pos and
	// ends at the block boundary above (or at the object's end).
	chunk := func(pos int64) ([]byte, error) {
		start := pos &^ (directio.Align - 1)
		stop := min(end, start+loadChunk)
		readEnd := min((stop+directio.Align-1)&^(directio.Align-1), size)
		if _, err := r.ReadAt(buf[:readEnd-start], start); err != nil {
			return nil, err
		}
		return buf[pos-start : stop-start], nil
	}
	var first []byte
	if n > 0 {
		if first, err = chunk(off); err != nil {
			s.storageError(q, fmt.Errorf("load %s: %w", h, err))
			return
		}
	}
	q.w.Header().Set("Content-Type", "application/octet-stream")
	q.w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	q.w.WriteHeader(http.StatusOK)
	iw := s.answerWriter(q)
	for pos, data := off, first; pos < end; {
		if data == nil {
			if data, err = chunk(pos); err != nil {
				// the status is sent: end the stream short, and
				// say why in the server's log
				fmt.Fprintf(os.Stderr, "floe serve: load %s: %v\n", h, err)
				panic(http.ErrAbortHandler)
			}
		}
		m, err := iw.Write(data)
		q.sent += int64(m)
		if err != nil {
			return // the client went away, or stopped reading
		}
		pos += int64(len(data))
		data = nil
	}
}

// idleWriterPiece is the most idleWriter writes at once: the deadline
// holds for a whole write, so a client must take this much per idle
// timeout (256 KiB a minute), not a chunk of loadChunk.
const idleWriterPiece = 256 << 10

// idleWriter is idleReader's counterpart for answers: a client that
// takes nothing for the idle timeout (up to an eighth more) is cut off,
// so that one that asks for an object and then reads nothing (a "slow
// read") cannot hold a handler, its buffer and its connection for good.
// Writes go in pieces of at most idleWriterPiece; the deadline moves at
// most every eighth of the timeout (over HTTP/2 each deadline is a
// message to the connection's goroutine).
type idleWriter struct {
	w     io.Writer
	rc    *http.ResponseController
	idle  time.Duration
	renew time.Time
}

// answerWriter is q's answer body under the server's idle timeout.
func (s *Server) answerWriter(q *request) *idleWriter {
	return &idleWriter{w: q.w, rc: http.NewResponseController(q.w), idle: s.opts.BodyIdleTimeout}
}

func (i *idleWriter) Write(p []byte) (int, error) {
	var n int
	for len(p) > 0 {
		if now := time.Now(); !now.Before(i.renew) {
			_ = i.rc.SetWriteDeadline(now.Add(i.idle + i.idle/8))
			i.renew = now.Add(i.idle / 8)
		}
		piece := p[:min(len(p), idleWriterPiece)]
		m, err := i.w.Write(piece)
		n += m
		if err != nil {
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

func (s *Server) remove(q *request, route Route) {
	be, ok := s.backend(q, route)
	if !ok {
		return
	}
	var size int64 = -1
	uploader := ""
	if s.opts.Ledger != nil {
		if fi, err := be.Stat(q.r.Context(), route.Handle); err == nil {
			size = fi.Size
		}
		if j := journalOf(s.opts.Repos, route.Repo, be, &s.journal); j != nil {
			uploader = s.uploaders.get(q.r.Context(), j, route.Repo, route.Handle)
		}
	}
	if err := be.Remove(q.r.Context(), route.Handle); err != nil {
		s.storageError(q, err)
		return
	}
	if size >= 0 {
		s.opts.Ledger.removed(route.Repo, size)
		if uploader != "" {
			s.opts.Ledger.credit(uploader, size)
		}
	}
	s.recordUpload(q, route.Repo, be, route.Handle, true)
	q.w.WriteHeader(http.StatusNoContent)
	q.done(s, http.StatusNoContent, "ok")
}

// acquire takes an upload slot of the credential.
func (s *Server) acquire(id string) bool {
	return s.acquireSlot(s.uploads, s.opts.MaxUploadsPerToken, id)
}

func (s *Server) release(id string) { s.releaseSlot(s.uploads, id) }

// acquireSlot takes one of max slots of the credential id in slots
// (uploads or loads in progress).
func (s *Server) acquireSlot(slots map[string]int, max int, id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slots[id] >= max {
		return false
	}
	slots[id]++
	return true
}

func (s *Server) releaseSlot(slots map[string]int, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slots[id]--; slots[id] <= 0 {
		delete(slots, id)
	}
}

// ErrNameMismatch is the reason of a refused upload whose bytes do not
// hash to its name.
var ErrNameMismatch = errors.New("object name is not the BLAKE3-256 of the uploaded bytes")

func (s *Server) save(q *request, route Route) {
	h := route.Handle
	size := q.r.ContentLength
	q.rec.Size = size
	limit := s.opts.MaxObjectSize
	if h.Type == storage.Config {
		limit = maxConfigSize
	}
	if size < 0 {
		q.fail(s, http.StatusLengthRequired, CodeBadRequest, errors.New("an upload needs a Content-Length"))
		return
	}
	if size > limit {
		q.fail(s, http.StatusRequestEntityTooLarge, CodeTooLarge,
			fmt.Errorf("%s: %d bytes is more than this server accepts (%d)", h, size, limit))
		return
	}
	if !s.acquire(q.tok.ID) {
		q.fail(s, http.StatusTooManyRequests, CodeBusy,
			fmt.Errorf("%s already has %d uploads in progress", q.tok.Describe(), s.opts.MaxUploadsPerToken))
		return
	}
	defer s.release(q.tok.ID)
	if m := s.opts.Metrics; m != nil {
		m.uploading.Inc()
		defer m.uploading.Dec()
	}
	be, ok := s.backend(q, route)
	if !ok || s.replayed(q, route, be) {
		return
	}
	ctx := q.r.Context()
	// An existing object of another size is refused without reading the
	// upload; one of the same size is compared below.
	fi, err := be.Stat(ctx, h)
	exists := err == nil
	if exists && fi.Size != size {
		q.fail(s, http.StatusConflict, CodeExists, fmt.Errorf("%s already exists with other content (%d bytes); objects are never overwritten", h, fi.Size))
		return
	}
	created := false
	if s.opts.Ledger != nil && !exists {
		// an existing object's re-upload stores nothing: no quota needed
		done, err := s.opts.Ledger.reserve(ctx, be, q.tok, route.Repo, size)
		if errors.Is(err, ErrQuota) {
			q.fail(s, http.StatusInsufficientStorage, CodeQuota, err)
			return
		}
		if err != nil {
			s.storageError(q, err)
			return
		}
		defer func() { done(created) }()
	}
	body := &idleReader{r: http.MaxBytesReader(q.w, q.r.Body, size), rc: http.NewResponseController(q.w), idle: s.opts.BodyIdleTimeout}
	up, err := s.receive(ctx, be, h, body, size)
	if err != nil {
		switch {
		case errors.Is(err, ErrNameMismatch):
			q.fail(s, http.StatusUnprocessableEntity, CodeNameMismatch, err)
		case errors.Is(err, errRejected):
			q.fail(s, http.StatusUnprocessableEntity, CodeRejected, err)
		case errors.Is(err, errBody):
			q.fail(s, http.StatusBadRequest, CodeBadRequest, err)
		default:
			s.storageError(q, err)
		}
		return
	}
	defer up.abort()
	defer up.release(s.mem)
	err = up.commit(ctx)
	if errors.Is(err, storage.ErrExist) {
		same, cerr := s.identical(ctx, be, h, up)
		switch {
		case cerr != nil:
			s.storageError(q, cerr)
		case same:
			// an identical re-upload (a retry, or another host that
			// stored the same bytes): success, nothing changes
			q.w.Header().Set(HeaderResult, "identical")
			q.w.WriteHeader(http.StatusOK)
			q.done(s, http.StatusOK, "exists")
		default:
			q.fail(s, http.StatusConflict, CodeExists, fmt.Errorf("%s already exists with other content; objects are never overwritten", h))
		}
		return
	}
	if err != nil {
		s.storageError(q, err)
		return
	}
	created = true
	s.recordUpload(q, route.Repo, be, h, false)
	q.w.Header().Set(HeaderResult, "created")
	q.w.WriteHeader(http.StatusCreated)
	q.done(s, http.StatusCreated, "ok")
}

// identical reports whether the existing object h holds the uploaded
// bytes. A name-checked upload is identical by construction (same name,
// same hash); the config and unchecked names are compared byte by byte.
func (s *Server) identical(ctx context.Context, be storage.Backend, h storage.Handle, up *upload) (bool, error) {
	if up.nameChecked {
		fi, err := be.Stat(ctx, h)
		if err != nil {
			return false, err
		}
		return fi.Size == up.size, nil
	}
	if up.mem == nil {
		return false, nil // the bytes are gone (streamed): cannot show they match
	}
	old, err := storage.ReadAll(ctx, be, h)
	if err != nil {
		return false, err
	}
	return bytes.Equal(old, up.mem), nil
}

var (
	errRejected = errors.New("upload rejected by verification")
	errBody     = errors.New("bad upload body")
)

// upload is a received object, not yet visible.
type upload struct {
	be          storage.Backend
	h           storage.Handle
	size        int64
	nameChecked bool
	pending     storage.PendingObject // streamed into the backend, or
	mem         []byte                // held in memory
	pooled      bool                  // mem is from the server's memBudget
	committed   bool
}

func (u *upload) commit(ctx context.Context) error {
	u.committed = true
	if u.pending != nil {
		return u.pending.Commit(ctx, u.h.Name)
	}
	return u.be.Save(ctx, u.h, u.mem)
}

func (u *upload) abort() {
	if u.pending != nil && !u.committed {
		u.pending.Abort()
	}
}

// release gives a pooled buffer back; the upload's bytes are gone.
func (u *upload) release(m *memBudget) {
	if u.pooled {
		m.put(u.mem)
		u.mem, u.pooled = nil, false
	}
}

// receive reads exactly size bytes of body into the backend (streamed
// when it can) while hashing them, and checks the name. With a verifier,
// the upload is received into memory (within the memory budget, see
// memUploadMax) or a spool file first, and reaches the repository's
// storage only once the verifier accepted it: a refused upload leaves no
// trace there, not even a temporary file. Nothing is visible until
// commit.
func (s *Server) receive(ctx context.Context, be storage.Backend, h storage.Handle, body io.Reader, size int64) (_ *upload, err error) {
	up := &upload{be: be, h: h, size: size, nameChecked: h.Type != storage.Config && !s.opts.AllowAnyName}
	verify := s.opts.Verifier != nil && h.Type != storage.Config
	ss, streams := storage.As[storage.StreamSaver](be)
	switch {
	case h.Type == storage.Config || size <= 1<<20 || !streams && !verify:
		// small objects, the config and backends that cannot stream:
		// in memory (size is bounded above)
		up.mem = make([]byte, size)
	case verify:
		up.mem = s.mem.get(size)
		up.pooled = up.mem != nil
	}
	defer func() {
		if err != nil {
			up.abort()
			up.release(s.mem)
		}
	}()
	if up.mem != nil {
		return up, s.receiveMem(ctx, up, body, verify)
	}
	hw := hash.NewWriter()
	var dst io.Writer
	var spool *os.File
	if verify {
		spool, err = os.CreateTemp(s.opts.SpoolDir, ".floe-upload-*")
		if err != nil {
			return nil, fmt.Errorf("spool upload: %w", err)
		}
		defer os.Remove(spool.Name())
		defer spool.Close()
		dst = spool
	} else {
		up.pending, err = ss.SaveStream(ctx, h.Type)
		if err != nil {
			return nil, err
		}
		dst = up.pending
	}
	buf := make([]byte, copyBufSize)
	n, err := io.CopyBuffer(io.MultiWriter(storageWriter{dst}, hw), onlyReader{body}, buf)
	if err = bodyError(h, size, n, err); err != nil {
		return nil, err
	}
	if err := s.checkName(up, hw.Sum()); err != nil {
		return nil, err
	}
	if !verify {
		return up, nil
	}
	if verr := s.opts.Verifier.VerifyUpload(ctx, be, h, spool, size); verr != nil {
		return nil, fmt.Errorf("%w: %s: %v", errRejected, h, verr)
	}
	// accepted: copy the spool into storage (streamed when the backend
	// can, else through memory)
	if !streams {
		up.mem = make([]byte, size)
		if _, err := spool.ReadAt(up.mem, 0); err != nil {
			return nil, fmt.Errorf("read spooled upload: %w", err)
		}
		return up, nil
	}
	if up.pending, err = ss.SaveStream(ctx, h.Type); err != nil {
		return nil, err
	}
	if _, err := io.CopyBuffer(storageWriter{up.pending}, onlyReader{io.NewSectionReader(spool, 0, size)}, buf); err != nil {
		return nil, err
	}
	return up, nil
}

// copyBufSize is the buffer of streamed and spooled uploads: one write
// per MiB, not per 32 KiB.
const copyBufSize = 1 << 20

// onlyReader hides a reader's WriterTo, so that io.CopyBuffer uses the
// buffer given.
type onlyReader struct{ io.Reader }

// receiveMem reads the upload into up.mem (of its size), checks its name
// and, with verify, has the verifier check it: a pack in the same pass as
// its name's hash when the verifier can (PackBytesVerifier).
func (s *Server) receiveMem(ctx context.Context, up *upload, body io.Reader, verify bool) error {
	h := up.h
	m, err := io.ReadFull(body, up.mem)
	n := int64(m)
	if err == nil {
		// the body must end here (a longer one is refused by
		// MaxBytesReader)
		var extra int64
		extra, err = io.Copy(io.Discard, body)
		n += extra
	} else if err == io.ErrUnexpectedEOF || err == io.EOF {
		err = nil // counted short below
	}
	if err = bodyError(h, up.size, n, err); err != nil {
		return err
	}
	if pv, ok := s.opts.Verifier.(PackBytesVerifier); ok && verify && h.Type == storage.Pack {
		sum, verr := pv.VerifyPackBytes(h, up.mem)
		if err := s.checkName(up, sum); err != nil {
			return err
		}
		if verr != nil {
			return fmt.Errorf("%w: %s: %v", errRejected, h, verr)
		}
		return nil
	}
	if up.nameChecked {
		if err := s.checkName(up, hash.Sum(up.mem)); err != nil {
			return err
		}
	}
	if verify {
		if verr := s.opts.Verifier.VerifyUpload(ctx, up.be, h, bytes.NewReader(up.mem), up.size); verr != nil {
			return fmt.Errorf("%w: %s: %v", errRejected, h, verr)
		}
	}
	return nil
}

// bodyError turns a failed or short read of an upload's body into the
// error the client gets (400; a storage write error stays the storage's).
func bodyError(h storage.Handle, size, n int64, err error) error {
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("%w: body longer than its Content-Length %d", errBody, size)
		}
		if errors.Is(err, errStorageWrite) || errors.Is(err, errBody) {
			return err
		}
		return fmt.Errorf("%w: reading the upload of %s: %v", errBody, h, err)
	}
	if n != size {
		return fmt.Errorf("%w: body of %d bytes, Content-Length %d", errBody, n, size)
	}
	return nil
}

// checkName refuses an upload whose bytes do not hash to its name.
func (s *Server) checkName(up *upload, sum hash.ID) error {
	if !up.nameChecked {
		return nil
	}
	if got := sum.String(); got != up.h.Name {
		return fmt.Errorf("%w: %s received %d bytes that hash to %s", ErrNameMismatch, up.h, up.size, got)
	}
	return nil
}

var errStorageWrite = errors.New("storage write failed")

// storageWriter marks write errors as the storage's (disk full), so that
// they are not taken for a broken upload.
type storageWriter struct{ w io.Writer }

func (s storageWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil {
		err = fmt.Errorf("%w: %w", errStorageWrite, err)
	}
	return n, err
}

// minUploadRate is the rate an upload must average between two moves of
// its deadline (idleReader): 1 KiB/s, far below any link a backup runs
// over, far above an upload that trickles a byte now and then to hold
// its slot, its quota reservation and its memory for good.
const minUploadRate = 1 << 10

// idleReader extends the read deadline as the upload progresses, so that
// an upload may take long but may not stall: a client that sends nothing
// for the idle timeout (up to an eighth more), or sends less than
// minUploadRate since the deadline last moved, is cut off. The deadline
// moves at most every eighth of the timeout, not before each read: over
// HTTP/1.1 a read is one TLS record (16 KiB), and over HTTP/2 each
// deadline is a message to the connection's goroutine.
type idleReader struct {
	r     io.Reader
	rc    *http.ResponseController
	idle  time.Duration
	renew time.Time // when to move the deadline again
	moved time.Time // when it last moved (zero: not yet)
	got   int64     // bytes read since
}

func (i *idleReader) Read(p []byte) (int, error) {
	if now := time.Now(); !now.Before(i.renew) &&
		(i.moved.IsZero() || float64(i.got) >= minUploadRate*now.Sub(i.moved).Seconds()) {
		// (too slow: the deadline stays, and ends the upload unless
		// enough bytes come before it)
		_ = i.rc.SetReadDeadline(now.Add(i.idle + i.idle/8))
		i.renew, i.moved, i.got = now.Add(i.idle/8), now, 0
	}
	n, err := i.r.Read(p)
	i.got += int64(n)
	return n, err
}

// RootDir serves the repositories in the subdirectories of a directory
// with the local backend, with direct I/O (local.Backend.SetDirectIO)
// unless SetBufferedIO: packs are written and read around the page
// cache, which a server that stores many hosts' backups would only churn.
type RootDir struct {
	dir string
	// one, when set, is the only repository, named StdioRepo (--stdio)
	one string

	// buffered: the backends without direct I/O (SetBufferedIO)
	buffered bool

	mu   sync.Mutex
	open map[string]*local.Backend
}

// SetBufferedIO makes the repositories opened from now on write and read
// packs through the page cache, as the local backend does by default, for
// file systems where direct I/O is slow (or a server that rereads packs
// soon and has memory to cache them). Call it before serving.
func (d *RootDir) SetBufferedIO(on bool) { d.buffered = on }

// NewRootDir serves the repositories in dir.
func NewRootDir(dir string) (*RootDir, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("repositories' root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("repositories' root %s is not a directory", dir)
	}
	return &RootDir{dir: abs, open: map[string]*local.Backend{}}, nil
}

// NewOneRepo serves the one repository in dir (which need not exist yet:
// an admin may create it) under the name StdioRepo.
func NewOneRepo(dir string) (*RootDir, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	return &RootDir{dir: filepath.Dir(abs), one: abs, open: map[string]*local.Backend{}}, nil
}

// repoDir is the directory of the repository name.
func (d *RootDir) repoDir(name string) string {
	if d.one != "" {
		return d.one
	}
	return filepath.Join(d.dir, name)
}

// Open implements Repositories.
func (d *RootDir) Open(ctx context.Context, name string) (storage.Backend, error) {
	if err := ValidRepoName(name); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if be, ok := d.open[name]; ok {
		return be, nil
	}
	if d.one != "" && name != StdioRepo {
		return nil, fmt.Errorf("no repository %q on this server: %w", name, storage.ErrNotExist)
	}
	be, err := local.Open(d.repoDir(name))
	if errors.Is(err, storage.ErrNotExist) {
		// created, but its config not saved yet: the create and the
		// saves of the keys that follow may reach different server
		// processes (ssh connections, several servers), so the layout
		// alone makes it open; a client still sees no config
		if fi, serr := os.Stat(filepath.Join(d.repoDir(name), string(storage.Key))); serr == nil && fi.IsDir() {
			be, err = local.Create(d.repoDir(name))
		}
	}
	if errors.Is(err, storage.ErrNotExist) {
		return nil, fmt.Errorf("no repository %q on this server: %w", name, storage.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	be.SetDirectIO(!d.buffered)
	d.open[name] = be
	go d.sweep(name, be)
	return be, nil
}

// sweep removes what uploads cut off by a crash of the server left: the
// local backend's temporary files older than local.TempMaxAge (no upload
// takes that long; clients cannot remove them, the server holds them).
func (d *RootDir) sweep(name string, be *local.Backend) {
	n, size, err := be.RemoveTempFiles(local.TempMaxAge)
	if err != nil {
		fmt.Fprintf(os.Stderr, "floe serve: repository %s: removing leftover temporary files: %v\n", name, err)
	}
	if n > 0 {
		fmt.Fprintf(os.Stderr, "floe serve: repository %s: removed %d leftover temporary files (%d bytes) of cut-off uploads\n", name, n, size)
	}
}

// Sweep runs sweep on every open repository (floe serve does it hourly).
func (d *RootDir) Sweep() {
	d.mu.Lock()
	open := make(map[string]*local.Backend, len(d.open))
	for n, be := range d.open {
		open[n] = be
	}
	d.mu.Unlock()
	for n, be := range open {
		d.sweep(n, be)
	}
}

// Create implements Repositories. A directory left by an interrupted
// create (no config yet) is taken over, like `floe init` on a local path.
func (d *RootDir) Create(ctx context.Context, name string) (storage.Backend, error) {
	if err := ValidRepoName(name); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if be, ok := d.open[name]; ok {
		if _, err := be.Stat(ctx, storage.Handle{Type: storage.Config}); err == nil {
			return nil, fmt.Errorf("repository %q already exists: %w", name, storage.ErrExist)
		}
		return be, nil
	}
	if d.one != "" && name != StdioRepo {
		return nil, fmt.Errorf("this server serves one repository: %w", storage.ErrInvalid)
	}
	be, err := local.Create(d.repoDir(name))
	if err != nil {
		if errors.Is(err, storage.ErrExist) {
			return nil, fmt.Errorf("repository %q already exists: %w", name, storage.ErrExist)
		}
		return nil, fmt.Errorf("create repository %q: %w", name, err)
	}
	be.SetDirectIO(!d.buffered)
	d.open[name] = be
	return be, nil
}
