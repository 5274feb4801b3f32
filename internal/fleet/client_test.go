package fleet

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A server that answers every lease request "queued" at once (instead of
// holding it up to the poll time) does not make the client ask again in
// a busy loop.
func TestLeaseQueuedAtOnce(t *testing.T) {
	var asked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(LeaseQueued{Ticket: "t", Position: 1})
	}))
	defer srv.Close()
	c := &Client{Base: srv.URL, Token: "x", Poll: 30 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	if _, err := c.Lease(ctx, "daily"); err == nil {
		t.Fatal("a lease that was never granted")
	}
	if n := asked.Load(); n > 3 {
		t.Fatalf("%d lease requests in 1.5 s to a server that answers at once", n)
	}
}

// A lease time so large that the renewal period would overflow (into a
// tiny one: renewals back to back) is bounded.
func TestLeaseHugeTTL(t *testing.T) {
	var renewed atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/renew") {
			renewed.Add(1)
		}
		if r.Method == http.MethodDelete {
			return
		}
		// 18446744074 s is 2^64 ns and a bit: ×1e9 wraps to 0.29 s
		json.NewEncoder(w).Encode(Lease{ID: "l1", Host: "h", Job: "daily", TTLSeconds: 18446744074})
	}))
	defer srv.Close()
	c := &Client{Base: srv.URL, Token: "x", Poll: time.Second}
	release, err := c.Acquire(context.Background(), "daily")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	release()
	if n := renewed.Load(); n != 0 {
		t.Fatalf("%d renewals in 0.7 s of a lease of 18446744074 s", n)
	}
}
