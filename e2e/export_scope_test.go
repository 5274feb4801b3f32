//go:build linux

package e2e

import (
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/testutil"
)

// treeContentIDs is every data blob ID of the files directly in the
// directory dir of snapshot snap (floe cat tree SNAP:DIR).
func treeContentIDs(e *floeEnv, args []string, snap, dir string) map[string]bool {
	e.t.Helper()
	r := e.run(append(args, "cat", "tree", snap+":"+dir)...)
	if r.code != 0 {
		e.t.Fatalf("cat tree: %s", r)
	}
	out := decodeJSON[struct {
		Nodes []struct {
			Content []string `json:"content"`
		} `json:"nodes"`
	}](e.t, r)
	ids := map[string]bool{}
	for _, n := range out.Nodes {
		for _, c := range n.Content {
			ids[c] = true
		}
	}
	return ids
}

// packsOf returns the blob IDs of each pack under dir/data (from the
// headers, each blob checked against its ID), and each pack's size.
func packsOf(t *testing.T, dir string) ([]map[string]bool, []int64) {
	t.Helper()
	var out []map[string]bool
	var sizes []int64
	err := filepath.WalkDir(filepath.Join(dir, "data"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		blobs, bad, err := packfile.Verify(data)
		if err != nil || len(bad) > 0 {
			t.Fatalf("pack %s: %v %v", p, err, bad)
		}
		ids := map[string]bool{}
		for _, b := range blobs {
			ids[b.ID.String()] = true
		}
		out = append(out, ids)
		sizes = append(sizes, int64(len(data)))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, sizes
}

// packBlobIDs reads every pack under dir/data and returns the IDs of the
// blobs in them (from the headers, each blob checked against its ID) and
// the packs' total size.
func packBlobIDs(t *testing.T, dir string) (map[string]bool, int64) {
	t.Helper()
	packs, sizes := packsOf(t, dir)
	ids := map[string]bool{}
	for _, p := range packs {
		maps.Copy(ids, p)
	}
	var size int64
	for _, n := range sizes {
		size += n
	}
	return ids, size
}

// An export of one host carries only that host's blobs, in new packs,
// and with --new-password-file only a key of its own.
func TestExportOnlyWhatTheSnapshotsNeed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	db := e.mkdir("db")
	testutil.WriteRandom(t, filepath.Join(db, "dump.sql"), 1<<20, 31)
	testutil.ManyFiles(t, db, 20, 4<<10, 32)
	web := e.mkdir("web")
	testutil.WriteRandom(t, filepath.Join(web, "secret-of-web1"), 6<<20, 33)
	// each backup writes packs of its own; a prune that repacks puts
	// both hosts' blobs into the same packs, which an export must split
	testutil.WriteRandom(t, filepath.Join(db, "tmp"), 1<<20, 34)
	testutil.WriteRandom(t, filepath.Join(web, "tmp"), 1<<20, 35)
	old1, _ := e.backup("--host", "db1", db)
	old2, _ := e.backup("--host", "web1", web)
	os.Remove(filepath.Join(db, "tmp"))
	os.Remove(filepath.Join(web, "tmp"))
	new1, _ := e.backup("--host", "db1", db)
	new2, _ := e.backup("--host", "web1", web)
	e.ok("forget", old1.Snapshot, old2.Snapshot)
	e.ok("prune", "--grace", "0", "--max-unused", "0%")
	e.ok("prune", "--grace", "0", "--max-unused", "0%")
	webIDs := treeContentIDs(e, e.repoArgs(), new2.Snapshot, web)
	dbIDs := treeContentIDs(e, e.repoArgs(), new1.Snapshot, db)
	if len(webIDs) < 2 {
		t.Fatalf("web1's file has %d chunks", len(webIDs))
	}
	mixed := false
	var wholePacks int64 // what copying db1's packs whole would write
	packs, sizes := packsOf(t, e.repo)
	for i, pack := range packs {
		hasDB, hasWeb := false, false
		for id := range pack {
			hasDB, hasWeb = hasDB || dbIDs[id], hasWeb || webIDs[id]
		}
		mixed = mixed || hasDB && hasWeb
		if hasDB {
			wholePacks += sizes[i]
		}
	}
	if !mixed {
		t.Fatal("no pack of the repository holds both hosts' data: the test would prove nothing")
	}

	exp := e.path("usb", "db1")
	pw2 := e.path("export-password")
	writeSecretFile(t, pw2)
	e.ok("export", "--host", "db1", "--to", exp, "--new-password-file", pw2)
	ids, size := packBlobIDs(t, exp)
	for id := range webIDs {
		if ids[id] {
			t.Errorf("the export of db1 holds web1's blob %s", id[:12])
		}
	}
	if size < 1<<20 || size > 1<<20+256<<10 {
		t.Errorf("the export's packs hold %d bytes, want about db1's 1.1 MiB", size)
	}
	t.Logf("export of db1: %d bytes of packs; db1's packs whole: %d bytes", size, wholePacks)
	if wholePacks < size+4<<20 {
		t.Errorf("db1's packs hold %d bytes: the repack did not mix in web1's 6 MiB, the test proves little", wholePacks)
	}
	keys, _ := os.ReadDir(filepath.Join(exp, "keys"))
	if len(keys) != 1 {
		t.Errorf("the export holds %d key records, want its own only", len(keys))
	}
	// the source's password does not open it (exit 11), its own does
	expectCode(t, e.run("-r", exp, "--password-file", e.pwFile, "snapshots"), 11)
	expectCode(t, e.run("-r", exp, "--password-file", pw2, "check", "--read-data"), 0)

	// imported elsewhere: byte-exact
	other := newOtherRepo(e, "site2")
	other.ok("import", exp, "--from-password-file", pw2)
	dst := e.path("restored")
	other.ok("restore", "latest", "--target", dst)
	testutil.CompareTrees(t, db, filepath.Join(dst, db))
	// and back into the source: nothing new (same blob IDs), no duplicate snapshot
	e.ok("import", exp, "--from-password-file", pw2)
	if n := len(e.snapshots()); n != 2 {
		t.Errorf("the source has %d snapshots after importing its own export, want 2", n)
	}

	// the default export: the source's keys, still only db1's blobs
	exp2 := e.path("usb", "db1-default")
	e.ok("export", "--host", "db1", "--to", exp2, "--new-key-file", e.path("export.key"))
	expectCode(t, e.run("-r", exp2, "--key-file", e.path("export.key"), "snapshots"), 0)
	exp3 := e.path("usb", "db1-source-keys")
	e.ok("export", "--host", "db1", "--to", exp3)
	ids3, _ := packBlobIDs(t, exp3)
	for id := range webIDs {
		if ids3[id] {
			t.Errorf("the default export of db1 holds web1's blob %s", id[:12])
		}
	}
	expectCode(t, e.run("-r", exp3, "--password-file", e.pwFile, "check"), 0)
}
