//go:build linux

package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// Two prunes at once: the second refuses, naming the first; a lease left
// by a prune that died is taken over once it expires, or at once with
// --force-unlock.
func TestPruneLease(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 300, 1<<10, 71)
	e.backup(src)
	host, _ := os.Hostname()

	// a slow prune: its reads are limited to 4 KB/s
	start := func() (*exec.Cmd, *bytes.Buffer) {
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
				t.Fatalf("the first prune wrote no lease:\n%s", out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	first, out := start()
	r := e.floe("prune")
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "a prune is running") || !strings.Contains(r.stderr, host) {
		t.Errorf("the second prune's message does not name the holder: %s", r)
	}
	if first.ProcessState != nil {
		t.Fatalf("the first prune ended already; the test proves nothing:\n%s", out.String())
	}
	// the holder dies: its lease still counts, then expires
	first.Process.Kill()
	first.Wait()
	r = e.floe("prune")
	expectCode(t, r, 1)
	time.Sleep(2500 * time.Millisecond)
	e.ok("prune")
	if n := gcObjects(e); n != 0 {
		t.Errorf("a lease is left after prune ended: %d objects in gc/", n)
	}

	// --force-unlock: asks (no terminal: refuses), --yes removes at once
	second, _ := start()
	second.Process.Kill()
	second.Wait()
	expectCode(t, e.floe("prune", "--force-unlock"), 2)
	expectCode(t, e.floe("prune"), 1)
	r = e.ok("prune", "--force-unlock", "--yes")
	if !strings.Contains(r.stderr, host) || !strings.Contains(r.stderr, "removed 1 prune lease") {
		t.Errorf("--force-unlock: %s", r)
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
