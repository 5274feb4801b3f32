//go:build linux

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/testutil"
)

// Two prunes at once: the second refuses, naming the first. A prune
// killed on this machine leaves its lease, which the next prune here takes
// over at once (its process is gone); the lease of a holder elsewhere is
// taken over once it expires, or at once with --force-unlock.
func TestPruneLease(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t, 71)
	host, _ := os.Hostname()

	first, out := startSlowPrune(t, e)
	r := e.floe("prune")
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "a prune is running") || !strings.Contains(r.stderr, host) {
		t.Errorf("the second prune's message does not name the holder: %s", r)
	}
	// the holder runs here: the hint says to wait, not to remove its lease
	if !strings.Contains(r.stderr, "still running on this machine") || strings.Contains(r.stderr, "--force-unlock") {
		t.Errorf("the second prune's hint beside a prune running here: %s", r)
	}
	// nor is its lease removed by --force-unlock, even with --yes
	r = e.floe("prune", "--force-unlock", "--yes")
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "still running on this machine") || gcObjects(e) != 1 {
		t.Errorf("--force-unlock beside a prune running here: %s (%d objects in gc/)", r, gcObjects(e))
	}
	if first.ProcessState != nil {
		t.Fatalf("the first prune ended already; the test proves nothing:\n%s", out.String())
	}
	// the holder is killed: its process is gone, the next prune goes on
	first.Process.Kill()
	first.Wait()
	if n := gcObjects(e); n != 1 {
		t.Fatalf("the killed prune left %d objects in gc/, want its lease", n)
	}
	r = e.ok("prune")
	if !strings.Contains(r.stderr, "took over the lease of a prune that no longer runs") ||
		!strings.Contains(r.stderr, fmt.Sprintf("pid %d", first.Process.Pid)) {
		t.Errorf("the prune after a killed one does not say it took over its lease: %s", r)
	}
	if n := gcObjects(e); n != 0 {
		t.Errorf("a lease is left after prune ended: %d objects in gc/", n)
	}

	// a holder elsewhere (one whose process cannot be looked up here):
	// its lease counts until it expires
	leaseFromElsewhere(t, e, 2*time.Second)
	r = e.floe("prune")
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "elsewhere") || !strings.Contains(r.stderr, "--force-unlock") {
		t.Errorf("the prune's message does not name the holder elsewhere, or how to remove its lease: %s", r)
	}
	time.Sleep(2500 * time.Millisecond)
	r = e.ok("prune")
	if strings.Contains(r.stderr, "took over") {
		t.Errorf("an expired lease reported as taken over: %s", r)
	}
	if n := gcObjects(e); n != 0 {
		t.Errorf("a lease is left after prune ended: %d objects in gc/", n)
	}

	// --force-unlock: asks (no terminal: refuses), --yes removes at once
	leaseFromElsewhere(t, e, time.Hour)
	expectCode(t, e.floe("prune", "--force-unlock"), 2)
	expectCode(t, e.floe("prune"), 1)
	r = e.ok("prune", "--force-unlock", "--yes")
	if !strings.Contains(r.stderr, "elsewhere") || !strings.Contains(r.stderr, "removed 1 prune lease") {
		t.Errorf("--force-unlock: %s", r)
	}
	e.ok("check")
}

// leaseFromElsewhere stores a prune lease of holder "elsewhere" that
// counts for ttl, as another machine's prune (or an earlier floe's) would:
// it does not name a process this machine can look up.
func leaseFromElsewhere(t *testing.T, e *floeEnv, ttl time.Duration) {
	t.Helper()
	r := e.openInProcess()
	if _, err := r.AcquireLease(context.Background(), repo.LeaseOptions{Holder: "elsewhere", PID: math.MaxInt32, TTL: ttl}); err != nil {
		t.Fatal(err)
	}
}

// newLeaseEnv is a repository with one backup of 300 small files (seed
// makes their content).
func newLeaseEnv(t *testing.T, seed uint64) *floeEnv {
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 300, 1<<10, seed)
	e.backup(src)
	return e
}

// startSlowPrune starts a prune whose reads are limited to 4 KB/s and
// whose lease lasts 2 s without renewal, and returns once its lease is
// stored (the repository must have no gc marks yet).
func startSlowPrune(t *testing.T, e *floeEnv) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(floeBin, append(e.repoArgs(), "prune", "--lease-ttl", "2s", "--limit-download", "4")...)
	cmd.Env = e.environ()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// its lease is the first object in gc/ (there are no marks yet)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if gcObjects(e) > 0 {
			return cmd, &out
		}
		if time.Now().After(deadline) {
			t.Fatalf("the prune wrote no lease:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// repair refuses while a prune holds the lease (exit 1, naming the
// prune's host, nothing changed); --dry-run needs no lease; once the
// prune was killed, repair takes its lease over and runs; a lease from
// elsewhere only --force-unlock takes away; no lease is left behind.
func TestRepairLease(t *testing.T) {
	t.Parallel()
	e := newLeaseEnv(t, 72)
	sealed, junk := e.badSnapshotRecords()
	host, _ := os.Hostname()

	pr, out := startSlowPrune(t, e)
	r := e.floe("repair", "--yes")
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "a prune is running on this repository") || !strings.Contains(r.stderr, host) ||
		!strings.Contains(r.stderr, "still running on this machine") {
		t.Errorf("repair beside a prune: no clear message naming the prune: %s", r)
	}
	for _, id := range []string{sealed, junk} {
		if _, err := os.Stat(filepath.Join(e.repo, "snapshots", id)); err != nil {
			t.Fatalf("repair beside a prune removed %s: %v", id[:8], err)
		}
	}
	r = e.floe("repair", "--json", "--yes")
	expectCode(t, r, 1)
	if !strings.Contains(r.stdout, `"exit_code":1`) || !strings.Contains(r.stdout, "a prune is running") {
		t.Errorf("repair --json beside a prune: %s", r)
	}
	r = e.ok("repair", "--dry-run")
	if !strings.Contains(r.stdout, "remove snapshot record "+sealed[:8]) {
		t.Errorf("repair --dry-run beside a prune: %s", r)
	}
	if pr.ProcessState != nil {
		t.Fatalf("the prune ended already; the test proves nothing:\n%s", out.String())
	}

	// the prune is killed: repair takes its lease over at once
	pr.Process.Kill()
	pr.Wait()
	r = e.ok("repair", "--yes")
	if !strings.Contains(r.stderr, "took over the lease of a prune that no longer runs") || !strings.Contains(r.stdout, "repaired: 2 of 2") {
		t.Errorf("repair after a killed prune: %s", r)
	}
	if n := gcObjects(e); n != 0 {
		t.Errorf("a lease is left after repair ended: %d objects in gc/", n)
	}

	// a holder elsewhere: repair refuses at once, --force-unlock removes
	// its lease
	leaseFromElsewhere(t, e, time.Hour)
	r = e.floe("repair", "--yes")
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "elsewhere") || !strings.Contains(r.stderr, "--force-unlock") {
		t.Errorf("repair beside a lease from elsewhere: %s", r)
	}
	r = e.ok("repair", "--yes", "--force-unlock")
	if !strings.Contains(r.stderr, "removed 1 prune lease") {
		t.Errorf("repair --force-unlock: %s", r)
	}
	if n := gcObjects(e); n != 0 {
		t.Errorf("a lease is left after repair ended: %d objects in gc/", n)
	}
	e.ok("check")
}

// gcObjects counts the objects in gc/ (not the temporary files of a write).
func gcObjects(e *floeEnv) int {
	names, _ := os.ReadDir(filepath.Join(e.repo, "gc"))
	n := 0
	for _, d := range names {
		if !strings.HasPrefix(d.Name(), ".tmp-") {
			n++
		}
	}
	return n
}
