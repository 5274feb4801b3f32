//go:build !linux

package testutil

import "testing"

// SkipWithoutDirectIO skips: direct I/O is Linux's O_DIRECT.
func SkipWithoutDirectIO(t testing.TB, dir string) {
	t.Helper()
	t.Skip("no O_DIRECT on this system")
}
