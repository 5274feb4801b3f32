package server

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestMountsAndReservedNames(t *testing.T) {
	if err := ValidRepoName("ui"); err == nil {
		t.Fatal("ui is the dashboard's path, not a repository name")
	}
	if err := ValidRepoName("uix"); err != nil {
		t.Fatal(err)
	}
	repos := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	mounted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	h := withMounts(repos, []Mount{{Prefixes: []string{"/_fleet/v1/", "/ui/"}, Handler: mounted}})
	for path, want := range map[string]int{"/_fleet/v1/status": 202, "/ui/": 202, "/ui": 202, "/uix/config": 418, "/fleet/config": 418, "/_fleet": 418} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != want {
			t.Errorf("%s: %d, want %d", path, rec.Code, want)
		}
	}
}
