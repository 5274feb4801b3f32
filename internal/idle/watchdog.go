// Package idle gives up on HTTP requests whose other side keeps them
// waiting: a server that stops sending an answer or stops reading an
// upload (floe's clients of floe serve and of S3), where net/http bounds
// only the wait for an answer's headers.
package idle

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Watchdog cancels a request whose server keeps it waiting longer than
// the idle timeout: while a read of the answer's body has not returned,
// or while the transport, having taken a part of the upload's body, does
// not come back for more (its write to the server blocks: the server
// reads nothing). http.Transport bounds only the wait for the answer's
// headers (ResponseHeaderTimeout); a body that trickles or stops, and an
// upload the server never reads, would otherwise hang a command for good
// (HTTP/2's pings keep a connection alive whose server answers them).
//
// The cost per read is two clock readings and atomic adds; a timer
// checks every quarter of the timeout, so a wait is cut off after the
// timeout and at most a quarter more.
type Watchdog struct {
	d      time.Duration
	cancel context.CancelFunc
	start  time.Time
	// waiting counts what waits on the server now; last is when
	// something last began or ended waiting (nanoseconds since start)
	waiting atomic.Int32
	last    atomic.Int64
	fired   atomic.Bool
	stopped atomic.Bool
	t       atomic.Pointer[time.Timer] // set once; the timer's callback reads it
	mu      sync.Mutex
	reqs    []*watchedRequest // the upload's bodies
}

// New starts a watch that calls cancel (the request's context's) when
// the other side keeps it waiting longer than d; Stop ends it.
func New(d time.Duration, cancel context.CancelFunc) *Watchdog {
	w := &Watchdog{d: d, cancel: cancel, start: time.Now()}
	w.t.Store(time.AfterFunc(d/4, w.check))
	return w
}

func (w *Watchdog) now() int64 { return int64(time.Since(w.start)) }

func (w *Watchdog) check() {
	if w.stopped.Load() {
		return
	}
	if w.waiting.Load() > 0 && w.now()-w.last.Load() > int64(w.d) {
		w.fired.Store(true)
		w.cancel()
		return
	}
	if t := w.t.Load(); t != nil {
		t.Reset(w.d / 4)
	} else {
		time.AfterFunc(w.d/4, w.check) // not stored yet: check again later
	}
}

// begin and end bracket a wait on the server.
func (w *Watchdog) begin() {
	w.last.Store(w.now())
	w.waiting.Add(1)
}

func (w *Watchdog) end() {
	w.last.Store(w.now())
	w.waiting.Add(-1)
}

// Stop ends the watch and cancels the request's context (its answer is
// read, or its body closed).
func (w *Watchdog) Stop() {
	w.stopped.Store(true)
	if t := w.t.Load(); t != nil {
		t.Stop()
	}
	w.cancel()
}

// Err is the error of a request the watchdog cut off.
func (w *Watchdog) Err() error {
	return fmt.Errorf("the server sent nothing for %v (idle timeout)", w.d)
}

// RequestBody watches the transport's reads of an upload's body: from
// each read's return until the next read the transport is sending, and
// a send that does not end within the timeout means the server does not
// read.
func (w *Watchdog) RequestBody(rc io.ReadCloser) io.ReadCloser {
	r := &watchedRequest{rc: rc, w: w}
	w.mu.Lock()
	w.reqs = append(w.reqs, r)
	w.mu.Unlock()
	return r
}

// RequestDone ends the watch of the upload's bodies (GetBody makes one
// per attempt of the transport): the answer's headers came (an early
// refusal leaves the rest of the body unsent), or the request failed.
func (w *Watchdog) RequestDone() {
	w.mu.Lock()
	reqs := w.reqs
	w.reqs = nil
	w.mu.Unlock()
	for _, r := range reqs {
		r.finish()
	}
}

type watchedRequest struct {
	rc      io.ReadCloser
	w       *Watchdog
	mu      sync.Mutex
	pending bool // the transport is sending what it read
	done    bool
}

func (r *watchedRequest) Read(p []byte) (int, error) {
	r.mu.Lock()
	if r.pending {
		r.pending = false
		r.w.end()
	}
	r.mu.Unlock()
	n, err := r.rc.Read(p)
	r.mu.Lock()
	if err == nil && !r.done {
		r.pending = true
		r.w.begin()
	}
	r.mu.Unlock()
	return n, err
}

func (r *watchedRequest) finish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done = true
	if r.pending {
		r.pending = false
		r.w.end()
	}
}

// Close ends the watch of this body: the transport closes a body it is
// done with (sent, or given up on a connection that broke before it
// sends the body again from GetBody).
func (r *watchedRequest) Close() error {
	r.finish()
	return r.rc.Close()
}

// ResponseBody watches the reads of an answer's body; closing it ends
// the watch.
func (w *Watchdog) ResponseBody(rc io.ReadCloser) io.ReadCloser {
	return &watchedResponse{rc: rc, w: w}
}

type watchedResponse struct {
	rc io.ReadCloser
	w  *Watchdog
}

func (r *watchedResponse) Read(p []byte) (int, error) {
	r.w.begin()
	n, err := r.rc.Read(p)
	r.w.end()
	if err != nil && err != io.EOF && r.w.fired.Load() {
		err = r.w.Err()
	}
	return n, err
}

func (r *watchedResponse) Close() error {
	err := r.rc.Close()
	r.w.Stop()
	return err
}

// Fired reports whether the watchdog cut the request off.
func (w *Watchdog) Fired() bool { return w.fired.Load() }

// Transport watches every request of Base (see Watchdog): one whose
// server sends nothing, or takes nothing of the upload, for Timeout
// fails with Watchdog.Err's error.
type Transport struct {
	Base    http.RoundTripper
	Timeout time.Duration
}

// RoundTrip implements http.RoundTripper.
func (t Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	w := New(t.Timeout, cancel)
	r := req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		r.Body = w.RequestBody(req.Body)
	}
	resp, err := t.Base.RoundTrip(r)
	w.RequestDone()
	if err != nil {
		w.Stop()
		if w.Fired() {
			err = w.Err()
		}
		return nil, err
	}
	resp.Body = w.ResponseBody(resp.Body) // closing it stops the watch
	return resp, nil
}
