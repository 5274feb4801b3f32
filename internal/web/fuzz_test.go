package web

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// countingSource counts the calls that reach the fleet's state.
type countingSource struct {
	*fakeSource
	calls atomic.Int64
}

func (s *countingSource) Status(ctx context.Context) (fleet.StatusAnswer, error) {
	s.calls.Add(1)
	return s.fakeSource.Status(ctx)
}

func (s *countingSource) Runs(ctx context.Context, host string, since time.Time, limit int) ([]fleet.RunRecord, error) {
	s.calls.Add(1)
	return s.fakeSource.Runs(ctx, host, since, limit)
}

func (s *countingSource) Repos(ctx context.Context) ([]string, error) {
	s.calls.Add(1)
	return s.fakeSource.Repos(ctx)
}

func (s *countingSource) RepoStats(ctx context.Context, repo string) (fleet.RepoStats, error) {
	s.calls.Add(1)
	return s.fakeSource.RepoStats(ctx, repo)
}

func (s *countingSource) Accounting(ctx context.Context) ([]fleet.AccountingRow, error) {
	s.calls.Add(1)
	return s.fakeSource.Accounting(ctx)
}

// FuzzDashboard sends arbitrary requests (method, path and query, cookie
// header, form body) to the dashboard, logged in or not: it never panics;
// without a live session nothing reaches the fleet's state and no session
// is handed out but by a login with the login CSRF cookie and a good
// token; and a logged-in POST without the session's CSRF token changes
// nothing (the session survives).
func FuzzDashboard(f *testing.F) {
	src := &countingSource{fakeSource: newFakeSource(3, time.Now())}
	h := New(Options{Source: src, Auth: testAuth})
	const sid, csrf = "fuzz-session", "fuzz-csrf"
	f.Add("GET", "/ui/api/status", "", "", 0)
	f.Add("GET", "/ui/host?name=host0001", "floe_session=fuzz-session", "", 1)
	f.Add("POST", "/ui/logout", "floe_session=fuzz-session", "csrf=wrong", 1)
	f.Add("POST", "/ui/login", "floe_login_csrf=abc", "csrf=abc&token="+goodToken, 0)
	f.Add("GET", "/ui/api/runs?limit=99999999999999999999&host=%00", "floe_session=fuzz-session", "", 1)
	f.Add("GET", "/ui/static/../../web.go", "", "", 0)
	f.Add("GET", "/ui/accounting.csv", "floe_session=x; floe_session=fuzz-session", "", 0)
	f.Fuzz(func(t *testing.T, method, target, cookie, body string, mode int) {
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		req, err := http.NewRequest(method, "http://x"+target, strings.NewReader(body))
		if err != nil {
			return
		}
		loggedIn := mode%2 != 0
		h.mu.Lock()
		delete(h.sessions, sid)
		if loggedIn {
			h.sessions[sid] = &session{who: "fuzz", csrf: csrf, expires: time.Now().Add(time.Hour)}
		}
		h.mu.Unlock()
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		if method == http.MethodPost {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		// what the handler reads of the form, read the same way
		form, _ := http.NewRequest(method, "http://x/", strings.NewReader(body))
		form.Header.Set("Content-Type", req.Header.Get("Content-Type"))
		formCSRF, formToken := form.PostFormValue("csrf"), strings.TrimSpace(form.PostFormValue("token"))
		before := src.calls.Load()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		reached := src.calls.Load() != before
		for _, c := range w.Result().Cookies() {
			if c.Name == sessionCookie && c.Value != "" && !(formToken == goodToken && req.URL.Path == "/ui/login") {
				t.Fatalf("%s %q: a session without a login: %v", method, target, c)
			}
		}
		withSession := loggedIn && hasCookie(req, sessionCookie, sid)
		if reached && !withSession {
			t.Fatalf("%s %q (cookie %q): the fleet's state was read without a session", method, target, cookie)
		}
		if withSession && method == http.MethodPost && formCSRF != csrf {
			h.mu.Lock()
			_, alive := h.sessions[sid]
			h.mu.Unlock()
			if !alive && w.Code != http.StatusNotFound && w.Code != http.StatusMethodNotAllowed {
				t.Fatalf("POST %q without the CSRF token ended the session (%d)", target, w.Code)
			}
		}
	})
}

// hasCookie reports whether req carries a cookie name=value (of several
// with the name, Go's Request.Cookie takes the first).
func hasCookie(req *http.Request, name, value string) bool {
	c, err := req.Cookie(name)
	return err == nil && c.Value == value
}
