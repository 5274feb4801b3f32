//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// A host with a backup token writes a snapshot that claims to be db1's,
// dated 10 years ahead. snapshots shows who really uploaded it, check
// reports the date, and forget --keep-last 1 --host db1 keeps db1's real
// latest snapshot, not the forgery.
func TestServerUploader(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	web1 := s.token("fleet", "web1", "backup")
	db1 := s.token("fleet", "db1", "backup")
	woKey := s.writeOnlyKey(admin, "wo.key")
	src := e.mkdir("data")
	testutil.ManyFiles(t, src, 5, 3000, 7)

	backup := func(token, cache string, extra ...string) string {
		t.Helper()
		args := append([]string{"-r", s.url("fleet"), "--token-file", token, "--server-fingerprint", s.fingerprint,
			"--key-file", woKey, "backup", "--json"}, append(extra, src)...)
		r := e.runWith(runOpts{env: []string{"FLOE_CACHE_DIR=" + e.path(cache)}}, args...)
		expectCode(t, r, 0)
		return decodeJSON[backupOut](t, r).Snapshot
	}
	real1 := backup(db1, "cache-db1", "--host", "db1")
	future := time.Now().AddDate(10, 0, 0).UTC().Truncate(time.Second)
	forged := backup(web1, "cache-web1", "--host", "db1", "--time", future.Format(time.RFC3339))
	time.Sleep(1100 * time.Millisecond) // arrivals a clear second apart
	real2 := backup(db1, "cache-db1", "--host", "db1")

	type snapUp struct {
		snapshotOut
		Uploader *struct {
			Host, Credential string
			Received         time.Time
			DatedInFuture    bool `json:"dated_in_future"`
		}
	}
	snaps := decodeJSON[struct{ Snapshots []snapUp }](t, s.remote("fleet", admin, "--password-file", e.pwFile, "snapshots", "--json")).Snapshots
	byID := map[string]snapUp{}
	for _, sn := range snaps {
		byID[sn.ID] = sn
	}
	for id, want := range map[string]string{real1: "db1", forged: "web1", real2: "db1"} {
		sn, ok := byID[id]
		if !ok || sn.Uploader == nil || sn.Uploader.Host != want || sn.Hostname != "db1" {
			t.Errorf("snapshot %.8s: %+v, want hostname db1 uploaded by %s", id, sn, want)
		}
	}
	if f := byID[forged]; f.Uploader == nil || !f.Uploader.DatedInFuture || !f.Time.Equal(future) {
		t.Errorf("the forged snapshot: %+v", f)
	}
	r := s.remote("fleet", admin, "--password-file", e.pwFile, "snapshots")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "Uploader") || !strings.Contains(r.stdout, "claims host db1 but was uploaded by web1") {
		t.Errorf("snapshots does not show the uploader:\n%s", r)
	}

	r = s.remote("fleet", admin, "--password-file", e.pwFile, "check")
	if !strings.Contains(r.stdout+r.stderr, "after the server received it") || !strings.Contains(r.stdout+r.stderr, forged[:8]) {
		t.Errorf("check does not report the snapshot dated in the future:\n%s", r)
	}

	r = s.remote("fleet", admin, "--password-file", e.pwFile, "forget", "--keep-last", "1", "--host", "db1")
	expectCode(t, r, 0)
	left := decodeJSON[snapshotList](t, s.remote("fleet", admin, "--password-file", e.pwFile, "snapshots", "--json")).Snapshots
	if len(left) != 1 || left[0].ID != real2 {
		t.Errorf("forget --keep-last 1 kept %+v, want db1's real latest %.8s:\n%s", left, real2, r)
	}
	// a backup token may not read who uploaded what
	// (it may not list snapshots' contents anyway: exit 14)
	expectCode(t, s.remote("fleet", web1, "--password-file", e.pwFile, "snapshots"), 14)
}

// An admin forgets and prunes with --grace 0 in a loop while three hosts
// back up through the server (own tokens, write-only keys, caches):
// afterwards check --read-data passes and every snapshot that is left
// restores byte-exact.
func TestServerPruneDuringBackups(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	// some data that every host has, so that hosts share packs
	shared := testutil.RandomBytes(99, 300<<10)

	type snap struct {
		id       string
		src      string
		manifest map[string]string
	}
	var mu sync.Mutex
	var made []snap
	var done atomic.Bool
	var wg sync.WaitGroup
	for h := range 3 {
		host := fmt.Sprint("host", h)
		tok := s.token("fleet", host, "backup")
		key := s.writeOnlyKey(admin, host+".key")
		src := e.mkdir("src-" + host)
		testutil.ManyFiles(t, src, 10, 6000, uint64(10+h))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for gen := range 8 {
				os.WriteFile(filepath.Join(src, "shared"), shared, 0o644)
				testutil.WriteRandom(t, filepath.Join(src, "gen"), 200<<10, uint64(1000*h+gen))
				want := testutil.Manifest(t, src)
				r := e.runWith(runOpts{env: []string{"FLOE_CACHE_DIR=" + e.path("cache-"+host)}},
					"-r", s.url("fleet"), "--token-file", tok, "--server-fingerprint", s.fingerprint, "--key-file", key, "backup", "--json", src)
				if r.code != 0 {
					t.Errorf("%s backup %d: %s", host, gen, r)
					return
				}
				mu.Lock()
				made = append(made, snap{id: decodeJSON[backupOut](t, r).Snapshot, src: src, manifest: want})
				mu.Unlock()
			}
		}()
	}
	prunes := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !done.Load() {
			// forget makes garbage for prune to delete while backups
			// add packs and reuse blobs
			if r := s.remote("fleet", admin, "--password-file", e.pwFile, "forget", "--keep-last", "2"); r.code != 0 {
				t.Errorf("forget during backups: %s", r)
				return
			}
			r := s.remote("fleet", admin, "--password-file", e.pwFile, "prune", "--grace", "0s")
			if r.code != 0 {
				t.Errorf("prune during backups: %s", r)
				return
			}
			prunes++
		}
	}()
	// the backups end first; then prune stops
	for {
		mu.Lock()
		n := len(made)
		mu.Unlock()
		if n == 24 || t.Failed() {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	done.Store(true)
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d forgets and prunes ran during 24 backups", prunes)
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "prune", "--grace", "0s"), 0)
	r := s.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data")
	if r.code != 0 {
		t.Fatalf("check --read-data after prunes during backups: %s", r)
	}
	left := map[string]bool{}
	for _, sn := range decodeJSON[snapshotList](t, s.remote("fleet", admin, "--password-file", e.pwFile, "snapshots", "--json")).Snapshots {
		left[sn.ID] = true
	}
	restored := 0
	for i, sn := range made {
		if !left[sn.id] {
			continue // forgotten
		}
		restored++
		dst := e.path(fmt.Sprint("restore-", i))
		expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "restore", sn.id+":"+sn.src, "--target", dst), 0)
		testutil.DiffManifest(t, sn.manifest, dst)
	}
	if restored < 6 {
		t.Errorf("only %d snapshots left to restore", restored)
	}
	t.Logf("%d snapshots left, all restored byte-exact", restored)
}

// 50 clients back up small trees through one server at once: all
// succeed, check --read-data passes; the server's peak RSS is logged.
func TestServerManyClients(t *testing.T) {
	t.Parallel()
	start := time.Now()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	key := s.writeOnlyKey(admin, "wo.key")
	const clients = 50
	tokens := make([]string, clients)
	srcs := make([]string, clients)
	for i := range clients {
		tokens[i] = s.token("fleet", fmt.Sprint("h", i), "backup")
		srcs[i] = e.mkdir(fmt.Sprint("src", i))
		testutil.ManyFiles(t, srcs[i], 4, 5000, uint64(i+1))
	}
	t.Logf("set up in %v", time.Since(start))
	var wg sync.WaitGroup
	results := make([]result, clients)
	began := time.Now()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.runWith(runOpts{env: []string{"FLOE_CACHE_DIR=" + e.path(fmt.Sprint("cache", i))}},
				"-r", s.url("fleet"), "--token-file", tokens[i], "--server-fingerprint", s.fingerprint, "--key-file", key, "backup", "--json", srcs[i])
		}()
	}
	wg.Wait()
	for _, r := range results {
		expectCode(t, r, 0)
	}
	t.Logf("%d concurrent backups in %v", clients, time.Since(began))
	snaps := decodeJSON[snapshotList](t, s.remote("fleet", admin, "--password-file", e.pwFile, "snapshots", "--json")).Snapshots
	if len(snaps) != clients {
		t.Errorf("%d snapshots, want %d", len(snaps), clients)
	}
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data"), 0)
	if err := s.stop(syscall.SIGTERM); err != nil {
		t.Errorf("floe serve after SIGTERM: %v", err)
	}
	if ru, ok := s.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		t.Logf("floe serve peak RSS with %d concurrent clients: %.1f MiB", clients, float64(ru.Maxrss)/1024)
	}
	t.Logf("wall time %v", time.Since(start))
}

// On a local repository, check compares snapshot times with now.
func TestCheckFutureSnapshotLocal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 2, 1000, 1)
	e.backup("--time", time.Now().AddDate(1, 0, 0).Format("2006-01-02 15:04:05"), src)
	e.backup(src)
	r := e.ok("check")
	if !strings.Contains(r.stdout, "in the future") || strings.Count(r.stdout, "in the future") != 1 {
		t.Errorf("check does not report the one snapshot dated in the future:\n%s", r)
	}
	expectCode(t, e.floe("backup", "--time", "yesterday", src), 2)
}
