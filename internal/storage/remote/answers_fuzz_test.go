package remote

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/storage"
)

// answer is what the fuzzed server says to the next request.
type answer struct {
	status        int
	contentLength string
	floeSize      string
	body          []byte
}

// FuzzServerAnswers: whatever a floe server answers (status, the
// Content-Length and Floe-Size headers, the body), the client neither
// panics nor hangs, and what it returns keeps its promises: a range of
// n bytes is n bytes, a whole object is within its limit, a size is not
// negative, a listed name is an object name, a stream gives at most what
// was asked.
func FuzzServerAnswers(f *testing.F) {
	var (
		mu  sync.Mutex
		cur answer
	)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		a := cur
		mu.Unlock()
		if a.contentLength != "" {
			w.Header().Set("Content-Length", a.contentLength)
		}
		if a.floeSize != "" {
			w.Header().Set("Floe-Size", a.floeSize)
		}
		w.WriteHeader(a.status)
		w.Write(a.body)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	b, err := New(srv.URL+"/fleet", Options{Fingerprint: Fingerprint(srv.Certificate().Raw), Retries: -1, RetryDelay: time.Millisecond})
	if err != nil {
		f.Fatal(err)
	}
	defer b.Close()
	h := storage.Handle{Type: storage.Pack, Name: strings.Repeat("ab", 32)}
	name := strings.Repeat("cd", 32)
	f.Add(uint8(0), 200, "", "", []byte("0123456789"))
	f.Add(uint8(0), 200, "4611686018427387903", "", []byte("0123456789"))
	f.Add(uint8(1), 200, "", "-1", []byte{})
	f.Add(uint8(2), 200, "", "", []byte(`{"name":"`+name+`","size":3}`+"\n"+`{"end":true}`+"\n"))
	f.Add(uint8(3), 200, "20", "", make([]byte, 20))
	f.Add(uint8(4), 200, "", "", make([]byte, 11))
	f.Add(uint8(0), 503, "", "", []byte(`{"error":"busy"}`))
	f.Fuzz(func(t *testing.T, op uint8, status int, contentLength, floeSize string, body []byte) {
		if status < 200 || status > 599 || status == http.StatusSwitchingProtocols {
			return // what net/http lets a handler send
		}
		if strings.ContainsAny(contentLength+floeSize, "\r\n\x00") {
			return // not a header value net/http sends
		}
		mu.Lock()
		cur = answer{status: status, contentLength: contentLength, floeSize: floeSize, body: body}
		mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		switch op % 5 {
		case 0:
			data, err := b.Load(ctx, h, 5, 10)
			if err == nil && len(data) != 10 {
				t.Fatalf("Load of 10 bytes returned %d", len(data))
			}
		case 1:
			fi, err := b.Stat(ctx, h)
			if err == nil && fi.Size < 0 {
				t.Fatalf("Stat returned size %d", fi.Size)
			}
		case 2:
			err := b.List(ctx, storage.Pack, func(fi storage.FileInfo) error {
				if (storage.Handle{Type: storage.Pack, Name: fi.Name}).Validate() != nil || fi.Size < 0 {
					t.Fatalf("List reported %+v", fi)
				}
				return nil
			})
			_ = err
		case 3:
			data, err := b.LoadWhole(ctx, storage.Handle{Type: storage.Index, Name: name}, 16)
			if err == nil && len(data) > 16 {
				t.Fatalf("LoadWhole with limit 16 returned %d bytes", len(data))
			}
		case 4:
			rc, err := b.OpenStream(ctx, h, 0, 10)
			if err != nil {
				return
			}
			data, _ := io.ReadAll(io.LimitReader(rc, 1<<20))
			rc.Close()
			if len(data) > 10 {
				t.Fatalf("a stream of 10 bytes gave %d", len(data))
			}
		}
		if ctx.Err() != nil {
			t.Fatal("the client hung on an answer")
		}
	})
}
