package idle

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A server that stops sending an answer, or stops reading an upload, is
// given up on after the timeout with Err's error; one that keeps sending
// slowly (each read within the timeout) is not, and a caller that takes
// its time between reads is not either.
func TestTransport(t *testing.T) {
	stall := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stall":
			w.Write([]byte("some"))
			w.(http.Flusher).Flush()
			<-stall
		case "/slow":
			for range 6 {
				w.Write([]byte("piece"))
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
		case "/unread":
			<-stall
		}
	}))
	defer srv.Close()
	defer close(stall) // before Close, which waits for the handlers
	c := &http.Client{Transport: Transport{Base: srv.Client().Transport, Timeout: 300 * time.Millisecond}}
	within := func(what string, f func() error) error {
		t.Helper()
		errc := make(chan error, 1)
		go func() { errc <- f() }()
		select {
		case err := <-errc:
			return err
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: hangs", what)
			return nil
		}
	}
	err := within("stalled body", func() error {
		resp, err := c.Get(srv.URL + "/stall")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "sent nothing") {
		t.Errorf("stalled body: %v", err)
	}
	err = within("unread upload", func() error {
		resp, err := c.Post(srv.URL+"/unread", "application/octet-stream", bytes.NewReader(make([]byte, 64<<20)))
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "sent nothing") {
		t.Errorf("unread upload: %v", err)
	}
	resp, err := c.Get(srv.URL + "/slow")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the caller's own pause is not the server's
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(got) != strings.Repeat("piece", 6) {
		t.Errorf("a slow but steady answer: %q %v", got, err)
	}
}
