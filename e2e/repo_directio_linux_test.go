package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/storage/local"
	"github.com/floe-backup/floe/internal/testutil"
)

// --repo-direct-io writes a local repository's packs around the page
// cache and reads them back the same way; without it they go through the
// cache. Either way backup, check --read-data and restore agree.
func TestRepoDirectIO(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	testutil.SkipWithoutDirectIO(t, e.path("."))
	if !local.DirectSuits(e.path(".")) {
		t.Skipf("%s is on a file system --repo-direct-io leaves buffered", e.path("."))
	}
	e.init()
	for _, direct := range []bool{false, true} {
		var flags []string
		if direct {
			flags = []string{"--repo-direct-io"}
		}
		src := e.mkdir("src-" + map[bool]string{false: "buffered", true: "direct"}[direct])
		testutil.WriteRandom(t, filepath.Join(src, "big"), 24<<20+4097, map[bool]uint64{false: 1, true: 2}[direct])
		testutil.WriteRandom(t, filepath.Join(src, "small"), 100<<10, map[bool]uint64{false: 3, true: 4}[direct])
		before := packFiles(t, e.repo)
		e.ok(append(flags, "backup", src)...)
		in, total := 0, 0
		for p := range packFiles(t, e.repo) {
			if !before[p] {
				i, n := cachedPages(t, p)
				in, total = in+i, total+n
			}
		}
		if total < (24<<20)/4096 {
			t.Fatalf("direct %v: the new packs hold %d pages", direct, total)
		}
		if direct && in > total/10 || !direct && in < total*9/10 {
			t.Errorf("direct %v: %d of %d pages of the new packs in the page cache", direct, in, total)
		}
		e.ok(append(flags, "check", "--read-data")...)
		target := e.path("target-" + filepath.Base(src))
		e.ok(append(flags, "restore", "latest:"+src, "--target", target)...)
		testutil.CompareTrees(t, src, target)
	}
	// a host with a write-only key adds a backup around the page cache,
	// and can neither read it back nor delete
	wo := e.path("wo.key")
	e.ok("key", "add", "--write-only", "--new-key-file", wo)
	src := e.mkdir("src-wo")
	testutil.WriteRandom(t, filepath.Join(src, "big"), 12<<20, 5)
	woArgs := []string{"-r", e.repo, "--key-file", wo, "--repo-direct-io"}
	if r := e.run(append(woArgs, "backup", src)...); r.code != 0 {
		t.Fatalf("write-only backup with --repo-direct-io: %s", r)
	}
	expectCode(t, e.run(append(woArgs, "restore", "latest:"+src, "--target", e.path("target-wo"))...), 12)
	expectCode(t, e.run(append(woArgs, "forget", "--keep-last", "1", "--prune")...), 12)
	e.ok("check", "--read-data")
}

// packFiles returns the pack files of the repository at repo.
func packFiles(t *testing.T, repo string) map[string]bool {
	t.Helper()
	files := map[string]bool{}
	err := filepath.WalkDir(filepath.Join(repo, "data"), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files[p] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}
