package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/testutil"
)

// mountedAt reports whether dir is a mount point (/proc/self/mountinfo).
func mountedAt(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// `floe mount DIR` serves the snapshots until SIGINT: diff -r finds the
// backed-up tree in it unchanged, and after SIGINT floe exits 0 and DIR is
// no longer a mount point.
func TestMountCommand(t *testing.T) {
	t.Parallel()
	if !hasCommand(t, "mount") {
		t.Skip("floe has no mount command yet")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no FUSE here: %v", err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Skip("no fusermount3 here (Debian package fuse3)")
	}
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "big"), 12<<20, 11)
	e.mkdir("src", "sub", "deeper")
	if err := os.WriteFile(filepath.Join(src, "sub", "deeper", "small"), []byte("small file\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/deeper/small", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(src, "big"), filepath.Join(src, "sub", "big-again")); err != nil {
		t.Fatal(err)
	}
	if testutil.XattrsSupported(src) {
		if err := unix.Setxattr(filepath.Join(src, "sub", "deeper", "small"), "user.note", []byte("kept"), 0); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := e.backup(src)
	mnt := e.mkdir("mnt")

	cmd := exec.Command(floeBin, append(e.repoArgs(), "mount", mnt)...)
	cmd.Env = e.environ()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
			exec.Command("fusermount3", "-u", "-z", mnt).Run()
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !mountedAt(t, mnt) {
		select {
		case <-exited:
			if s := out.String(); strings.Contains(s, "not permitted") || strings.Contains(s, "ermission denied") {
				t.Skipf("mounting is not permitted here:\n%s", s)
			}
			t.Fatalf("floe mount exited before mounting: exit %d\n%s", cmd.ProcessState.ExitCode(), out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not mounted after 30 s", mnt)
		}
	}

	view := filepath.Join(mnt, "ids", b.Snapshot[:8], src)
	if diff, err := exec.LookPath("diff"); err == nil {
		d := exec.Command(diff, "-r", src, view)
		if o, err := d.CombinedOutput(); err != nil {
			t.Errorf("diff -r %s %s: %v\n%s", src, view, err, o)
		}
	}
	testutil.CompareTrees(t, src, view)
	testutil.CompareTrees(t, src, filepath.Join(mnt, "latest", src))
	// copies made from the mount keep the metadata and the hard link
	cp := e.path("cp-a")
	if o, err := exec.Command("cp", "-a", view, cp).CombinedOutput(); err != nil {
		t.Errorf("cp -a: %v\n%s", err, o)
	} else {
		testutil.CompareTrees(t, src, cp)
	}
	if rsync, err := exec.LookPath("rsync"); err == nil {
		dst := e.path("rsync")
		if o, err := exec.Command(rsync, "-aHX", view+"/", dst+"/").CombinedOutput(); err != nil {
			t.Errorf("rsync -aHX: %v\n%s", err, o)
		} else {
			testutil.CompareTrees(t, src, dst)
		}
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("floe mount did not exit within 30 s of SIGINT")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("floe mount exited %d after SIGINT, want 0:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "mounted at "+mnt) {
		t.Errorf("floe mount does not say where it mounted:\n%s", out.String())
	}
	if mountedAt(t, mnt) {
		t.Errorf("%s is still mounted after floe mount exited", mnt)
	}
	if s, leaked := leakedSecret(out.String()); leaked {
		t.Errorf("floe mount printed the secret %.6s...", s)
	}
}
