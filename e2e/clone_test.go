package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// The first backup of a cloned guest names its golden image's snapshot
// (another host's) as its parent. A copy has new inodes and ctimes, so
// only with --ignore-inode (or --ignore-ctime where inodes are kept) are
// the files that match by path, size and mtime taken from the parent
// unread; the one file changed in the clone is read, and the snapshot
// restores byte for byte. Both with a full key and with a write-only key,
// whose parent comes from the local cache.
func TestCloneFirstBackup(t *testing.T) {
	t.Parallel()
	for _, writeOnly := range []bool{false, true} {
		name := "full key"
		if writeOnly {
			name = "write-only key"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.init()
			args := func(a ...string) []string { return append(e.repoArgs(), a...) }
			if writeOnly {
				wo := e.path("host.key")
				e.ok("key", "add", "--write-only", "--new-key-file", wo)
				registerKeyFile(t, wo)
				args = func(a ...string) []string { return append([]string{"-r", e.repo, "--key-file", wo}, a...) }
			}
			backup := func(a ...string) backupOut {
				t.Helper()
				r := e.run(args(append([]string{"backup", "--json"}, a...)...)...)
				expectCode(t, r, 0)
				return decodeJSON[backupOut](t, r)
			}

			golden := e.mkdir("golden")
			testutil.ManyFiles(t, golden, 120, 3000, 61)
			testutil.WriteRandom(t, filepath.Join(golden, "big"), 2<<20, 62)
			const files = 121
			g := backup("--host", "golden", golden)
			if g.Summary.FilesNew != files {
				t.Fatalf("golden backup: %d new files, want %d", g.Summary.FilesNew, files)
			}

			// the clone: the same tree copied (new inodes and ctimes,
			// same mtimes), elsewhere, with one file changed
			clone := e.path("clone")
			if out, err := exec.Command("cp", "-a", golden, clone).CombinedOutput(); err != nil {
				t.Fatalf("cp -a: %v\n%s", err, out)
			}
			changed := filepath.Join(clone, "d0", "f7")
			if err := os.WriteFile(changed, []byte("the clone's own configuration\n"), 0o644); err != nil {
				t.Fatal(err)
			}

			// without the flags every file is read: the inodes differ
			for _, flags := range [][]string{nil, {"--ignore-ctime"}} {
				b := backup(append(append([]string{"--host", "clone", "--parent", g.Snapshot}, flags...), clone)...)
				if b.Parent != g.Snapshot {
					t.Errorf("%v: parent %q, want the golden snapshot %q", flags, b.Parent, g.Snapshot)
				}
				if b.Summary.FilesUnchanged != 0 || b.Summary.FilesChanged+b.Summary.FilesNew != files {
					t.Errorf("%v: %d unchanged, %d changed, %d new; want all %d read", flags, b.Summary.FilesUnchanged,
						b.Summary.FilesChanged, b.Summary.FilesNew, files)
				}
			}

			c := backup("--host", "clone", "--parent", g.Snapshot, "--ignore-inode", "--ignore-ctime", clone)
			if c.Parent != g.Snapshot {
				t.Errorf("parent %q, want the golden snapshot %q", c.Parent, g.Snapshot)
			}
			if c.Summary.FilesUnchanged != files-1 || c.Summary.FilesChanged != 1 || c.Summary.FilesNew != 0 {
				t.Errorf("clone backup: %d unchanged, %d changed, %d new; want %d unchanged and the one changed file read",
					c.Summary.FilesUnchanged, c.Summary.FilesChanged, c.Summary.FilesNew, files-1)
			}
			if c.Summary.DataAdded > 64<<10 {
				t.Errorf("clone backup added %d bytes for one small changed file", c.Summary.DataAdded)
			}

			// restic's --ignore-inode ignores ctimes too
			c2 := backup("--host", "clone", "--parent", g.Snapshot, "--ignore-inode", clone)
			if c2.Summary.FilesUnchanged != files-1 {
				t.Errorf("--ignore-inode alone: %d unchanged, want %d", c2.Summary.FilesUnchanged, files-1)
			}

			dst := e.path("restored")
			e.ok("restore", c.Snapshot+":"+clone, "--target", dst)
			testutil.CompareTrees(t, clone, dst)
		})
	}
}
