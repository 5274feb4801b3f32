//go:build linux

package e2e

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// TestLimitUploadStreamsPacks backs up a 512 MiB file into two new
// repositories, without and with --limit-upload, and compares the peak RSS
// of the two processes. Packs are written to storage as they fill; when
// the limiter hid that from the repository, every pack was held in memory
// until uploaded, and the limited backup peaked at 165 MB against 60 MB
// (measured). The limit is high enough that the test takes seconds, and
// low enough that it is seen to apply.
func TestLimitUploadStreamsPacks(t *testing.T) {
	e := newEnv(t)
	src := e.mkdir("src")
	const size = 512 << 20
	testutil.WriteRandom(t, filepath.Join(src, "big"), size, 51)

	backup := func(repo string, limit ...string) (result, backupOut) {
		t.Helper()
		global := []string{"-r", repo, "--password-file", e.pwFile}
		if r := e.run(append(global, "init")...); r.code != 0 {
			t.Fatalf("init: %s", r)
		}
		r := e.run(append(append(global, limit...), "backup", "--json", src)...)
		expectCode(t, r, 0)
		out := decodeJSON[backupOut](t, r)
		if out.Summary.DataAdded < size {
			t.Fatalf("the backup added %d bytes, want the whole %d-byte file", out.Summary.DataAdded, size)
		}
		return r, out
	}
	free, _ := backup(e.path("repo-unlimited"))
	const limitKiB = 256 << 10 // 256 MiB/s: 512 MiB take 2 s at least
	limited, _ := backup(e.path("repo-limited"), "--limit-upload", strconv.Itoa(limitKiB))
	t.Logf("peak RSS unlimited %d MiB in %v, --limit-upload %d KiB/s %d MiB in %v",
		free.maxRSS>>20, free.wall.Round(time.Millisecond), limitKiB, limited.maxRSS>>20, limited.wall.Round(time.Millisecond))
	if free.maxRSS <= 0 || limited.maxRSS <= 0 {
		t.Fatalf("no peak RSS measured (%d, %d)", free.maxRSS, limited.maxRSS)
	}
	// two 16 MiB packs in memory are more than the noise between runs
	if limited.maxRSS > free.maxRSS+32<<20 {
		t.Errorf("the limited backup peaked at %d MiB, the unlimited one at %d MiB: packs are held in memory under --limit-upload",
			limited.maxRSS>>20, free.maxRSS>>20)
	}
	if min := time.Duration(float64(size) / float64(limitKiB<<10) * 0.75 * float64(time.Second)); limited.wall < min {
		t.Errorf("512 MiB at %d KiB/s took %v, want at least %v: the limit does not apply", limitKiB, limited.wall, min)
	}
}
