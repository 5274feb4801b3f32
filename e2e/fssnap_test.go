package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// `floe backup --fs-snapshot btrfs|lvm` on real file systems made on loop
// devices. They need root, loop devices, mounting and, for LVM, the
// kernel's device-mapper; without them the tests skip and say what failed.

// sh runs a command for the test's setup and returns its combined output.
func sh(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LVM_SUPPRESS_FD_WARNINGS=1", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// needTool skips the test unless a command is installed.
func needTool(t *testing.T, name, pkg string) {
	t.Helper()
	if !haveTool(name) {
		t.Skipf("%s is not installed (Debian package %s)", name, pkg)
	}
}

// loopDevice makes a sparse file of size bytes and attaches it to a loop
// device, detached when the test ends.
func loopDevice(t *testing.T, e *floeEnv, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	needTool(t, "losetup", "mount")
	img := e.path("disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	dev, err := sh("losetup", "--find", "--show", img)
	if err != nil {
		t.Skipf("loop devices not available: losetup --find --show: %v: %s", err, dev)
	}
	t.Cleanup(func() {
		if out, err := sh("losetup", "-d", dev); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// mountDev mounts dev on dir, unmounted when the test ends.
func mountDev(t *testing.T, dev, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := sh("mount", dev, dir); err != nil {
		t.Skipf("mounting not possible here: mount %s %s: %v: %s", dev, dir, err, out)
	}
	t.Cleanup(func() {
		var out string
		var err error
		for i := 0; i < 10; i++ {
			if out, err = sh("umount", dir); err == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Errorf("umount %s: %v: %s", dir, err, out)
	})
}

// btrfsVolume makes a btrfs file system on a loop device with a subvolume
// "vol" and returns the mount point and the subvolume.
func btrfsVolume(t *testing.T, e *floeEnv, size int64) (mnt, vol string) {
	t.Helper()
	needTool(t, "mkfs.btrfs", "btrfs-progs")
	needTool(t, "btrfs", "btrfs-progs")
	dev := loopDevice(t, e, size)
	if out, err := sh("mkfs.btrfs", "-q", dev); err != nil {
		t.Skipf("mkfs.btrfs %s: %v: %s", dev, err, out)
	}
	mnt = e.path("mnt")
	mountDev(t, dev, mnt)
	vol = filepath.Join(mnt, "vol")
	if out, err := sh("btrfs", "subvolume", "create", vol); err != nil {
		t.Fatalf("btrfs subvolume create: %v: %s", err, out)
	}
	return mnt, vol
}

// lvmVolume makes a volume group on a loop device with an ext4 logical
// volume of lvSize bytes, mounted; it returns the mount point and the VG.
func lvmVolume(t *testing.T, e *floeEnv, lvSize string) (mnt, vg string) {
	t.Helper()
	lv, vg := lvmLV(t, e, lvSize)
	if out, err := sh("mkfs.ext4", "-q", lv); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s", lv, err, out)
	}
	mnt = e.path("mnt")
	mountDev(t, lv, mnt)
	return mnt, vg
}

// lvmLV makes a volume group on a loop device with a logical volume
// "data" of lvSize bytes; it returns the LV's device (/dev/VG/data) and
// the VG, removed when the test ends. It skips where LVM cannot work.
func lvmLV(t *testing.T, e *floeEnv, lvSize string) (lv, vg string) {
	t.Helper()
	for _, tool := range []string{"pvcreate", "vgcreate", "lvcreate", "lvs", "vgremove"} {
		needTool(t, tool, "lvm2")
	}
	needTool(t, "mkfs.ext4", "e2fsprogs")
	dev := loopDevice(t, e, 256<<20)
	var b [4]byte
	rand.Read(b[:])
	vg = "floe-e2e-" + hex.EncodeToString(b[:])
	if out, err := sh("pvcreate", "-q", dev); err != nil {
		t.Skipf("pvcreate %s: %v: %s", dev, err, out)
	}
	t.Cleanup(func() { sh("pvremove", "-q", "-f", dev) })
	if out, err := sh("vgcreate", "-q", vg, dev); err != nil {
		t.Skipf("vgcreate: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := sh("vgremove", "-q", "-f", vg); err != nil {
			t.Errorf("vgremove %s: %v: %s", vg, err, out)
		}
	})
	if out, err := sh("lvcreate", "-q", "-y", "-n", "data", "-L", lvSize, vg); err != nil {
		reason := "lvcreate failed"
		if strings.Contains(out, "device-mapper") || strings.Contains(out, "/dev/mapper/control") {
			reason = "device-mapper not available in this kernel (no /dev/mapper/control; LVM cannot activate volumes)"
		}
		t.Skipf("%s: lvcreate -n data -L %s %s: %v: %s", reason, lvSize, vg, err, out)
	}
	return "/dev/" + vg + "/data", vg
}

// leftovers lists what of floe's snapshots of the test's file system is
// still there: btrfs subvolumes of the file system at mnt, or LVs of vg and
// their mounts (other tests may run snapshot backups at the same time).
func leftovers(t *testing.T, mnt, vg string) []string {
	t.Helper()
	var left []string
	if vg == "" {
		out, err := sh("btrfs", "subvolume", "list", mnt)
		if err != nil {
			t.Fatalf("btrfs subvolume list: %v: %s", err, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "floe-snap-") {
				left = append(left, "btrfs subvolume: "+line)
			}
		}
	}
	if vg != "" {
		info, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		dm := strings.ReplaceAll(vg, "-", "--") + "-floe--snap--"
		for _, line := range strings.Split(string(info), "\n") {
			if strings.Contains(line, dm) || strings.Contains(line, vg+"/floe-snap-") {
				left = append(left, "mount: "+line)
			}
		}
		out, err := sh("lvs", "--noheadings", "-o", "lv_name", vg)
		if err != nil {
			t.Fatalf("lvs: %v: %s", err, out)
		}
		for _, name := range strings.Fields(out) {
			if strings.HasPrefix(name, "floe-snap-") {
				left = append(left, "LV: "+vg+"/"+name)
			}
		}
	}
	return left
}

func expectNoLeftovers(t *testing.T, what, mnt, vg string) {
	t.Helper()
	if left := leftovers(t, mnt, vg); len(left) > 0 {
		t.Errorf("%s: snapshots left behind:\n%s", what, strings.Join(left, "\n"))
	}
}

// writeFiles fills dir with four files and a symlink.
func writeFiles(t *testing.T, dir string) {
	t.Helper()
	for rel, data := range map[string]string{
		"a.txt":           "alpha\n",
		"sub/b.txt":       "beta\n",
		"sub/deep/c.conf": "gamma\n",
	} {
		p := filepath.Join(dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("sub/b.txt", filepath.Join(dir, "link"))
	testutil.WriteRandom(t, filepath.Join(dir, "random.bin"), 3<<20+17, 41)
}

// checkSnapshotBackup checks a backup of src made from a file system
// snapshot: it records src's own paths, is frozen, and restores byte for
// byte to manifest.
func checkSnapshotBackup(t *testing.T, e *floeEnv, b backupOut, src string, manifest map[string]string) {
	t.Helper()
	if len(b.Errors) > 0 || b.Summary.Errors > 0 {
		t.Errorf("backup errors: %+v", b.Errors)
	}
	if !b.Consistency.Frozen || !b.Consistency.Checked {
		t.Errorf("consistency %+v: want frozen and checked", b.Consistency)
	}
	var snap *snapshotOut
	for _, s := range e.snapshots() {
		if s.ID == b.Snapshot {
			snap = &s
		}
	}
	if snap == nil {
		t.Fatalf("snapshot %s is not listed", b.Snapshot)
	}
	if len(snap.Paths) != 1 || snap.Paths[0] != src || !snap.Consistency.Frozen {
		t.Errorf("snapshot paths %v, consistency %+v: want [%s], frozen", snap.Paths, snap.Consistency, src)
	}
	if out := e.ok("snapshots").stdout; !strings.Contains(out, "frozen") {
		t.Errorf("`floe snapshots` does not say frozen:\n%s", out)
	}
	ls := e.ok("ls", b.Snapshot).stdout
	for _, want := range []string{src, src + "/a.txt", src + "/sub/deep/c.conf", src + "/random.bin", src + "/link"} {
		if !containsLine(ls, want) {
			t.Errorf("`floe ls` does not list %s:\n%s", want, ls)
		}
	}
	if strings.Contains(ls, "floe-snap-") {
		t.Errorf("`floe ls` shows the temporary snapshot's path:\n%s", ls)
	}
	e.restoreAndCompare("restore of the snapshot backup", b.Snapshot, src, manifest, true)
}

func containsLine(out, line string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// A backup from a btrfs snapshot: original paths, frozen, exact restore,
// unchanged files found through the parent, and a file appended to all
// the time is not "changed while read" (the snapshot does not change).
func TestFsSnapshotBtrfs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mnt, vol := btrfsVolume(t, e, 400<<20)
	e.init()
	writeFiles(t, vol)

	// a log written to all the time
	logPath := filepath.Join(vol, "app.log")
	testutil.WriteRandom(t, logPath, 32<<20, 42)
	stop := appendLines(t, logPath)
	b, _ := e.backup("--fs-snapshot", "btrfs", vol)
	stop()
	if b.Consistency.ChangedCount != 0 {
		t.Errorf("consistency %+v: files changed while read from a frozen snapshot", b.Consistency)
	}
	expectNoLeftovers(t, "after the backup", mnt, "")
	if names, _ := filepath.Glob(filepath.Join(vol, ".floe-snap-*")); len(names) > 0 {
		t.Errorf("snapshot directories left: %v", names)
	}

	// the restored log is the snapshot's, a prefix of today's file
	dst := e.path("restore-log")
	e.ok("restore", b.Snapshot+":"+logPath, "--target", dst)
	got, err := os.ReadFile(filepath.Join(dst, "app.log"))
	if err != nil {
		t.Fatal(err)
	}
	now, _ := os.ReadFile(logPath)
	// The snapshot is crash-consistent: writes in flight when it was taken
	// may read as zeros at the end of the file (btrfs exposes the new size
	// before the data, as a power cut would). Everything before must be
	// exactly the file as it was.
	at := 0
	for at < len(got) && at < len(now) && got[at] == now[at] {
		at++
	}
	tornTail := at == len(got) || (len(got)-at <= 1<<20 && bytes.Count(got[at:], []byte{0}) == len(got)-at)
	if len(got) < 32<<20 || len(got) > len(now) || !tornTail {
		t.Errorf("restored log: %d bytes, not a prefix of the file (%d bytes): first difference at %d", len(got), len(now), at)
	}
	os.Remove(logPath)
	os.RemoveAll(dst)

	b, _ = e.backup("--fs-snapshot", "btrfs", vol)
	checkSnapshotBackup(t, e, b, vol, testutil.Manifest(t, vol))

	// the next backup finds the files unchanged (inodes and ctimes are
	// those of the live files)
	b2, _ := e.backup("--fs-snapshot", "btrfs", vol)
	if s := b2.Summary; s.FilesNew != 0 || s.FilesChanged != 0 || s.FilesUnchanged != 4 {
		t.Errorf("second backup %+v: want 4 files unchanged", s)
	}
	expectNoLeftovers(t, "after the second backup", mnt, "")

	// the top-level subvolume: the subvolume vol inside it is not in its
	// snapshot, and floe says so; given as a path too, it is read from a
	// snapshot of its own
	os.WriteFile(filepath.Join(mnt, "top.txt"), []byte("top\n"), 0o644)
	r := e.ok("backup", "--fs-snapshot", "btrfs", mnt)
	if !strings.Contains(r.stderr, "note: "+vol+" is another btrfs subvolume") {
		t.Errorf("no note that %s is not in the snapshot of %s: %s", vol, mnt, r)
	}
	if ls := e.ok("ls", "latest").stdout; !containsLine(ls, mnt+"/top.txt") || !containsLine(ls, vol) || containsLine(ls, vol+"/a.txt") {
		t.Errorf("want %s/top.txt and %s empty:\n%s", mnt, vol, ls)
	}
	b3, r := e.backup("--fs-snapshot", "btrfs", mnt, vol)
	if strings.Contains(r.stderr, "note:") {
		t.Errorf("a note although %s was given: %s", vol, r)
	}
	e.restoreAndCompare("restore of two subvolumes", b3.Snapshot, mnt, testutil.Manifest(t, mnt), false)
	expectNoLeftovers(t, "after the backup of two subvolumes", mnt, "")
}

// However a btrfs snapshot backup fails, the snapshot is deleted: a failing
// post-hook, an invalid exclude, SIGINT and SIGTERM in the middle, and paths
// that are not on btrfs (nothing is made at all).
func TestFsSnapshotBtrfsFailures(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	mnt, vol := btrfsVolume(t, e, 600<<20)
	e.init()
	writeFiles(t, vol)

	// a post-hook that fails: the backup is saved, the exit is non-zero,
	// and the snapshot was removed before the hook ran
	marker := e.path("hook-saw")
	post := "ls -a " + vol + " > " + marker + "; exit 9"
	r := e.floe("backup", "--fs-snapshot", "btrfs", "--post-hook", post, vol)
	expectFail(t, r)
	if !strings.Contains(r.stderr, "post-hook") || !strings.Contains(r.stderr, "reading from the btrfs snapshot "+vol+"/.floe-snap-") {
		t.Errorf("the output does not say where the backup reads or does not name the post-hook: %s", r)
	}
	saw, _ := os.ReadFile(marker)
	if strings.Contains(string(saw), "floe-snap-") {
		t.Errorf("the snapshot still existed when the post-hook ran:\n%s", saw)
	}
	expectNoLeftovers(t, "after a failing post-hook", mnt, "")

	// an invalid exclude fails the backup after the snapshot is made
	r = e.floe("backup", "--fs-snapshot", "btrfs", "--exclude", "[", vol)
	expectFail(t, r)
	if !strings.Contains(r.stderr, "exclude") {
		t.Errorf("the error does not name the exclude: %s", r)
	}
	expectNoLeftovers(t, "after an invalid exclude", mnt, "")

	// a failing pre-hook: no snapshot is made at all
	r = e.floe("backup", "--fs-snapshot", "btrfs", "--pre-hook", "exit 3", vol)
	expectFail(t, r)
	expectNoLeftovers(t, "after a failing pre-hook", mnt, "")

	// a path not on btrfs
	other := e.mkdir("not-btrfs")
	r = e.floe("backup", "--fs-snapshot", "btrfs", vol, other)
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "path "+other+" is on ") || !strings.Contains(r.stderr, "not on btrfs") {
		t.Errorf("want an error saying %s is not on btrfs: %s", other, r)
	}
	expectNoLeftovers(t, "after a path not on btrfs", mnt, "")
	// a btrfs path with --fs-snapshot lvm
	r = e.floe("backup", "--fs-snapshot", "lvm", vol)
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "use --fs-snapshot btrfs") {
		t.Errorf("want a hint to use btrfs: %s", r)
	}

	// interrupted while reading: SIGINT, then SIGTERM
	testutil.WriteRandom(t, filepath.Join(vol, "big1"), 160<<20, 43)
	testutil.WriteRandom(t, filepath.Join(vol, "big2"), 160<<20, 44)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		code, stderr := e.interruptSnapshotBackup(t, vol, sig)
		if code != 130 {
			t.Errorf("%v: exit %d, want 130 (interrupted)\n%s", sig, code, stderr)
		}
		expectNoLeftovers(t, "after "+sig.String(), mnt, "")
		if names, _ := filepath.Glob(filepath.Join(vol, ".floe-snap-*")); len(names) > 0 {
			t.Errorf("%v: snapshot directories left: %v", sig, names)
		}
	}
	for _, s := range e.snapshots() {
		if s.Summary.TotalBytes > 100<<20 {
			t.Errorf("an interrupted backup saved snapshot %s", s.ID)
		}
	}
}

// interruptSnapshotBackup starts a snapshot backup of vol, sends sig once
// the snapshot exists, and returns the exit code and standard error.
func (e *floeEnv) interruptSnapshotBackup(t *testing.T, vol string, sig syscall.Signal) (int, string) {
	t.Helper()
	cmd := exec.Command(floeBin, append(e.repoArgs(), "backup", "--force", "--fs-snapshot", "btrfs", vol)...)
	cmd.Env = e.environ()
	cmd.Dir = e.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if names, _ := filepath.Glob(filepath.Join(vol, ".floe-snap-*")); len(names) > 0 {
			break
		}
		select {
		case <-exited:
			t.Fatalf("%v: the backup ended before its snapshot was seen:\n%s", sig, out.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("%v: no snapshot appeared", sig)
		}
	}
	time.Sleep(100 * time.Millisecond) // into the reading
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		t.Fatalf("%v: floe did not exit", sig)
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

// The same with LVM: a snapshot LV mounted read-only, removed afterwards,
// also after a failing backup.
func TestFsSnapshotLVM(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// 160M of the VG's 252M: a snapshot of any size larger than the
	// 92M left does not fit. Not much less: lvcreate reduces a snapshot's
	// size to the most its origin can use (the origin's size and a
	// little), so with a 120M LV "1T" became 124M and fitted.
	mnt, vg := lvmVolume(t, e, "160M")
	e.init()
	src := filepath.Join(mnt, "srv")
	writeFiles(t, src)
	manifest := testutil.Manifest(t, src)

	r := e.ok("backup", "--fs-snapshot", "lvm", "--fs-snapshot-size", "40M", src)
	if !strings.Contains(r.stderr, "reading from the LVM snapshot "+vg+"/floe-snap-") {
		t.Errorf("the backup does not say where it reads: %s", r)
	}
	expectNoLeftovers(t, "after the first backup", mnt, vg)
	b, _ := e.backup("--fs-snapshot", "lvm", "--fs-snapshot-size", "40M", src)
	expectNoLeftovers(t, "after the backup", mnt, vg)
	checkSnapshotBackup(t, e, b, src, manifest)

	// the default size (10% of the LV); unchanged files are not read
	b2, _ := e.backup("--fs-snapshot", "lvm", src)
	if s := b2.Summary; s.FilesNew != 0 || s.FilesChanged != 0 || s.FilesUnchanged != 4 {
		t.Errorf("second backup %+v: want 4 files unchanged", s)
	}
	expectNoLeftovers(t, "after the second backup", mnt, vg)

	r = e.floe("backup", "--fs-snapshot", "lvm", "--post-hook", "exit 9", src)
	expectFail(t, r)
	expectNoLeftovers(t, "after a failing post-hook", mnt, vg)
	r = e.floe("backup", "--fs-snapshot", "lvm", "--exclude", "[", src)
	expectFail(t, r)
	expectNoLeftovers(t, "after an invalid exclude", mnt, vg)

	// no room in the VG for a snapshot of this size (nor of the LV's)
	r = e.floe("backup", "--fs-snapshot", "lvm", "--fs-snapshot-size", "1T", src)
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "no backup was made") {
		t.Errorf("want a clear error: %s", r)
	}
	expectNoLeftovers(t, "after lvcreate failed", mnt, vg)
}

// Errors that need no snapshot-capable file system: not root, a path on a
// file system that is not LVM, bad flags.
func TestFsSnapshotErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")

	r := e.floe("backup", "--fs-snapshot", "zfs", src)
	expectCode(t, r, 2)
	r = e.floe("backup", "--fs-snapshot", "btrfs", "--fs-snapshot-size", "1G", src)
	expectCode(t, r, 2)
	r = e.runWith(runOpts{stdin: strings.NewReader("x")}, append(e.repoArgs(), "backup", "--fs-snapshot", "lvm", "--stdin")...)
	expectCode(t, r, 2)

	if os.Geteuid() != 0 {
		r = e.floe("backup", "--fs-snapshot", "btrfs", src)
		expectCode(t, r, 1)
		if !strings.Contains(r.stderr, "needs root") {
			t.Errorf("want a message that root is needed: %s", r)
		}
		return
	}
	// as nobody, who must reach the test directory
	for _, d := range []string{filepath.Dir(e.dir), e.dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r = e.runWith(runOpts{uid: 65534}, "backup", "--fs-snapshot", "lvm", src)
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "lvm snapshots need root") || !strings.Contains(r.stderr, "hint: run floe as root") {
		t.Errorf("want a message that root is needed: %s", r)
	}
	// as root, the test directory is not on an LV (unless the machine's
	// root file system is; then the message names what it is on)
	if _, err := exec.LookPath("lvcreate"); err == nil {
		r = e.floe("backup", "--fs-snapshot", "lvm", src)
		if r.code == 0 {
			t.Skipf("the test directory is on an LVM volume: %s", r)
		}
		if !strings.Contains(r.stderr, "path "+src+": it is on ") || !strings.Contains(r.stderr, "no backup was made") {
			t.Errorf("want an error naming the file system of %s: %s", src, r)
		}
	}
	if s := e.snapshots(); len(s) != 0 {
		t.Errorf("%d snapshots saved by failed backups", len(s))
	}
}
