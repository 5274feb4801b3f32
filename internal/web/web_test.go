package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// fakeSource is a fleet of n hosts (and a hostile one).
type fakeSource struct {
	jobs []fleet.JobStatus
	runs []fleet.RunRecord
}

func newFakeSource(n int, now time.Time) *fakeSource {
	s := &fakeSource{}
	states := []fleet.State{fleet.StateOK, fleet.StateOK, fleet.StateOK, fleet.StateRunning, fleet.StateOverdue, fleet.StateFailed, fleet.StateNever}
	for i := 0; i < n; i++ {
		host := fmt.Sprintf("host%04d", i)
		s.jobs = append(s.jobs, fleet.JobStatus{Host: host, Repo: "fleet", Job: "daily", State: states[i%len(states)],
			LastSuccess: now.Add(-time.Duration(i) * time.Minute), AgeSeconds: int64(i * 60), NextDue: now.Add(time.Hour), Size: int64(i) << 20})
	}
	s.jobs = append(s.jobs, fleet.JobStatus{Host: HostileName, Repo: "fleet", Job: "<i>job</i>", State: fleet.StateFailed})
	for i := 0; i < 30; i++ {
		st := fleet.StatusOK
		if i%7 == 3 {
			st = fleet.StatusFailed
		}
		start := now.Add(-time.Duration(30-i) * 24 * time.Hour)
		s.runs = append([]fleet.RunRecord{{Host: HostileName, Job: "daily", Task: fleet.TaskBackup, Start: start, End: start.Add(time.Duration(30+i*7) * time.Second),
			Status: st, Files: 100, BytesRead: 1 << 30, BytesNew: int64(i+1) << 20, BytesStored: int64(i+1) << 19, Version: "test"}}, s.runs...)
	}
	return s
}

// HostileName is a host name that would run a script if it were ever
// written into the page as HTML.
const HostileName = `<img src=x onerror="document.title='pwned'"><script>document.title='pwned'</script>`

func (s *fakeSource) Status(ctx context.Context) (fleet.StatusAnswer, error) {
	return fleet.StatusAnswer{Now: time.Now().UTC(), Jobs: s.jobs}, nil
}

func (s *fakeSource) Runs(ctx context.Context, host string, since time.Time, limit int) ([]fleet.RunRecord, error) {
	var out []fleet.RunRecord
	for _, r := range s.runs {
		if host == "" || r.Host == host {
			out = append(out, r)
		}
	}
	return out, nil
}

func (s *fakeSource) Repos(ctx context.Context) ([]string, error) { return []string{"fleet"}, nil }

func (s *fakeSource) RepoStats(ctx context.Context, repo string) (fleet.RepoStats, error) {
	by := map[string]int64{HostileName: 3 << 20, "host0001": 1 << 20, "": 4096}
	return fleet.ComputeRepoStats(repo, 4<<20+4096, 42, 100<<20, by, s.runs), nil
}

func (s *fakeSource) Accounting(ctx context.Context) ([]fleet.AccountingRow, error) {
	end := s.runs[0].End
	runs := append([]fleet.RunRecord{{Host: FormulaName, Job: "daily", Task: fleet.TaskBackup, Start: end, End: end, Status: fleet.StatusOK, BytesRead: 1 << 20, BytesStored: 1 << 20}}, s.runs...)
	return fleet.ComputeAccounting(runs, map[string]string{HostileName: "fleet", FormulaName: "fleet"}, map[string]int64{"fleet": 4 << 20}), nil
}

// FormulaName is a host name a spreadsheet would run as a formula if the
// CSV gave it as it is.
const FormulaName = "=HYPERLINK(\"http://evil/\",\"x\")"

const goodToken = "floe_0123456789abcdef_viewer"

func testAuth(tok string) (string, error) {
	if tok == goodToken {
		return "ops (viewer)", nil
	}
	return "", errors.New("no")
}

func newTestServer(t *testing.T, n int) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/ui/", New(Options{Source: newFakeSource(n, time.Now()), Auth: testAuth}))
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	res, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func login(t *testing.T, ts *httptest.Server, token string) (*http.Client, int) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	_, page := get(t, c, ts.URL+"/ui/login")
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf in login page: %s", page)
	}
	res, err := c.PostForm(ts.URL+"/ui/login", url.Values{"csrf": {m[1]}, "token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return c, res.StatusCode
}

func TestLoginSessionAndCSRF(t *testing.T) {
	ts := newTestServer(t, 3)
	// not logged in: pages redirect to the login, the API refuses
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := noRedirect.Get(ts.URL + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/ui/login" {
		t.Fatalf("unauthenticated overview: %d %s", res.StatusCode, res.Header.Get("Location"))
	}
	for _, p := range []string{"/ui/api/status", "/ui/api/repo?name=fleet", "/ui/api/repos", "/ui/api/accounting"} {
		if code, _ := get(t, http.DefaultClient, ts.URL+p); code != http.StatusUnauthorized {
			t.Fatalf("unauthenticated %s: %d", p, code)
		}
	}
	for _, p := range []string{"/ui/accounting.csv", "/ui/accounting", "/ui/repo?name=fleet"} {
		res, err := noRedirect.Get(ts.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusSeeOther {
			t.Fatalf("unauthenticated %s: %d", p, res.StatusCode)
		}
	}
	// a login without the CSRF token is refused, even with a good token
	res, err = http.PostForm(ts.URL+"/ui/login", url.Values{"token": {goodToken}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("login without CSRF: %d", res.StatusCode)
	}
	if _, code := login(t, ts, "floe_bad"); code != http.StatusUnauthorized {
		t.Fatalf("bad token login: %d", code)
	}
	c, code := login(t, ts, goodToken)
	if code != http.StatusOK {
		t.Fatalf("login: %d", code)
	}
	u, _ := url.Parse(ts.URL + "/ui/")
	var sess *http.Cookie
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == sessionCookie {
			sess = ck
		}
	}
	if sess == nil {
		t.Fatal("no session cookie")
	}
	// the jar does not keep the attributes: check the Set-Cookie header
	jar2, _ := cookiejar.New(nil)
	c2 := &http.Client{Jar: jar2, CheckRedirect: noRedirect.CheckRedirect}
	_, p2 := get(t, c2, ts.URL+"/ui/login")
	m := csrfRe.FindStringSubmatch(p2)
	res, err = c2.PostForm(ts.URL+"/ui/login", url.Values{"csrf": {m[1]}, "token": {goodToken}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	sc := strings.Join(res.Header.Values("Set-Cookie"), "\n")
	if !strings.Contains(sc, sessionCookie+"=") || !strings.Contains(sc, "HttpOnly") || !strings.Contains(sc, "SameSite=Strict") {
		t.Fatalf("session cookie attributes: %s", sc)
	}
	if code, body := get(t, c, ts.URL+"/ui/api/status"); code != http.StatusOK || !strings.Contains(body, "host0001") {
		t.Fatalf("status after login: %d", code)
	}
	// logout without the CSRF token is refused; with it, it ends the session
	res, err = c.PostForm(ts.URL+"/ui/logout", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusForbidden {
		t.Fatalf("logout without CSRF: %d", res.StatusCode)
	}
	_, ov := get(t, c, ts.URL+"/ui/")
	m = csrfRe.FindStringSubmatch(ov)
	if m == nil {
		t.Fatal("no csrf on the overview")
	}
	res, err = c.PostForm(ts.URL+"/ui/logout", url.Values{"csrf": {m[1]}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if code, _ := get(t, c, ts.URL+"/ui/api/status"); code != http.StatusUnauthorized {
		t.Fatalf("status after logout: %d", code)
	}
}

func TestHostileHostNameEscaped(t *testing.T) {
	ts := newTestServer(t, 1)
	c, _ := login(t, ts, goodToken)
	code, page := get(t, c, ts.URL+"/ui/host?name="+url.QueryEscape(HostileName))
	if code != http.StatusOK {
		t.Fatalf("host page: %d", code)
	}
	if strings.Contains(page, "<script>document") || strings.Contains(page, "<img src=x") {
		t.Fatalf("host name written as HTML:\n%s", page)
	}
	if !strings.Contains(page, "&lt;img src=x") {
		t.Fatalf("host name missing:\n%s", page)
	}
	// a repository name goes through the same escaping (and must be a valid name)
	if code, page := get(t, c, ts.URL+"/ui/repo?name="+url.QueryEscape(`<b>x</b>`)); code != http.StatusOK || strings.Contains(page, "<b>x</b>") {
		t.Fatalf("repository page with markup in the name: %d", code)
	}
	if code, _ := get(t, c, ts.URL+"/ui/repo?name="); code != http.StatusBadRequest {
		t.Fatalf("repository page without a name: %d", code)
	}
	res, err := c.Get(ts.URL + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Fatalf("CSP %q", csp)
	}
}

// Sessions end after SessionTTL (fake clock).
func TestSessionExpires(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	h := New(Options{Source: newFakeSource(1, now), Auth: testAuth, SessionTTL: time.Hour, Now: func() time.Time { return now }})
	mux := http.NewServeMux()
	mux.Handle("/ui/", h)
	ts := httptest.NewServer(mux)
	defer ts.Close()
	c, code := login(t, ts, goodToken)
	if code != http.StatusOK {
		t.Fatalf("login: %d", code)
	}
	if code, _ := get(t, c, ts.URL+"/ui/api/status"); code != http.StatusOK {
		t.Fatalf("in session: %d", code)
	}
	now = now.Add(61 * time.Minute)
	if code, _ := get(t, c, ts.URL+"/ui/api/status"); code != http.StatusUnauthorized {
		t.Fatalf("after the TTL: %d", code)
	}
}
