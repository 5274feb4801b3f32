package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// Prunes killed with SIGKILL at random moments leave a repository that
// check passes and whose snapshots restore byte for byte; the next prunes
// finish the job and reclaim the space.
func TestPruneCrashSafety(t *testing.T) {
	t.Parallel()
	if !hasCommand(t, "prune") {
		t.Skip("floe has no prune command")
	}
	const (
		budget    = 30 * time.Second // stop starting rounds after this
		minRounds = 4
		maxRounds = 12
		largeSize = 24 << 20
	)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	start := time.Now()

	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 300, 20<<10, seed) // 6 MiB
	testutil.WriteRandom(t, filepath.Join(src, "large"), largeSize, seed+1)

	type snap struct {
		id       string
		manifest map[string]string
	}
	var kept []snap
	backup := func() {
		m := testutil.Manifest(t, src)
		b, _ := e.backup(src)
		kept = append(kept, snap{b.Snapshot, m})
	}
	backup()
	maxDelay := 500 * time.Millisecond
	killed, rounds := 0, 0
	for round := 0; round < maxRounds && (round < minRounds || time.Since(start) < budget); round++ {
		// new data, and a snapshot forgotten: each prune has packs to
		// delete, to repack (the small files) and to mark
		testutil.WriteRandom(t, filepath.Join(src, "large"), largeSize, seed+uint64(100+round))
		for i := 0; i < 30; i++ {
			os.Remove(filepath.Join(src, "d"+fmt.Sprint(i%3), fmt.Sprintf("f%d", rng.IntN(300))))
			p := filepath.Join(src, "d"+fmt.Sprint(i%3), fmt.Sprintf("new-%d-%d", round, i))
			os.WriteFile(p, testutil.RandomBytes(seed+uint64(1000*round+i), 20<<10), 0o644)
		}
		backup()
		if len(kept) > 2 {
			e.ok("forget", kept[0].id)
			kept = kept[1:]
		}

		// a kill at a random moment of the run; the window adapts to how
		// long a whole run takes
		delay := 10*time.Millisecond + time.Duration(rng.Int64N(int64(maxDelay)))
		// a killed prune leaves its lease: the operator, who knows it
		// died, removes it (--force-unlock --yes) in the next run
		finished, took, _ := e.killAfter(delay, "prune", "--grace", "0", "--max-unused", "5%", "--force-unlock", "--yes")
		if finished {
			t.Logf("round %d: prune finished in %v, before the kill", round, took.Round(time.Millisecond))
			maxDelay = max(20*time.Millisecond, took)
		} else {
			killed++
			t.Logf("round %d: prune killed after %v", round, delay.Round(time.Millisecond))
			maxDelay = min(3*time.Second, maxDelay*5/4)
		}
		rounds++
		if r := e.floe("check"); r.code != 0 {
			t.Fatalf("round %d: check after a killed prune: %s", round, r)
		}
		last := kept[len(kept)-1]
		e.restoreAndCompare(fmt.Sprintf("round %d", round), last.id, src, last.manifest, false)
	}
	if killed == 0 {
		t.Log("no prune was killed: every one finished before its kill")
	}

	// two prunes that run to the end reclaim everything that is not needed
	for i := 0; i < 2; i++ {
		r := e.ok("prune", "--grace", "0", "--max-unused", "5%", "--force-unlock", "--yes")
		t.Logf("prune %d to the end: %v", i+1, r.wall.Round(time.Millisecond))
	}
	r := e.ok("check")
	if strings.Contains(r.stdout, "unreferenced") || strings.Contains(r.stderr, "unreferenced") {
		t.Errorf("packs left unreferenced after two complete prunes:\n%s", r)
	}
	var live int64
	for _, s := range kept {
		for _, v := range s.manifest {
			var n int64
			fmt.Sscanf(v, "%d bytes", &n)
			live += n
		}
	}
	if stored := dirSize(t, filepath.Join(e.repo, "data")); stored > live*11/10+1<<20 {
		t.Errorf("%d bytes of packs for %d bytes in %d snapshots: space not reclaimed", stored, live, len(kept))
	}
	for i, s := range kept {
		e.restoreAndCompare(fmt.Sprintf("snapshot %d at the end", i), s.id, src, s.manifest, i == len(kept)-1)
	}
	// nothing left to do
	out := decodeJSON[struct {
		Marks []any `json:"marks"`
		Mark  struct {
			MarkID string `json:"mark_id"`
		} `json:"mark"`
	}](t, e.ok("prune", "--grace", "0", "--max-unused", "5%", "--json"))
	if len(out.Marks) != 0 || out.Mark.MarkID != "" {
		t.Errorf("a third prune still found work: %+v", out)
	}
	t.Logf("%d rounds, %d prunes killed, in %v", rounds, killed, time.Since(start).Round(time.Millisecond))
}
