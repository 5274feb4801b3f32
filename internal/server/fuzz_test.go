package server_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/remote"
)

// FuzzParsePath: a path that parses names a valid repository and handle
// and prints back as itself; nothing else parses.
func FuzzParsePath(f *testing.F) {
	n := strings.Repeat("0", 64)
	for _, s := range []string{"/fleet/", "/fleet/config", "/fleet/data/", "/fleet/data/" + n,
		"/fleet/../x", "//", "/a/b/c/d", "/fleet/keys/" + n + "/", "/.floe-server/tokens.json", "/f/data/" + strings.ToUpper(n)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		r, err := server.ParsePath(p)
		if err != nil {
			return
		}
		if server.ValidRepoName(r.Repo) != nil {
			t.Fatalf("ParsePath(%q): repository %q", p, r.Repo)
		}
		switch r.Kind {
		case server.RouteObject:
			if r.Handle.Validate() != nil {
				t.Fatalf("ParsePath(%q): invalid handle %v", p, r.Handle)
			}
		case server.RouteList:
			if storage.ValidateListType(r.Handle.Type) != nil {
				t.Fatalf("ParsePath(%q): list of %q", p, r.Handle.Type)
			}
		}
		if r.String() != p {
			t.Fatalf("ParsePath(%q) prints back as %q", p, r.String())
		}
		if strings.Contains(p, "..") || strings.Contains(p, "//") || strings.Contains(p, "\\") {
			t.Fatalf("ParsePath accepted %q", p)
		}
	})
}

// FuzzRouter sends arbitrary requests through the whole handler: it never
// panics, and a request that is refused before storage (bad path, method,
// token, role, size) never touches it.
func FuzzRouter(f *testing.F) {
	repos := newMemRepos("fleet")
	state := f.TempDir()
	tokens, err := server.OpenTokenStore(state)
	if err != nil {
		f.Fatal(err)
	}
	backup, _, _ := tokens.Add("fleet", "web1", server.RoleBackup)
	admin, _, _ := tokens.Add("fleet", "adm", server.RoleAdmin)
	// with the format verifier, as floe serve runs: uploads go through
	// the name check and the one-pass pack verification in memory
	h, err := server.New(server.Options{Repos: repos, Tokens: tokens, MaxObjectSize: 1 << 20, Verifier: server.NewFormatVerifier()})
	if err != nil {
		f.Fatal(err)
	}
	n := strings.Repeat("a", 64)
	f.Add("GET", "/fleet/config", 0, "", int64(-1))
	f.Add("PUT", "/fleet/data/"+n, 1, "data", int64(4))
	f.Add("DELETE", "/fleet/data/"+n, 1, "", int64(0))
	f.Add("PUT", "/fleet/data/"+nameOf([]byte("not a pack")), 1, "not a pack", int64(10))
	f.Add("PUT", "/fleet/index/"+nameOf([]byte("not an index")), 1, "not an index", int64(12))
	f.Add("PUT", "/fleet/data/"+n, 2, "x", int64(1<<40))
	f.Add("GET", "/fleet/data/?offset=-1", 2, "", int64(0))
	f.Add("HEAD", "/fleet/../../etc/passwd", 2, "", int64(0))
	f.Fuzz(func(t *testing.T, method, target string, tokIdx int, body string, length int64) {
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		req, err := http.NewRequestWithContext(context.Background(), method, "https://x"+target, bytes.NewReader([]byte(body)))
		if err != nil {
			return
		}
		req.ContentLength = length
		if length < 0 {
			req.ContentLength = -1
		}
		switch tokIdx % 4 {
		case 1:
			req.Header.Set("Authorization", "Bearer "+backup)
		case 2:
			req.Header.Set("Authorization", "Bearer "+admin)
		case 3:
			req.Header.Set("Authorization", "Bearer "+admin[:len(admin)-1]+"x")
		}
		before := repos.calls.Load()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		touched := repos.calls.Load() != before
		code := w.Code
		refusedEarly := code == http.StatusBadRequest && req.URL.RawPath != "" ||
			code == http.StatusUnauthorized || code == http.StatusForbidden ||
			code == http.StatusMethodNotAllowed || code == http.StatusRequestEntityTooLarge ||
			code == http.StatusLengthRequired
		if _, perr := server.ParsePath(req.URL.Path); perr != nil {
			refusedEarly = true
			if code != http.StatusBadRequest {
				t.Fatalf("%s %q: %d for a bad path", method, target, code)
			}
		}
		if refusedEarly && touched {
			t.Fatalf("%s %q: answered %d but touched storage", method, target, code)
		}
	})
}

// FuzzParseJournal: whatever the upload journal holds (a line cut off by
// a crash, garbage), reading it neither panics nor reports a record
// without a name or one that was removed.
func FuzzParseJournal(f *testing.F) {
	n := strings.Repeat("a", 64)
	f.Add([]byte(`{"name":"` + n + `","token":"t","host":"web1","time":"2026-01-01T00:00:00Z"}` + "\n"))
	f.Add([]byte(`{"name":"` + n + `","time":"2026-01-01T00:00:00Z"}` + "\n" + `{"name":"` + n + `","removed":true}` + "\n" + `{"na`))
	f.Add([]byte("\n\n{}\n[1,2]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := server.ParseJournal(data)
		if err != nil {
			return
		}
		for name, rec := range m {
			if name == "" || rec.Name != name || rec.Removed {
				t.Fatalf("record %q: %+v", name, rec)
			}
		}
	})
}

// FuzzParseMarker: whatever keys a bucket lists under a repository's
// upload markers (damaged, or written by whoever controls the storage),
// decoding them neither panics nor yields a record without a name or
// under another name's directory; a record written decodes to itself.
func FuzzParseMarker(f *testing.F) {
	n := strings.Repeat("b", 64)
	rec := server.UploadRecord{Name: n, Token: "t", Host: "web1", Time: time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC), Size: 42}
	f.Add(server.MarkerKey("snapshots", rec), "web1")
	f.Add(".floe-uploads/snapshots/x/00000000000000000001-e30", "")
	f.Add(".floe-uploads/snapshots/"+n+"/1-!!", "")
	f.Fuzz(func(t *testing.T, key, host string) {
		if got, ok := server.ParseMarker(key); ok {
			if got.Name == "" || path.Base(path.Dir(key)) != got.Name {
				t.Fatalf("key %q: record %+v", key, got)
			}
		}
		if strings.ContainsAny(host, "/") || !utf8.ValidString(host) {
			return // JSON keeps valid UTF-8 only, as tokens.json does
		}
		r := rec
		r.Host = host
		got, ok := server.ParseMarker(server.MarkerKey("index", r))
		if !ok || got.Name != r.Name || got.Host != host || !got.Time.Equal(r.Time) || got.Size != r.Size {
			t.Fatalf("record %+v came back as %+v, %v", r, got, ok)
		}
	})
}

// Who uploaded what: admin and restore credentials read it with
// ?uploads=1, a backup credential may not; removals end a record.
func TestUploadJournal(t *testing.T) {
	repos, err := server.NewRootDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, repos, server.Options{})
	ctx := context.Background()
	admin := s.client(t, "fleet", s.token(t, "fleet", "admin"))
	if _, err := remote.Create(ctx, s.url+"/fleet", remote.Options{Token: s.token(t, "fleet", "admin"), Fingerprint: s.fp, Retries: 1}); err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.tokens.Add("fleet", "web7", server.RoleBackup)
	if err != nil {
		t.Fatal(err)
	}
	web7 := s.client(t, "fleet", tok)
	h, data := object(t, 2000)
	before := time.Now()
	if err := web7.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	origins, err := admin.Origins(ctx, storage.Pack)
	if err != nil {
		t.Fatal(err)
	}
	og, ok := origins[h.Name]
	if !ok || og.Host != "web7" || og.Credential != tok[5:21] || og.Received.Before(before.Add(-time.Second)) || og.Received.After(time.Now()) {
		t.Errorf("origin %+v (ok %v)", og, ok)
	}
	if _, err := web7.Origins(ctx, storage.Pack); !errors.Is(err, remote.ErrForbidden) {
		t.Errorf("a backup token reads origins: %v", err)
	}
	if err := admin.Remove(ctx, h); err != nil {
		t.Fatal(err)
	}
	if origins, err := admin.Origins(ctx, storage.Pack); err != nil || len(origins) != 0 {
		t.Errorf("after remove: %v %v", origins, err)
	}
}
