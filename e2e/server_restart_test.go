//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// storedObjects counts the complete objects (no upload's temporary file)
// under dir and their bytes.
func storedObjects(dir string) (n int, size int64) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".tmp-") {
			if fi, err := d.Info(); err == nil {
				n++
				size += fi.Size()
			}
		}
		return nil
	})
	return n, size
}

// The server SIGKILLed mid-backup and down for longer than the client
// retries (about half a minute; TestServerKilledMidBackup restarts it at
// once, which the retries bridge): the backup fails with the documented
// exit code and a message that names the server and what happened to the
// connection, saves no snapshot; once the server is back the next backup
// succeeds, and check --read-data passes.
//
// What this shows about reuse: the packs that reached the server before
// the kill are not indexed (the client could not write the index file,
// or never heard that they arrived), so the next backup uploads them
// again; prune collects them. The test logs the figures; it does not
// assert reuse, which does not hold for an outage this long.
func TestServerDownMidBackup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	root, addr := s.root, s.addr
	web1 := s.token("fleet", "web1", "backup")
	woKey := s.writeOnlyKey(admin, "web1.key")
	src := e.mkdir("src")
	const files, fileSize = 6, 8 << 20
	for i := range files {
		testutil.WriteRandom(t, filepath.Join(src, fmt.Sprint("f", i)), fileSize, uint64(100+i))
	}
	data := filepath.Join(root, "fleet", "data")
	cmd := exec.Command(floeBin, "-r", s.url("fleet"), "--token-file", web1, "--server-fingerprint", s.fingerprint,
		"--key-file", woKey, "backup", src)
	cmd.Env = e.environ()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	// kill the server once the first pack is stored
	deadline := time.Now().Add(60 * time.Second)
	for n, _ := storedObjects(data); n == 0; n, _ = storedObjects(data) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no pack arrived:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.stop(syscall.SIGKILL)
	killed := time.Now()
	packs, packBytes := storedObjects(data)
	select {
	case <-exited:
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("the backup did not give up in 3 minutes with its server gone:\n%s", out.String())
	}
	msg := out.String()
	code := cmd.ProcessState.ExitCode()
	t.Logf("the backup exited %d after %v with its server gone", code, time.Since(killed).Round(time.Second))
	if strings.Contains(msg, "panic") || goroutineTrace.MatchString(msg) {
		t.Fatalf("the backup panicked:\n%s", msg)
	}
	if code != 10 {
		t.Fatalf("want exit 10 (repository unreachable), got %d:\n%s", code, msg)
	}
	for _, want := range []string{"server https://" + addr + " unreachable", "connection refused", "gave up after", "nothing answered"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the failure does not say %q:\n%s", want, msg)
		}
	}
	for _, line := range strings.Split(msg, "\n") {
		if strings.HasSuffix(strings.TrimSpace(line), "EOF") {
			t.Errorf("a bare EOF for a server that went away:\n%s", msg)
		}
	}

	s = e.startServer(root, addr)
	r := s.remote("fleet", admin, "--password-file", e.pwFile, "snapshots", "--json")
	expectCode(t, r, 0)
	if l := decodeJSON[snapshotList](t, r); len(l.Snapshots) != 0 {
		t.Fatalf("the failed backup saved a snapshot: %+v", l.Snapshots)
	}
	r = s.remote("fleet", web1, "--key-file", woKey, "backup", "--json", src)
	expectCode(t, r, 0)
	next := decodeJSON[backupOut](t, r)
	if next.Summary.FilesNew != files || next.Summary.TotalBytes != files*fileSize {
		t.Fatalf("the next backup: %+v", next.Summary)
	}
	t.Logf("%d packs (%d bytes) had arrived before the kill; the next backup added %d of %d bytes",
		packs, packBytes, next.Summary.DataAdded, files*fileSize)
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data"), 0)
	dst := e.path("restored")
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "restore", "latest:"+src, "--target", dst), 0)
	testutil.CompareTrees(t, src, dst)
}
