package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/testutil"
)

// cachedPages counts the pages of path in the page cache.
func cachedPages(t *testing.T, path string) (in, total int) {
	t.Helper()
	in, total, err := directio.CachedPages(path)
	if err != nil {
		t.Fatal(err)
	}
	return in, total
}

// floe serve writes packs around the page cache (O_DIRECT), and through
// it with --buffered-io; either way a restore is byte-exact.
func TestServerDirectIO(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	testutil.SkipWithoutDirectIO(t, e.path("."))
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "big"), 6<<20, 3)
	for _, buffered := range []bool{false, true} {
		name := map[bool]string{false: "direct", true: "buffered"}[buffered]
		root := e.mkdir("srv-" + name)
		var extra []string
		if buffered {
			extra = append(extra, "--buffered-io")
		}
		s := e.startServer(root, freePort(t), extra...)
		admin := s.token("fleet", "admin", "admin")
		expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "init"), 0)
		expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "backup", src), 0)
		in, total := 0, 0
		filepath.WalkDir(filepath.Join(root, "fleet", "data"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				i, n := cachedPages(t, p)
				in, total = in+i, total+n
			}
			return nil
		})
		switch {
		case total < (6<<20)/os.Getpagesize():
			t.Fatalf("%s: the packs hold %d pages, want the 6 MiB file's", name, total)
		case !buffered && in > total/10:
			t.Errorf("direct: %d of the packs' %d pages are in the page cache", in, total)
		case buffered && in < total*9/10:
			t.Errorf("--buffered-io: only %d of the packs' %d pages are in the page cache", in, total)
		}
		dst := e.path("restored-" + name)
		expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "restore", "latest:"+src, "--target", dst), 0)
		testutil.CompareTrees(t, src, dst)
	}
}
