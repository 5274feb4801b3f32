package restore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/slab"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/testutil/backuptest"
)

func newRepo(t *testing.T) *repo.Repository {
	t.Helper()
	r, _ := testutil.NewRepo(t)
	return r
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	testutil.WriteFile(t, path, []byte(content))
}

// backupDir backs up dir and returns the snapshot's root tree.
func backupDir(t *testing.T, r *repo.Repository, dir string) hash.Ref {
	return backuptest.Backup(t, r, backup.Options{Paths: []string{dir}}).Tree
}

func TestRoundTripAndResume(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "a.txt"), "alpha")
	writeFile(t, filepath.Join(src, "sub", "b.txt"), "beta")
	testutil.WriteRandom(t, filepath.Join(src, "big.bin"), 3<<20, 1)
	if err := os.Symlink("a.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	tree := backupDir(t, r, src)

	target := t.TempDir()
	res, err := Run(ctx, r, tree, src, Options{Target: target, Verify: true})
	if err != nil || len(res.Errors) > 0 {
		t.Fatalf("restore: %v %v", err, res.Errors)
	}
	if res.Files != 3 || res.Verified != 3 {
		t.Fatalf("files %d verified %d, want 3", res.Files, res.Verified)
	}
	testutil.CompareTrees(t, src, target)
	if n := slab.Lent(); n != 0 {
		t.Errorf("%d loader buffers not given back by the restore", n)
	}

	// Re-running leaves identical files alone...
	res, err = Run(ctx, r, tree, src, Options{Target: target})
	if err != nil || res.Skipped < 3 || res.Files != 0 {
		t.Fatalf("resume: skipped %d files %d err %v", res.Skipped, res.Files, err)
	}
	// ...rewrites a damaged one of the same size...
	writeFile(t, filepath.Join(target, "a.txt"), "ALPHA")
	res, err = Run(ctx, r, tree, src, Options{Target: target})
	if err != nil || res.Files != 1 {
		t.Fatalf("changed file: rewrote %d files, want 1 (%v)", res.Files, err)
	}
	testutil.CompareTrees(t, src, target)
	// ...and --overwrite never keeps it.
	writeFile(t, filepath.Join(target, "a.txt"), "ALPHA")
	if _, err := Run(ctx, r, tree, src, Options{Target: target, Overwrite: OverwriteNever}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "a.txt")); string(b) != "ALPHA" {
		t.Fatalf("--overwrite never replaced the file: %q", b)
	}
	// --delete removes what the snapshot lacks; always rewrites.
	writeFile(t, filepath.Join(target, "extra.txt"), "x")
	writeFile(t, filepath.Join(target, "sub", "extra", "deep.txt"), "x")
	res, err = Run(ctx, r, tree, src, Options{Target: target, Delete: true, Overwrite: OverwriteAlways})
	if err != nil || res.Deleted != 2 {
		t.Fatalf("--delete deleted %d, want 2 (%v)", res.Deleted, err)
	}
	testutil.CompareTrees(t, src, target)
}

func TestIncludeExclude(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "keep", "x.conf"), "x")
	writeFile(t, filepath.Join(src, "keep", "y.tmp"), "y")
	writeFile(t, filepath.Join(src, "other", "z.conf"), "z")
	tree := backupDir(t, r, src)
	target := t.TempDir()
	if _, err := Run(ctx, r, tree, src, Options{Target: target, Includes: []string{src + "/keep"}, Excludes: []string{"*.tmp"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(target, "keep", "x.conf")); err != nil {
		t.Fatal("included file missing")
	}
	for _, p := range []string{"keep/y.tmp", "other"} {
		if _, err := os.Lstat(filepath.Join(target, p)); err == nil {
			t.Fatalf("%s restored despite include/exclude", p)
		}
	}
}

// saveTree stores raw tree bytes, bypassing the encoder's checks, as a
// hostile client could.
func saveTree(t *testing.T, r *repo.Repository, plain []byte) hash.Ref {
	t.Helper()
	return saveBlob(t, r, repo.TreeBlob, plain)
}

// saveBlob stores a blob and makes it durable.
func saveBlob(t *testing.T, r *repo.Repository, typ repo.BlobType, plain []byte) hash.Ref {
	t.Helper()
	w := r.StartWriting()
	id, _, _, err := w.SaveBlob(context.Background(), typ, r.BlobKey(plain), plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(context.Background()); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestCraftedNamesAreRefused(t *testing.T) {
	ctx := context.Background()
	for _, evil := range []string{"..", "../../etc", "/etc/passwd", "a/../../b"} {
		t.Run(evil, func(t *testing.T) {
			r := newRepo(t)
			placeholder := strings.Repeat("q", len(evil))
			content := []byte("pwned")
			id := saveBlob(t, r, repo.DataBlob, content)
			enc, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: []*snapshot.Node{
				{Name: placeholder, Type: snapshot.TypeFile, Mode: 0o644, Size: uint64(len(content)), Content: []hash.Ref{id}, ChunkSizes: []uint32{uint32(len(content))}},
			}})
			if err != nil {
				t.Fatal(err)
			}
			hostile := bytes.Replace(enc, []byte(placeholder), []byte(evil), 1)
			tree := saveTree(t, r, hostile)

			base := t.TempDir()
			target := filepath.Join(base, "a", "b", "target")
			_, err = Run(ctx, r, tree, "", Options{Target: target})
			if err == nil {
				t.Fatal("restore of a tree with a hostile name succeeded")
			}
			// nothing anywhere below base but the (empty) target dirs
			filepath.Walk(base, func(p string, fi os.FileInfo, _ error) error {
				if fi != nil && !fi.IsDir() {
					t.Errorf("restore wrote %s", p)
				}
				return nil
			})
		})
	}
}

func TestSymlinksInTargetDoNotLeadOut(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "etc", "passwd"), "from the snapshot")
	writeFile(t, filepath.Join(src, "file"), "from the snapshot")
	tree := backupDir(t, r, src)

	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "passwd"), "outside")
	writeFile(t, filepath.Join(outside, "file"), "outside")
	target := t.TempDir()
	// the target holds symlinks where the snapshot has a directory and a file
	if err := os.Symlink(outside, filepath.Join(target, "etc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "file"), filepath.Join(target, "file")); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, r, tree, src, Options{Target: target}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"passwd", "file"} {
		if b, _ := os.ReadFile(filepath.Join(outside, name)); string(b) != "outside" {
			t.Fatalf("restore wrote through a symlink into %s: %q", name, b)
		}
	}
	testutil.CompareTrees(t, src, target)
}

func TestSnapshotSymlinkIsNotFollowed(t *testing.T) {
	// A snapshot with a symlink pointing outside, restored twice: the
	// second run must replace the link, not write through it.
	ctx := context.Background()
	r := newRepo(t)
	src := t.TempDir()
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "victim"), "outside")
	if err := os.Symlink(filepath.Join(outside, "victim"), filepath.Join(src, "victim")); err != nil {
		t.Fatal(err)
	}
	tree := backupDir(t, r, src)
	target := t.TempDir()
	for i := 0; i < 2; i++ {
		if _, err := Run(ctx, r, tree, src, Options{Target: target, Overwrite: OverwriteAlways}); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "victim")); string(b) != "outside" {
		t.Fatalf("victim changed: %q", b)
	}
}

func TestWriteOnlyKeyCannotRestore(t *testing.T) {
	ctx := context.Background()
	wo := testutil.WriteOnly(t, newRepo(t))
	if _, err := Run(ctx, wo, hash.Ref{ID: hash.ID{1}}, "", Options{Target: t.TempDir()}); err != repo.ErrWriteOnly {
		t.Fatalf("err = %v, want ErrWriteOnly", err)
	}
}

// TestNewFileModesAndGroup: files created in directories the restore made
// get their mode at creation and skip fchmod and fchown where nothing would
// change; modes the umask masks, setuid, and a setgid target owned by
// another group must still come out as in the snapshot.
func TestNewFileModesAndGroup(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	src := t.TempDir()
	modes := map[string]os.FileMode{
		"plain": 0o644, "groupw": 0o664, "otherw": 0o666, "private": 0o600,
		"ro": 0o444, "none": 0, "exec": 0o755, "setuid": 0o755 | os.ModeSetuid,
		"setgid": 0o755 | os.ModeSetgid, "sticky": 0o644 | os.ModeSticky,
	}
	for name, m := range modes {
		for _, dir := range []string{"", "sub"} {
			p := filepath.Join(src, dir, name)
			writeFile(t, p, name)
			if err := os.Chmod(p, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	tree := backupDir(t, r, src)

	for _, setgid := range []bool{false, true} {
		target := t.TempDir()
		if setgid {
			if os.Geteuid() != 0 {
				continue
			}
			// a setgid target of another group: new files get its
			// group, which the restore must change back
			if err := os.Chown(target, 0, 4242); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(target, 0o755|os.ModeSetgid); err != nil {
				t.Fatal(err)
			}
		}
		res, err := Run(ctx, r, tree, src, Options{Target: target})
		if err != nil || len(res.Errors) > 0 {
			t.Fatalf("restore: %v %v", err, res.Errors)
		}
		// the directory made in it: its group, and no setgid bit left
		fi, err := os.Lstat(filepath.Join(target, "sub"))
		want, _ := os.Lstat(filepath.Join(src, "sub"))
		if err != nil || fi.Mode() != want.Mode() || gidOf(fi) != gidOf(want) {
			t.Errorf("setgid target %v: sub: %v group %d, want %v group %d (%v)", setgid, fi.Mode(), gidOf(fi), want.Mode(), gidOf(want), err)
		}
		for name, m := range modes {
			for _, dir := range []string{"", "sub"} {
				fi, err := os.Lstat(filepath.Join(target, dir, name))
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode() != m {
					t.Errorf("setgid target %v: %s: mode %v, want %v", setgid, filepath.Join(dir, name), fi.Mode(), m)
				}
				want, _ := os.Lstat(filepath.Join(src, dir, name))
				if gidOf(fi) != gidOf(want) {
					t.Errorf("setgid target %v: %s: group %d, want %d", setgid, filepath.Join(dir, name), gidOf(fi), gidOf(want))
				}
			}
		}
	}
}

func gidOf(fi os.FileInfo) uint32 { return fi.Sys().(*syscall.Stat_t).Gid }

// TestNewFilesUnderDefaultACL: a default ACL on the target, not the umask,
// decides a new file's mode; one that takes the group and other bits away
// must not survive in the restored files (fchmod skipped wrongly).
func TestNewFilesUnderDefaultACL(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "f"), "x")
	writeFile(t, filepath.Join(src, "sub", "g"), "y")
	for _, p := range []string{filepath.Join(src, "f"), filepath.Join(src, "sub", "g")} {
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tree := backupDir(t, r, src)
	target := t.TempDir()
	// system.posix_acl_default: version 2, then (tag, perm, id) entries:
	// user::rwx group::--- other::---
	acl := []byte{2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}
	if err := unix.Setxattr(target, "system.posix_acl_default", acl, 0); err != nil {
		t.Skipf("no default ACLs here: %v", err)
	}
	res, err := Run(ctx, r, tree, src, Options{Target: target})
	if err != nil || len(res.Errors) > 0 {
		t.Fatalf("restore: %v %v", err, res.Errors)
	}
	for _, name := range []string{"f", "sub/g"} {
		fi, err := os.Stat(filepath.Join(target, name))
		if err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s: %v (%v), want 0644", name, fi.Mode(), err)
		}
	}
}
