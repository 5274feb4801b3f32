// Package web is the fleet dashboard of `floe serve`, under /ui/: the
// fleet overview, a page per host with its run history and charts, and a
// login with a viewer or admin token. Its assets are embedded (no CDN, no
// build step: vanilla JavaScript drawing SVG), so it works offline. It
// holds no keys; it reads the fleet's state through Source.
//
// Security: a session cookie (HttpOnly, SameSite=Strict, Secure over
// TLS) after login; every POST carries a CSRF token; every string a host
// supplied reaches the page as text (html/template escapes, the scripts
// use textContent, never innerHTML), and a Content-Security-Policy allows
// only the dashboard's own scripts.
package web

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"html/template"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

//go:embed assets
var assets embed.FS

// Prefix is where the dashboard is mounted.
const Prefix = "/ui/"

// Source is the fleet's state.
type Source interface {
	Status(ctx context.Context) (fleet.StatusAnswer, error)
	Runs(ctx context.Context, host string, since time.Time, limit int) ([]fleet.RunRecord, error)
	// Repos lists the fleet's repositories; RepoStats is one's storage
	// and growth; Accounting the charge-back rows (per month and host).
	Repos(ctx context.Context) ([]string, error)
	RepoStats(ctx context.Context, repo string) (fleet.RepoStats, error)
	Accounting(ctx context.Context) ([]fleet.AccountingRow, error)
}

// Authenticate checks a token typed at the login and returns who it is
// (shown on the page); an error refuses the login. Only viewer and admin
// tokens should pass.
type Authenticate func(token string) (who string, err error)

// Options configure the dashboard.
type Options struct {
	Source Source
	Auth   Authenticate
	// SessionTTL is how long a session lasts (default 12 h).
	SessionTTL time.Duration
	Now        func() time.Time
}

// Handler serves the dashboard.
type Handler struct {
	opts  Options
	pages *template.Template
	mux   *http.ServeMux

	mu       sync.Mutex
	sessions map[string]*session
}

type session struct {
	who     string
	csrf    string
	expires time.Time
}

const (
	sessionCookie = "floe_session"
	loginCSRF     = "floe_login_csrf"
)

// New returns the dashboard's handler.
func New(opts Options) *Handler {
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 12 * time.Hour
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	h := &Handler{opts: opts, sessions: map[string]*session{}, mux: http.NewServeMux()}
	h.pages = template.Must(template.New("").ParseFS(assets, "assets/*.html"))
	static, _ := fs.Sub(assets, "assets/static")
	h.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	h.mux.HandleFunc("GET /ui/login", h.loginPage)
	h.mux.HandleFunc("POST /ui/login", h.login)
	h.mux.HandleFunc("POST /ui/logout", h.auth(h.logout))
	h.mux.HandleFunc("GET /ui/{$}", h.auth(h.overview))
	h.mux.HandleFunc("GET /ui/host", h.auth(h.hostPage))
	h.mux.HandleFunc("GET /ui/api/status", h.auth(h.apiStatus))
	h.mux.HandleFunc("GET /ui/api/runs", h.auth(h.apiRuns))
	h.mux.HandleFunc("GET /ui/repo", h.auth(h.repoPage))
	h.mux.HandleFunc("GET /ui/accounting", h.auth(h.accountingPage))
	h.mux.HandleFunc("GET /ui/api/repos", h.auth(h.apiRepos))
	h.mux.HandleFunc("GET /ui/api/repo", h.auth(h.apiRepo))
	h.mux.HandleFunc("GET /ui/api/accounting", h.auth(h.apiAccounting))
	h.mux.HandleFunc("GET /ui/accounting.csv", h.auth(h.accountingCSV))
	h.mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	return h
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	if r.URL.Path == "/ui" {
		http.Redirect(w, r, Prefix, http.StatusFound)
		return
	}
	h.mux.ServeHTTP(w, r)
}

func randomString() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func secure(r *http.Request) bool { return r.TLS != nil }

func (h *Handler) session(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.sessions[c.Value]
	if s == nil {
		return nil
	}
	if !h.opts.Now().Before(s.expires) {
		delete(h.sessions, c.Value)
		return nil
	}
	return s
}

func (h *Handler) auth(fn func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := h.session(r)
		if s == nil {
			if strings.HasPrefix(r.URL.Path, "/ui/api/") {
				http.Error(w, "log in first", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost && !validCSRF(r.PostFormValue("csrf"), s.csrf) {
			http.Error(w, "bad or missing CSRF token", http.StatusForbidden)
			return
		}
		fn(w, r, s)
	}
}

func validCSRF(got, want string) bool {
	return got != "" && want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

type pageData struct {
	Title string
	Who   string
	CSRF  string
	Host  string
	Repo  string
	Error string
}

func (h *Handler) render(w http.ResponseWriter, status int, name string, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = h.pages.ExecuteTemplate(w, name, d)
}

// loginPage sets a login CSRF cookie and puts the same value in the form
// (double submit): a cross-site form cannot read the cookie to copy it.
func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	tok := randomString()
	http.SetCookie(w, &http.Cookie{Name: loginCSRF, Value: tok, Path: "/ui/", HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode, MaxAge: 3600})
	h.render(w, http.StatusOK, "login.html", pageData{Title: "Log in", CSRF: tok})
}

func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	c, err := r.Cookie(loginCSRF)
	if err != nil || !validCSRF(r.PostFormValue("csrf"), c.Value) {
		http.Error(w, "bad or missing CSRF token: reload the login page", http.StatusForbidden)
		return
	}
	who, err := h.opts.Auth(strings.TrimSpace(r.PostFormValue("token")))
	if err != nil {
		tok := randomString()
		http.SetCookie(w, &http.Cookie{Name: loginCSRF, Value: tok, Path: "/ui/", HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode, MaxAge: 3600})
		h.render(w, http.StatusUnauthorized, "login.html", pageData{Title: "Log in", CSRF: tok, Error: "This token may not see the fleet (a viewer or admin token is needed)."})
		return
	}
	id := randomString()
	h.mu.Lock()
	now := h.opts.Now()
	for k, s := range h.sessions {
		if !now.Before(s.expires) {
			delete(h.sessions, k)
		}
	}
	h.sessions[id] = &session{who: who, csrf: randomString(), expires: now.Add(h.opts.SessionTTL)}
	h.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/ui/", HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode, MaxAge: int(h.opts.SessionTTL / time.Second)})
	http.SetCookie(w, &http.Cookie{Name: loginCSRF, Value: "", Path: "/ui/", MaxAge: -1})
	http.Redirect(w, r, Prefix, http.StatusSeeOther)
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request, s *session) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		h.mu.Lock()
		delete(h.sessions, c.Value)
		h.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/ui/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request, s *session) {
	h.render(w, http.StatusOK, "overview.html", pageData{Title: "Fleet", Who: s.who, CSRF: s.csrf})
}

func (h *Handler) hostPage(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.URL.Query().Get("name")
	if fleet.ValidName("host", name) != nil {
		http.Error(w, "bad host name", http.StatusBadRequest)
		return
	}
	h.render(w, http.StatusOK, "host.html", pageData{Title: name, Who: s.who, CSRF: s.csrf, Host: name})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

func (h *Handler) apiStatus(w http.ResponseWriter, r *http.Request, s *session) {
	st, err := h.opts.Source.Status(r.Context())
	if err != nil {
		http.Error(w, "fleet state unavailable", http.StatusInternalServerError)
		return
	}
	writeJSON(w, st)
}

func (h *Handler) apiRuns(w http.ResponseWriter, r *http.Request, s *session) {
	limit := 200
	if v, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && v > 0 && v <= 5000 {
		limit = v
	}
	runs, err := h.opts.Source.Runs(r.Context(), r.URL.Query().Get("host"), time.Time{}, limit)
	if err != nil {
		http.Error(w, "fleet state unavailable", http.StatusInternalServerError)
		return
	}
	writeJSON(w, runs)
}

func (h *Handler) repoPage(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.URL.Query().Get("name")
	if fleet.ValidName("repository", name) != nil {
		http.Error(w, "bad repository name", http.StatusBadRequest)
		return
	}
	h.render(w, http.StatusOK, "repo.html", pageData{Title: "Repository " + name, Who: s.who, CSRF: s.csrf, Repo: name})
}

func (h *Handler) accountingPage(w http.ResponseWriter, r *http.Request, s *session) {
	h.render(w, http.StatusOK, "accounting.html", pageData{Title: "Accounting", Who: s.who, CSRF: s.csrf})
}

func (h *Handler) apiRepos(w http.ResponseWriter, r *http.Request, s *session) {
	repos, err := h.opts.Source.Repos(r.Context())
	if err != nil {
		http.Error(w, "fleet state unavailable", http.StatusInternalServerError)
		return
	}
	if repos == nil {
		repos = []string{}
	}
	writeJSON(w, repos)
}

func (h *Handler) apiRepo(w http.ResponseWriter, r *http.Request, s *session) {
	st, err := h.opts.Source.RepoStats(r.Context(), r.URL.Query().Get("name"))
	if err != nil {
		http.Error(w, "repository state unavailable", http.StatusInternalServerError)
		return
	}
	writeJSON(w, st)
}

func (h *Handler) apiAccounting(w http.ResponseWriter, r *http.Request, s *session) {
	rows, err := h.opts.Source.Accounting(r.Context())
	if err != nil {
		http.Error(w, "accounting unavailable", http.StatusInternalServerError)
		return
	}
	writeJSON(w, rows)
}

// accountingCSV is the accounting table for charge-back, one row per
// month, repository and host.
func (h *Handler) accountingCSV(w http.ResponseWriter, r *http.Request, s *session) {
	rows, err := h.opts.Source.Accounting(r.Context())
	if err != nil {
		http.Error(w, "accounting unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="floe-accounting.csv"`)
	w.Header().Set("Cache-Control", "no-store")
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"month", "repository", "host", "runs", "protected_bytes", "new_stored_bytes", "share", "attributed_bytes"})
	for _, row := range rows {
		_ = cw.Write([]string{row.Month, csvText(row.Repo), csvText(row.Host), strconv.Itoa(row.Runs),
			strconv.FormatInt(row.ProtectedBytes, 10), strconv.FormatInt(row.NewStoredBytes, 10),
			strconv.FormatFloat(row.Share, 'f', 4, 64), strconv.FormatInt(row.AttributedBytes, 10)})
	}
	cw.Flush()
}

// csvText keeps a host-supplied name from being taken for a formula by a
// spreadsheet (CSV injection): one starting with = + - @ or a tab gets a
// leading apostrophe.
func csvText(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
