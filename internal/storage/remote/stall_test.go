package remote

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/storage"
)

// endless writes until the client goes away.
func endless(w http.ResponseWriter, r *http.Request) {
	buf := make([]byte, 64<<10)
	for {
		if _, err := w.Write(buf); err != nil {
			return
		}
	}
}

// A server that sends more than asked, or never ends its answer, makes a
// request fail after at most a bound of bytes, never read forever into
// memory.
func TestHostileEndlessAnswers(t *testing.T) {
	ctx := context.Background()
	b := hostile(t, endless, Options{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := b.Load(ctx, hostileHandle, 0, 100); err == nil || !strings.Contains(err.Error(), "more than") {
			t.Errorf("endless answer to a range of 100 bytes: %v", err)
		}
		if _, err := b.LoadWhole(ctx, hostileIndex, 1<<20); !errors.Is(err, storage.ErrTooLarge) {
			t.Errorf("endless answer to a whole load: %v", err)
		}
		rc, err := b.OpenStream(ctx, hostileHandle, 0, downloadMin)
		if err == nil {
			// no Content-Length: the body is cut off at the length asked
			buf := make([]byte, 1<<20)
			var total int64
			for total <= downloadMin {
				n, err := rc.Read(buf)
				total += int64(n)
				if err != nil {
					break
				}
			}
			rc.Close()
			if total > downloadMin {
				t.Errorf("a stream of %d bytes read %d", downloadMin, total)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the client reads an endless answer")
	}
	// an endless list is refused once it is longer than any list can be
	b2 := hostile(t, func(w http.ResponseWriter, r *http.Request) {
		line := []byte(`{"name":"` + hostileHandle.Name + `","size":1}` + "\n")
		for {
			if _, err := w.Write(line); err != nil {
				return
			}
		}
	}, Options{})
	saved := maxListAnswer
	maxListAnswer = 1 << 20
	defer func() { maxListAnswer = saved }()
	if err := b2.List(ctx, storage.Pack, func(storage.FileInfo) error { return nil }); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("endless list: %v", err)
	}
}

// A server that stops sending (the answer's headers, or its body half
// way) is given up on after the idle timeout, for every kind of request:
// the client never hangs, and says why.
func TestHostileStall(t *testing.T) {
	ctx := context.Background()
	stall := make(chan struct{})
	defer close(stall)
	for _, c := range []struct {
		name string
		h    http.HandlerFunc
	}{
		{"headers", func(w http.ResponseWriter, r *http.Request) { <-stall }},
		{"body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5000000")
			w.Header().Set(headerSizeForTest, "5000000")
			w.Write(make([]byte, 1000))
			w.(http.Flusher).Flush()
			<-stall
		}},
		{"upload never read", func(w http.ResponseWriter, r *http.Request) { <-stall }},
	} {
		b := hostile(t, c.h, Options{IdleTimeout: 300 * time.Millisecond})
		ops := map[string]func() error{
			"load":         func() error { _, err := b.Load(ctx, hostileHandle, 0, 5000000); return err },
			"stream":       func() error { return readStream(b, 5000000) },
			"small stream": func() error { return readStream(b, 0) },
			"list":         func() error { return b.List(ctx, storage.Pack, func(storage.FileInfo) error { return nil }) },
			// 64 MiB: more than TCP and TLS buffer when nobody reads
			"upload": func() error { return b.Save(ctx, hostileHandle, make([]byte, 64<<20)) },
			"save":   func() error { return b.Save(ctx, hostileIndex, make([]byte, 8<<20)) },
		}
		if c.name != "upload never read" {
			delete(ops, "upload")
			delete(ops, "save")
		} else {
			ops = map[string]func() error{"upload": ops["upload"], "save": ops["save"]}
		}
		for name, op := range ops {
			errc := make(chan error, 1)
			go func() { errc <- op() }()
			select {
			case err := <-errc:
				if err == nil || !strings.Contains(err.Error(), "sent nothing") && !strings.Contains(err.Error(), "timeout") {
					t.Errorf("%s, server stalls (%s): %v, want a timeout", name, c.name, err)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("%s: the client hangs on a server that stalls (%s)", name, c.name)
			}
		}
	}
}

// readStream opens a stream of the hostile object (length 0: to its end)
// and reads it until an error, which it returns.
func readStream(b *Backend, length int64) error {
	rc, err := b.OpenStream(context.Background(), hostileHandle, 0, length)
	if err != nil {
		return err
	}
	defer rc.Close()
	buf := make([]byte, 1<<20)
	for {
		if _, err := rc.Read(buf); err != nil {
			return err
		}
	}
}

const headerSizeForTest = "Floe-Size"
