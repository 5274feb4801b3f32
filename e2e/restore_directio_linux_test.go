package e2e

import (
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// restore writes large files around the page cache (O_DIRECT), and through
// it with --buffered-io; either way the files are the snapshot's, verified,
// and a second restore leaves them alone.
func TestRestoreDirectIO(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	testutil.SkipWithoutDirectIO(t, e.path("."))
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "big"), 12<<20+4097, 7)
	testutil.WriteRandom(t, filepath.Join(src, "small"), 100<<10, 8)
	e.backup(src)

	for _, c := range []struct {
		flags    []string
		buffered bool
	}{{nil, false}, {[]string{"--buffered-io"}, true}} {
		target := e.path("target" + map[bool]string{false: "-direct", true: "-buffered"}[c.buffered])
		e.ok(append([]string{"restore", "latest:" + src, "--target", target}, c.flags...)...)
		in, total := cachedPages(t, filepath.Join(target, "big"))
		if c.buffered && in < total*9/10 || !c.buffered && in > total/10 {
			t.Errorf("flags %v: %d of %d pages of the restored file in the page cache", c.flags, in, total)
		}
		testutil.CompareTrees(t, src, target)
		// resumed with --verify: nothing rewritten, everything read back
		r := e.ok(append([]string{"restore", "--json", "--verify", "latest:" + src, "--target", target}, c.flags...)...)
		out := decodeJSON[struct {
			Files, Verified, Skipped uint64
		}](t, r)
		if out.Files != 0 || out.Verified != 2 || out.Skipped != 2 {
			t.Errorf("flags %v: resumed restore %+v, want 0 files written, 2 skipped and verified", c.flags, out)
		}
	}
}
