package snapshot

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/testutil"
)

func TestSelect(t *testing.T) {
	ctx := context.Background()
	r, _ := testutil.NewRepo(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var ids []hash.ID
	for i, s := range []struct {
		host string
		tags []string
		path string
	}{{"a", []string{"daily"}, "/etc"}, {"b", nil, "/etc"}, {"a", []string{"weekly"}, "/srv"}, {"a", []string{"daily"}, "/srv"}} {
		id, err := Save(ctx, r, &Snapshot{Version: 2, Time: base.Add(time.Duration(i) * time.Hour), Hostname: s.host,
			Tags: s.tags, Paths: []string{s.path}, Tree: testRef(byte(i + 1))})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	got := func(specs []string, f Filter) []hash.ID {
		t.Helper()
		sel, errs, err := Select(ctx, r, specs, f)
		if err != nil || len(errs) > 0 {
			t.Fatalf("Select(%v, %+v): %v %v", specs, f, errs, err)
		}
		var out []hash.ID
		for _, s := range sel {
			out = append(out, s.ID)
		}
		return out
	}
	same := func(a []hash.ID, b ...hash.ID) bool {
		if len(a) != len(b) {
			return false
		}
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	if g := got(nil, Filter{}); !same(g, ids...) {
		t.Errorf("all: %v, want every snapshot oldest first", g)
	}
	if g := got(nil, Filter{Hosts: []string{"a"}, Tags: ParseTagLists([]string{"daily"})}); !same(g, ids[0], ids[3]) {
		t.Errorf("host a, tag daily: %v", g)
	}
	if g := got(nil, Filter{Paths: []string{"/srv"}}); !same(g, ids[2], ids[3]) {
		t.Errorf("path /srv: %v", g)
	}
	// specs: in the order given, each once; "latest" after the filter
	if g := got([]string{ids[2].String(), "latest", ids[2].String()[:10]}, Filter{Hosts: []string{"b"}}); !same(g, ids[2], ids[1]) {
		t.Errorf("specs: %v, want %v %v", g, ids[2], ids[1])
	}
	if _, _, err := Select(ctx, r, []string{"latest"}, Filter{Hosts: []string{"nobody"}}); !errors.Is(err, ErrNoSnapshot) {
		t.Errorf("latest of nothing: %v, want ErrNoSnapshot", err)
	}
	if g := got(nil, Filter{Hosts: []string{"nobody"}}); len(g) != 0 {
		t.Errorf("filter matching nothing: %v", g)
	}
}
