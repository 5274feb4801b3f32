package fleetsrv

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/floe-backup/floe/internal/fleet"
)

type mailbox struct {
	mu   sync.Mutex
	msgs []string
	rcpt []string
	from []string
}

type session struct{ mb *mailbox }

func (s *session) Reset()        {}
func (s *session) Logout() error { return nil }
func (s *session) Mail(from string, _ *gosmtp.MailOptions) error {
	s.mb.mu.Lock()
	defer s.mb.mu.Unlock()
	s.mb.from = append(s.mb.from, from)
	return nil
}
func (s *session) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s.mb.mu.Lock()
	defer s.mb.mu.Unlock()
	s.mb.rcpt = append(s.mb.rcpt, to)
	return nil
}
func (s *session) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.mb.mu.Lock()
	defer s.mb.mu.Unlock()
	s.mb.msgs = append(s.mb.msgs, string(b))
	return nil
}

// A notification mailed through a real SMTP server (go-smtp) arrives with
// its subject and message, and a hostile host name cannot add headers.
func TestMailNotifier(t *testing.T) {
	mb := &mailbox{}
	srv := gosmtp.NewServer(gosmtp.BackendFunc(func(c *gosmtp.Conn) (gosmtp.Session, error) { return &session{mb: mb}, nil }))
	srv.Domain = "localhost"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	m := &Mail{Addr: ln.Addr().String(), From: "floe@example.com", To: []string{"ops@example.com", "oncall@example.com"}}
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	n := fleet.Notification{AlertKey: fleet.AlertKey{Kind: fleet.AlertJobFailed, Host: "db1\r\nBcc: evil@example.com", Job: "daily"},
		Event: fleet.EventFiring, Message: "job daily on db1 failed: disk full", Since: now, Time: now}
	if err := m.Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	mb.mu.Lock()
	defer mb.mu.Unlock()
	if len(mb.msgs) != 1 || len(mb.rcpt) != 2 || mb.from[0] != "floe@example.com" {
		t.Fatalf("mailbox: %d messages, rcpt %v, from %v", len(mb.msgs), mb.rcpt, mb.from)
	}
	msg := mb.msgs[0]
	for _, want := range []string{"Subject: [floe firing] job_failed db1  Bcc: evil@example.com daily", "disk full"} {
		if !strings.Contains(msg, want) {
			t.Errorf("mail lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "\r\nBcc:") {
		t.Errorf("a host name added a header:\n%s", msg)
	}
}

// The webhook retries 5xx answers and stops at a 4xx.
func TestWebhookRetries(t *testing.T) {
	var calls atomic.Int32
	var got fleet.Notification
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		_ = json.NewDecoder(r.Body).Decode(&got)
	}))
	defer ts.Close()
	wh := &Webhook{URL: ts.URL, Delay: 10 * time.Millisecond}
	n := fleet.Notification{AlertKey: fleet.AlertKey{Kind: fleet.AlertOverdue, Host: "web1", Job: "daily"}, Event: fleet.EventResolved, Message: "resolved"}
	if err := wh.Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 3 || got.Host != "web1" || got.Event != fleet.EventResolved {
		t.Fatalf("calls %d, got %+v", calls.Load(), got)
	}
	calls.Store(0)
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusForbidden)
	}))
	defer refuse.Close()
	if err := (&Webhook{URL: refuse.URL, Delay: time.Millisecond}).Notify(context.Background(), n); err == nil || calls.Load() != 1 {
		t.Fatalf("4xx: err %v after %d calls", err, calls.Load())
	}
}

// Alert evaluation over the service's state with a fake clock: a job
// becomes overdue, fires once, and resolves when a success comes.
func TestServiceAlertsFakeClock(t *testing.T) {
	f := newTestFleet(t, LeaseLimits{}, 0)
	c := newClock()
	f.svc.opts.Now = c.now
	ctx := context.Background()
	web1 := f.enroll(t, "web1", "fleet")
	rep := fleet.Run{Job: "daily", Task: fleet.TaskBackup, Started: c.t.Add(-time.Minute), Finished: c.t, Status: fleet.StatusOK, NextDue: c.t.Add(24 * time.Hour)}
	if err := web1.Report(ctx, rep); err != nil {
		t.Fatal(err)
	}
	var sent []fleet.Notification
	cfg := AlertConfig{Remind: 12 * time.Hour, Notifiers: []Notifier{notifierFunc(func(n fleet.Notification) { sent = append(sent, n) })}}
	eval := func() []fleet.Notification {
		n, err := f.svc.EvaluateAlerts(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := eval(); len(n) != 0 {
		t.Fatalf("alerts for a healthy fleet: %+v", n)
	}
	c.add(26 * time.Hour) // due at 24 h, slack 1 h
	if n := eval(); len(n) != 1 || n[0].Kind != fleet.AlertOverdue || n[0].Event != fleet.EventFiring {
		t.Fatalf("overdue: %+v", n)
	}
	c.add(time.Hour)
	if n := eval(); len(n) != 0 {
		t.Fatalf("repeated: %+v", n)
	}
	rep.Started, rep.Finished, rep.NextDue = c.t.Add(-time.Minute), c.t, c.t.Add(24*time.Hour)
	if err := web1.Report(ctx, rep); err != nil {
		t.Fatal(err)
	}
	if n := eval(); len(n) != 1 || n[0].Event != fleet.EventResolved {
		t.Fatalf("resolved: %+v", n)
	}
	if len(sent) != 2 {
		t.Fatalf("notifier got %d", len(sent))
	}
}

type notifierFunc func(fleet.Notification)

func (f notifierFunc) Notify(_ context.Context, n fleet.Notification) error { f(n); return nil }
