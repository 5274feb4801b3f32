//go:build linux

package devrestore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSys builds a /sys/dev/block with sdb (8:16) and its partition sdb1
// (8:17), and a mountinfo.
func fakeSys(t *testing.T, mounts string) {
	t.Helper()
	root := t.TempDir()
	devs := filepath.Join(root, "devices", "sdb")
	os.MkdirAll(filepath.Join(devs, "holders"), 0o755)
	os.MkdirAll(filepath.Join(devs, "sdb1", "holders"), 0o755)
	os.WriteFile(filepath.Join(devs, "sdb1", "partition"), []byte("1\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "devices", "sdc", "holders"), 0o755)
	blk := filepath.Join(root, "dev", "block")
	os.MkdirAll(blk, 0o755)
	os.Symlink(devs, filepath.Join(blk, "8:16"))
	os.Symlink(filepath.Join(devs, "sdb1"), filepath.Join(blk, "8:17"))
	os.Symlink(filepath.Join(root, "devices", "sdc"), filepath.Join(blk, "8:32"))
	mi := filepath.Join(root, "mountinfo")
	os.WriteFile(mi, []byte(mounts), 0o644)
	oldB, oldM := sysBlock, mountinfo
	sysBlock, mountinfo = blk, mi
	t.Cleanup(func() { sysBlock, mountinfo = oldB, oldM })
	sysRoot = root
}

var sysRoot string

func TestCheckUnused(t *testing.T) {
	base := "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n23 22 0:5 / /proc rw - proc proc rw\n"
	fakeSys(t, base)
	if err := CheckUnused("/dev/sdb", 8<<8|16); err != nil {
		t.Fatalf("an unused device: %v", err)
	}
	// a partition mounted
	fakeSys(t, base+"30 22 8:17 / /mnt rw - ext4 /dev/sdb1 rw\n")
	err := CheckUnused("/dev/sdb", 8<<8|16)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "mounted (/dev/sdb1 on /mnt)") {
		t.Fatalf("a mounted partition: %v", err)
	}
	if err := CheckUnused("/dev/sdc", 8<<8|32); err != nil {
		t.Fatalf("another device: %v", err)
	}
	// held by LVM (a holder of the partition)
	fakeSys(t, base)
	os.MkdirAll(filepath.Join(sysRoot, "devices", "sdb", "sdb1", "holders", "dm-0"), 0o755)
	err = CheckUnused("/dev/sdb", 8<<8|16)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "in use by dm-0") {
		t.Fatalf("a held device: %v", err)
	}
	if err := CheckUnused("/dev/sdx", 8<<8|99); err == nil {
		t.Fatal("a device unknown to /sys")
	}
}
