//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// Backups killed with SIGKILL at random moments leave a repository that
// check passes, whose earlier snapshots restore byte for byte, and in which
// the next backup succeeds.
func TestCrashSafety(t *testing.T) {
	t.Parallel()
	const (
		budget        = 40 * time.Second // stop starting rounds after this
		minRounds     = 4
		maxRounds     = 10
		largeFileSize = 80 << 20
	)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	start := time.Now()

	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 600, 40<<10, seed) // 24 MiB; 184 MiB in all
	for i := range 2 {
		testutil.WriteRandom(t, filepath.Join(src, fmt.Sprintf("large%d", i)), largeFileSize, seed+uint64(i)+1)
	}
	haveCheck := hasCommand(t, "check")
	if !haveCheck {
		t.Log("floe has no check command yet: checking with snapshots and restores only")
	}

	type done struct {
		id       string
		manifest map[string]string
	}
	var snaps []done
	maxDelay := 2 * time.Second
	for round := 0; round < maxRounds && (round < minRounds || time.Since(start) < budget); round++ {
		if round > 0 {
			// new data for this round: one large file and some small ones
			testutil.WriteRandom(t, filepath.Join(src, fmt.Sprintf("large%d", round%2)), largeFileSize, seed+uint64(100+round))
			for i := range 30 {
				p := filepath.Join(src, "d"+fmt.Sprint(i%6), fmt.Sprintf("new-%d-%d", round, i))
				os.WriteFile(p, testutil.RandomBytes(seed+uint64(1000*round+i), 20<<10), 0o644)
			}
		}
		manifest := testutil.Manifest(t, src)

		delay := 50*time.Millisecond + time.Duration(rng.Int64N(int64(maxDelay-50*time.Millisecond)))
		finished, took, out := e.killAfter(delay, "backup", "--force", src)
		if finished {
			t.Logf("round %d: the backup finished in %v, before the kill: %s", round, took, out)
			// kill earlier from now on
			maxDelay = max(100*time.Millisecond, took*9/10)
		} else {
			t.Logf("round %d: killed after %v", round, delay)
		}
		phase := time.Now()

		if haveCheck {
			r := e.floe("check")
			if r.code != 0 {
				t.Fatalf("round %d: check after a killed backup: %s", round, r)
			}
		}
		list := e.snapshots()
		ids := map[string]bool{}
		for _, s := range list {
			ids[s.ID] = true
		}
		for _, s := range snaps {
			if !ids[s.id] {
				t.Fatalf("round %d: snapshot %s is gone", round, s.id[:8])
			}
		}

		// the newest snapshot, whose data partly lies in packs of killed
		// backups, restores byte for byte
		if len(snaps) > 0 {
			e.restoreAndCompare(fmt.Sprintf("round %d", round), snaps[len(snaps)-1].id, src, snaps[len(snaps)-1].manifest, false)
		}
		checked := time.Since(phase)

		// the next backup succeeds and holds this round's files
		phase = time.Now()
		b, _ := e.backup(src)
		snaps = append(snaps, done{b.Snapshot, manifest})
		t.Logf("round %d: checks and restores %v, next backup %v", round, checked.Round(time.Millisecond), time.Since(phase).Round(time.Millisecond))
	}
	if haveCheck {
		if r := e.floe("check", "--read-data"); r.code != 0 {
			t.Fatalf("final check --read-data: %s", r)
		}
	}
	// at the end, the first snapshot too
	e.restoreAndCompare("the first snapshot at the end", snaps[0].id, src, snaps[0].manifest, false)
	last := snaps[len(snaps)-1]
	e.restoreAndCompare("the last snapshot at the end", last.id, src, last.manifest, true)
	t.Logf("%d rounds in %v", len(snaps), time.Since(start).Round(time.Millisecond))
}

// restoreAndCompare restores path of snapshot id and compares it with a
// manifest.
func (e *floeEnv) restoreAndCompare(what, id, path string, manifest map[string]string, verify bool) {
	e.t.Helper()
	dst := e.path("restore-" + id[:8])
	args := []string{"restore", id + ":" + path, "--target", dst}
	if verify {
		args = append(args, "--verify")
	}
	if r := e.floe(args...); r.code != 0 {
		e.t.Fatalf("%s: restore of snapshot %s: %s", what, id[:8], r)
	}
	testutil.DiffManifest(e.t, manifest, dst)
	if e.t.Failed() {
		e.t.FailNow()
	}
	os.RemoveAll(dst)
}

// SIGINT stops a backup with exit 130 and no snapshot; the next backup runs.
func TestInterrupt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "big"), 128<<20, 90)
	cmd := exec.Command(floeBin, append(e.repoArgs(), "backup", src)...)
	cmd.Env = e.environ()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()
	code := cmd.ProcessState.ExitCode()
	if code == 0 {
		t.Skip("the backup finished before the interrupt")
	}
	if code != 130 || !strings.Contains(out.String(), "interrupted") {
		t.Errorf("interrupted backup: exit %d, want 130 and \"interrupted\":\n%s", code, out.String())
	}
	if s := e.snapshots(); len(s) != 0 {
		t.Errorf("an interrupted backup left %d snapshots", len(s))
	}
	if hasCommand(t, "check") {
		e.ok("check")
	}
	b, _ := e.backup(src)
	dst := e.path("restored")
	e.ok("restore", b.Snapshot+":"+src, "--target", dst)
	testutil.CompareTrees(t, src, dst)
}

// check finds damage (so that its "no problems" after a crash means
// something): a flipped byte in a pack, and a pack that is gone.
func TestCheckFindsDamage(t *testing.T) {
	t.Parallel()
	if !hasCommand(t, "check") {
		t.Skip("floe has no check command yet")
	}
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "f"), 3<<20, 95)
	e.backup(src)
	e.ok("check", "--read-data")

	var packs []string
	filepath.WalkDir(filepath.Join(e.repo, "data"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			packs = append(packs, p)
		}
		return err
	})
	if len(packs) == 0 {
		t.Fatal("no packs in the repository")
	}
	// the largest pack holds the file's data
	largest := packs[0]
	for _, p := range packs {
		if fi, _ := os.Stat(p); fi != nil {
			if fl, _ := os.Stat(largest); fi.Size() > fl.Size() {
				largest = p
			}
		}
	}
	b, err := os.ReadFile(largest)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/3] ^= 0x40
	if err := os.WriteFile(largest, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := e.floe("check", "--read-data")
	expectCode(t, r, 13)
	if !strings.Contains(r.stdout+r.stderr, filepath.Join(src, "f")) {
		t.Errorf("check does not name the damaged file: %s", r)
	}
	r = e.floe("restore", "latest", "--target", e.path("restored"))
	expectCode(t, r, 3)

	os.Remove(largest)
	expectCode(t, e.floe("check"), 13)
}
