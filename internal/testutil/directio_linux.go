package testutil

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// SkipWithoutDirectIO skips the test when the file system of dir does not
// take O_DIRECT (tmpfs before Linux 6.6, some FUSE and overlay setups):
// tests of writing around the page cache then have nothing to check.
func SkipWithoutDirectIO(t testing.TB, dir string) {
	t.Helper()
	probe := filepath.Join(dir, ".direct-io-probe")
	fd, err := unix.Open(probe, unix.O_WRONLY|unix.O_CREAT|unix.O_DIRECT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Skipf("the file system of %s has no O_DIRECT: %v", dir, err)
	}
	unix.Close(fd)
	unix.Unlink(probe)
}
