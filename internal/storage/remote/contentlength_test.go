package remote

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/storage"
)

// lengthServer starts a TLS server (HTTP/2 and HTTP/1.1) that answers
// every request with h, and a client of it.
func lengthServer(t *testing.T, h http.HandlerFunc) *Backend {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	b, err := New(srv.URL+"/fleet", Options{Fingerprint: Fingerprint(srv.Certificate().Raw), Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// A server that announces (or sends) more than the range asked for is
// an error, and the client never allocates what a hostile Content-Length
// names: before, a 200 answer's Content-Length sized the read buffer as
// it was, so one header crashed the client (makeslice: cap out of
// range, or out of memory).
func TestLoadHostileLength(t *testing.T) {
	h := storage.Handle{Type: storage.Pack, Name: strings.Repeat("ab", 32)}
	for _, c := range []struct {
		name string
		fn   http.HandlerFunc
	}{
		{"huge Content-Length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "4611686018427387903")
			w.Write(make([]byte, 10))
		}},
		{"1 TiB Content-Length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1099511627776")
			w.Write(make([]byte, 10))
		}},
		{"more than asked, no length", func(w http.ResponseWriter, r *http.Request) {
			w.Write(make([]byte, 4096))
			w.(http.Flusher).Flush()
			w.Write(make([]byte, 1<<20))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := lengthServer(t, c.fn)
			data, err := b.Load(context.Background(), h, 0, 10)
			if err == nil {
				t.Fatalf("Load of 10 bytes: %d bytes, no error", len(data))
			}
			t.Log(err)
		})
	}
}

// A list whose Content-Length is beyond anything the server sends is
// cut short, not a crash.
func TestListHostileLength(t *testing.T) {
	b := lengthServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "4611686018427387903")
		w.Write([]byte(`{"end":true}` + "\n"))
	})
	err := b.List(context.Background(), storage.Pack, func(storage.FileInfo) error { return nil })
	if err == nil {
		t.Fatal("a list cut short passed")
	}
	t.Log(err)
}

// Under a bound of the caller's (a list's maxListAnswer, a whole
// object's limit), an announced Content-Length is not allocated before
// the bytes come: a server that announces 1 GiB and sends 20 bytes
// costs the client little (FuzzServerAnswers peaked at 2 GB of memory).
func TestAnnouncedLengthNotAllocated(t *testing.T) {
	b := lengthServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000000000")
		w.Write([]byte(`{"end":true}` + "\n"))
	})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.List(context.Background(), storage.Pack, func(storage.FileInfo) error { return nil })
	b.LoadWhole(context.Background(), storage.Handle{Type: storage.Index, Name: strings.Repeat("cd", 32)}, 4<<30)
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 100<<20 {
		t.Fatalf("answers announcing 1 GB allocated %d bytes", got)
	}
}
