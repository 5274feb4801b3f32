package fleetsrv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/smtp"
	"strings"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// Notifier sends a notification somewhere.
type Notifier interface {
	Notify(ctx context.Context, n fleet.Notification) error
}

// Webhook POSTs each notification as JSON, retrying failures (connection
// errors and 5xx answers; a 4xx is final).
type Webhook struct {
	URL     string
	Client  *http.Client
	Retries int           // default 4
	Delay   time.Duration // first retry delay, doubling; default 1 s
}

// Notify posts n.
func (w *Webhook) Notify(ctx context.Context, n fleet.Notification) error {
	body, err := json.Marshal(n)
	if err != nil {
		return err
	}
	hc := w.Client
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	retries, delay := w.Retries, w.Delay
	if retries <= 0 {
		retries = 4
	}
	if delay <= 0 {
		delay = time.Second
	}
	var last error
	for attempt := 0; attempt <= retries; attempt++ {
		if attempt > 0 {
			d := delay<<(attempt-1) + rand.N(delay/2+1)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("webhook: %w", err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "floe-serve")
		res, err := hc.Do(req)
		if err != nil {
			last = fmt.Errorf("webhook: %w", err)
			continue
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
		res.Body.Close()
		switch {
		case res.StatusCode < 300:
			return nil
		case res.StatusCode >= 500 || res.StatusCode == http.StatusTooManyRequests:
			last = fmt.Errorf("webhook: HTTP %d", res.StatusCode)
		default:
			return fmt.Errorf("webhook: refused with HTTP %d", res.StatusCode)
		}
	}
	return last
}

// Mail sends each notification as a plain-text mail over SMTP (STARTTLS
// when the server offers it; PLAIN authentication when User is set, which
// net/smtp allows only over TLS or to localhost).
type Mail struct {
	Addr     string // host:port
	From     string
	To       []string
	User     string
	Password string
}

// Notify mails n.
func (m *Mail) Notify(ctx context.Context, n fleet.Notification) error {
	host, _, err := net.SplitHostPort(m.Addr)
	if err != nil {
		return fmt.Errorf("mail: SMTP address %q: %w", m.Addr, err)
	}
	var auth smtp.Auth
	if m.User != "" {
		auth = smtp.PlainAuth("", m.User, m.Password, host)
	}
	for _, s := range append([]string{m.From}, m.To...) {
		if strings.ContainsAny(s, "\r\n") {
			return fmt.Errorf("mail: address with a line break")
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
		m.From, strings.Join(m.To, ", "), oneLine(n.Subject()), n.Time.Format(time.RFC1123Z))
	fmt.Fprintf(&b, "%s\r\n\r\nevent: %s\r\nkind:  %s\r\nhost:  %s\r\njob:   %s\r\nsince: %s\r\n", oneLine(n.Message), n.Event, n.Kind,
		oneLine(n.Host), oneLine(n.Job), n.Since.Format(time.RFC3339))
	done := make(chan error, 1)
	go func() { done <- smtp.SendMail(m.Addr, auth, m.From, m.To, []byte(b.String())) }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("mail via %s: %w", m.Addr, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// oneLine keeps host-supplied text out of the mail's structure.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
