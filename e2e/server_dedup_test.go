package e2e

import (
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// A host with a backup token, a write-only key and no local cache (a
// reinstalled host, or one that keeps none) re-reads its files but
// deduplicates against what the server holds (issue 11): another host's
// backup of the same data adds almost nothing, and it reads no pack to
// do so (its token could not).
func TestServerBackupTokenNoCacheDeduplicates(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	key := s.writeOnlyKey(admin, "wo.key")
	web1 := s.token("fleet", "web1", "backup")
	web2 := s.token("fleet", "web2", "backup")
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "a.bin"), 6<<20, 21)
	testutil.WriteRandom(t, filepath.Join(src, "b.bin"), 3<<20, 22)
	first := decodeJSON[backupOut](t, s.remote("fleet", web1, "--key-file", key, "--no-cache", "backup", "--json", src))
	if first.Summary.DataAdded < 9<<20 {
		t.Fatalf("the first backup added %d bytes of 9 MiB", first.Summary.DataAdded)
	}
	r := s.remote("fleet", web2, "--key-file", key, "--no-cache", "backup", "--json", "--host", "web2", src)
	expectCode(t, r, 0)
	second := decodeJSON[backupOut](t, r)
	if second.Summary.DataAdded > 64<<10 {
		t.Errorf("a second host's backup of the same data without a cache added %d bytes", second.Summary.DataAdded)
	}
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data"), 0)
}
