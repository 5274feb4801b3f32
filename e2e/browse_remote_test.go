//go:build linux

package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// serverLoads returns how many loads `floe serve` has answered (its
// Prometheus metrics).
func serverLoads(t *testing.T, s *floeServer) int {
	t.Helper()
	resp, err := http.Get(s.metrics)
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), `floe_server_request_duration_seconds_count{op="load"} `); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metrics: %q: %v", sc.Text(), err)
			}
			return int(n)
		}
	}
	t.Fatal("metrics: no count of loads")
	return 0
}

// Browsing a snapshot through a floe server (ls, find, diff, restore
// --dry-run) and checking the repository read its trees by stretches of their packs: a few requests
// for a snapshot of 200 directories, where loading one tree at a time
// took one per directory.
func TestBrowseRemoteFewRequests(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer("--metrics-listen", "127.0.0.1:0")
	src := e.mkdir("src")
	for a := range 5 {
		for b := range 8 {
			for c := range 4 {
				d := filepath.Join(src, fmt.Sprintf("d%d", a), fmt.Sprintf("e%d", b), fmt.Sprintf("f%d", c))
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(d, "file.txt"), []byte(d), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	dirs := 5 + 5*8 + 5*8*4
	remote := func(args ...string) result {
		t.Helper()
		return s.remote("fleet", admin, append([]string{"--password-file", e.pwFile}, args...)...)
	}
	expectCode(t, remote("backup", src), 0)
	if err := os.WriteFile(filepath.Join(src, "d4", "e7", "f3", "file.txt"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	expectCode(t, remote("backup", src), 0)
	snaps := decodeJSON[snapshotList](t, remote("snapshots", "--json")).Snapshots
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots, want 2", len(snaps))
	}

	for _, c := range []struct {
		name  string
		args  []string
		check func(out string) bool
		extra int // loads beyond the trees and records: check reads each pack's header and the index
	}{
		{"ls", []string{"ls", "-l", "latest"}, func(out string) bool {
			return strings.Count(out, "/file.txt\n") == 5*8*4 && strings.Count(out, "drwx") >= dirs
		}, 0},
		{"find", []string{"find", "file.txt"}, func(out string) bool { return strings.Count(out, "file.txt") >= 2*(5*8*4) }, 0},
		{"diff", []string{"diff", snaps[0].ID, snaps[1].ID}, func(out string) bool { return strings.Contains(out, "d4/e7/f3/file.txt") }, 0},
		{"restore --dry-run", []string{"restore", "latest", "--target", e.path("nothere"), "--dry-run"}, func(out string) bool { return out != "" }, 0},
		{"check", []string{"check"}, func(out string) bool { return strings.Contains(out, "no problems found") }, 25},
	} {
		before := serverLoads(t, s)
		r := remote(c.args...)
		expectCode(t, r, 0)
		loads := serverLoads(t, s) - before
		if !c.check(r.stdout) {
			t.Errorf("%s: unexpected output:\n%.3000s", c.name, r.stdout)
		}
		// The trees of a snapshot, and the config, key and snapshot
		// records: 10 to 14 here; one tree at a time, ls took over 205.
		if loads > dirs/8+c.extra {
			t.Errorf("%s: %d loads from the server for %d directories", c.name, loads, dirs)
		}
		t.Logf("%s: %d loads for %d directories", c.name, loads, dirs)
	}
}
