//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// stats --by-host: what each host references, and what it alone costs.
func TestStatsByHost(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	shared := e.path("shared.bin")
	testutil.WriteRandom(t, shared, 2<<20, 51)
	data, err := os.ReadFile(shared)
	if err != nil {
		t.Fatal(err)
	}
	db := e.mkdir("db")
	testutil.WriteRandom(t, filepath.Join(db, "own"), 1<<20, 52)
	os.WriteFile(filepath.Join(db, "common"), data, 0o600)
	web := e.mkdir("web")
	testutil.WriteRandom(t, filepath.Join(web, "own"), 3<<20, 53)
	os.WriteFile(filepath.Join(web, "common"), data, 0o600)
	e.backup("--host", "db1", db)
	e.backup("--host", "db1", db) // a second snapshot counts its blobs once
	e.backup("--host", "web1", web)

	type cost struct {
		Host       string `json:"host"`
		Snapshots  int    `json:"snapshots"`
		Referenced struct {
			RawSize    uint64 `json:"raw_size"`
			StoredSize uint64 `json:"stored_size"`
		} `json:"referenced"`
		Own struct {
			RawSize    uint64 `json:"raw_size"`
			StoredSize uint64 `json:"stored_size"`
		} `json:"own"`
	}
	costs := decodeJSON[struct {
		Hosts []cost `json:"hosts"`
	}](t, e.ok("stats", "--by-host", "--json")).Hosts
	if len(costs) != 2 || costs[0].Host != "db1" || costs[1].Host != "web1" || costs[0].Snapshots != 2 {
		t.Fatalf("stats --by-host: %+v", costs)
	}
	near := func(what string, got, want uint64) {
		t.Helper()
		if got < want || got > want+want/20+16<<10 { // random data: stored ≈ raw, plus trees and tags
			t.Errorf("%s: %d bytes, want about %d", what, got, want)
		}
	}
	near("db1 referenced", costs[0].Referenced.StoredSize, 3<<20)
	near("db1 own", costs[0].Own.StoredSize, 1<<20)
	near("web1 referenced", costs[1].Referenced.StoredSize, 5<<20)
	near("web1 own", costs[1].Own.StoredSize, 3<<20)
	if costs[0].Own.RawSize < 1<<20 || costs[0].Own.RawSize > 1<<20+16<<10 {
		t.Errorf("db1 own raw: %d", costs[0].Own.RawSize)
	}

	r := e.ok("stats", "--by-host", "--host", "web1")
	if !strings.Contains(r.stdout, "web1") || strings.Contains(r.stdout, "db1") {
		t.Errorf("stats --by-host --host web1: %s", r)
	}
	expectCode(t, e.floe("stats", "--by-host", "latest"), 2)
}
