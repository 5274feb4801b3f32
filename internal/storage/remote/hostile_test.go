package remote

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/storage"
)

// hostile is a TLS server (HTTP/2 and HTTP/1.1, as floe serve) whose
// answers the test chooses, and a client that pins its certificate.
func hostile(t *testing.T, h http.HandlerFunc, opts Options) *Backend {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	opts.Fingerprint = Fingerprint(srv.Certificate().Raw)
	if opts.Token == "" {
		opts.Token = "floe_0123456789abcdef_secretsecretsecret"
	}
	if opts.Retries == 0 {
		opts.Retries = -1 // no retries: each case is one answer
	}
	opts.RetryDelay = time.Millisecond
	b, err := New(srv.URL+"/fleet", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

var (
	hostileHandle = storage.Handle{Type: storage.Pack, Name: strings.Repeat("ab", 32)}
	hostileIndex  = storage.Handle{Type: storage.Index, Name: strings.Repeat("cd", 32)}
)

// A server that redirects (to another host, another port, plain http)
// is not followed: the token goes only to the server configured, and
// neither are an upload's bytes sent anywhere else.
func TestHostileRedirect(t *testing.T) {
	var leaked atomic.Int64
	var leakedAuth sync.Map
	// where the redirects point: plain HTTP on another port of the same
	// host (Go's client keeps Authorization for the same host name,
	// whatever the port or scheme), and another TLS server
	catch := func(w http.ResponseWriter, r *http.Request) {
		leaked.Add(1)
		if a := r.Header.Get("Authorization"); a != "" {
			leakedAuth.Store(a, true)
		}
		w.WriteHeader(http.StatusOK)
	}
	plain := httptest.NewServer(http.HandlerFunc(catch))
	defer plain.Close()
	other := httptest.NewTLSServer(http.HandlerFunc(catch))
	defer other.Close()
	ctx := context.Background()
	for _, target := range []string{plain.URL, other.URL} {
		for _, status := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
			b := hostile(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target+r.URL.RequestURI(), status)
			}, Options{})
			ops := map[string]func() error{
				"stat": func() error { _, err := b.Stat(ctx, hostileHandle); return err },
				"load": func() error { _, err := b.Load(ctx, hostileHandle, 0, 10); return err },
				"load whole": func() error {
					_, err := b.LoadWhole(ctx, hostileIndex, 1<<20)
					return err
				},
				"list":   func() error { return b.List(ctx, storage.Pack, func(storage.FileInfo) error { return nil }) },
				"save":   func() error { return b.Save(ctx, hostileIndex, []byte("index")) },
				"upload": func() error { return b.Save(ctx, hostileHandle, make([]byte, uploadMin)) },
				"stream": func() error {
					rc, err := b.OpenStream(ctx, hostileHandle, 0, downloadMin)
					if err == nil {
						rc.Close()
					}
					return err
				},
				"remove": func() error { return b.Remove(ctx, hostileHandle) },
			}
			for name, op := range ops {
				err := op()
				if err == nil || !strings.Contains(err.Error(), "redirect") {
					t.Errorf("%s answered %d to %s: %v, want an error about the redirect", name, status, target, err)
				}
				if err != nil && strings.Contains(err.Error(), "secret") {
					t.Errorf("%s: the error shows the token: %v", name, err)
				}
			}
		}
	}
	if n := leaked.Load(); n != 0 {
		t.Errorf("the client followed %d redirects", n)
	}
	leakedAuth.Range(func(k, _ any) bool {
		t.Errorf("the token was sent to another host: %v", k)
		return true
	})
}

// Answers that make no sense (statuses, sizes) are clear errors, not
// panics and not success.
func TestHostileAnswers(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		name string
		h    http.HandlerFunc
		op   func(b *Backend) error
	}{
		{"stat without size", func(w http.ResponseWriter, r *http.Request) {}, func(b *Backend) error { _, err := b.Stat(ctx, hostileHandle); return err }},
		{"stat negative size", func(w http.ResponseWriter, r *http.Request) { w.Header().Set("Floe-Size", "-5") },
			func(b *Backend) error { _, err := b.Stat(ctx, hostileHandle); return err }},
		{"short range", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("abc")) },
			func(b *Backend) error { _, err := b.Load(ctx, hostileHandle, 0, 10); return err }},
		{"long range", func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, 11)) },
			func(b *Backend) error { _, err := b.Load(ctx, hostileHandle, 0, 10); return err }},
		{"stream of another length", func(w http.ResponseWriter, r *http.Request) { w.Write(make([]byte, 11)) },
			func(b *Backend) error { _, err := b.OpenStream(ctx, hostileHandle, 0, 10); return err }},
		{"save answered 200 without result", func(w http.ResponseWriter, r *http.Request) {},
			func(b *Backend) error { return b.Save(ctx, hostileIndex, []byte("x")) }},
		{"save answered 202", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) },
			func(b *Backend) error { return b.Save(ctx, hostileIndex, []byte("x")) }},
		{"list without end", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"name":"x"}` + "\n")) },
			func(b *Backend) error { return b.List(ctx, storage.Pack, func(storage.FileInfo) error { return nil }) }},
		{"list of garbage", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("\x00\xff{{{")) },
			func(b *Backend) error { return b.List(ctx, storage.Pack, func(storage.FileInfo) error { return nil }) }},
		{"odd status", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) },
			func(b *Backend) error { _, err := b.Load(ctx, hostileHandle, 0, 0); return err }},
		{"remove answered 201", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) },
			func(b *Backend) error { return b.Remove(ctx, hostileHandle) }},
	} {
		b := hostile(t, c.h, Options{})
		if err := c.op(b); err == nil {
			t.Errorf("%s: no error", c.name)
		}
	}
	// a list that names paths, not objects: nothing of it is reported
	b := hostile(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"name":"../../etc/passwd","size":1}` + "\n" + `{"name":"` + strings.Repeat("AB", 32) + `","size":1}` + "\n" + `{"end":true}` + "\n"))
	}, Options{})
	if err := b.List(ctx, storage.Pack, func(fi storage.FileInfo) error {
		t.Errorf("a list reported %q", fi.Name)
		return nil
	}); err != nil {
		t.Errorf("list: %v", err)
	}
}

// The client for the fleet API (NewHTTPClient), whose callers send a
// token too, follows no redirect either.
func TestHTTPClientNoRedirect(t *testing.T) {
	var leaked atomic.Int64
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { leaked.Add(1) }))
	defer plain.Close()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	hc, err := NewHTTPClient(srv.URL, Options{Fingerprint: Fingerprint(srv.Certificate().Raw)})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", srv.URL+"/_fleet/v1/runs", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer floe_0123456789abcdef_secret")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || leaked.Load() != 0 {
		t.Errorf("answer %d, %d requests followed the redirect", resp.StatusCode, leaked.Load())
	}
}
