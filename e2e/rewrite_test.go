//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// A secret backed up by mistake: rewrite removes it from the snapshots,
// forget+prune from the packs.
func TestRewriteRemovesASecret(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "secret.key"), 300<<10, 61)
	testutil.ManyFiles(t, src, 10, 4<<10, 62)
	b1, _ := e.backup(src)
	testutil.WriteRandom(t, filepath.Join(src, "later"), 20<<10, 63)
	b2, _ := e.backup(src)

	// the secret's chunks
	r := e.ok("cat", "tree", "latest:"+src)
	tree := decodeJSON[struct {
		Nodes []struct {
			Name    string   `json:"name"`
			Content []string `json:"content"`
		} `json:"nodes"`
	}](t, r)
	var secretIDs []string
	for _, n := range tree.Nodes {
		if n.Name == "secret.key" {
			secretIDs = n.Content
		}
	}
	if len(secretIDs) == 0 {
		t.Fatal("the secret is not in the snapshot")
	}

	// a write-only key may not rewrite
	e.ok("key", "add", "--write-only", "--new-key-file", e.path("wo.key"))
	expectCode(t, e.run("-r", e.repo, "--key-file", e.path("wo.key"), "rewrite", "--all", "--exclude", "secret.key"), 12)
	expectCode(t, e.floe("rewrite", "--all"), 2)

	// a dry run changes nothing
	e.ok("rewrite", "--all", "--exclude", filepath.Join(src, "secret.key"), "--dry-run")
	if s := e.snapshots(); len(s) != 2 || s[0].ID != b1.Snapshot {
		t.Fatalf("a dry run changed the snapshots: %+v", s)
	}

	type rwOut struct {
		Snapshots []struct {
			Old          string `json:"old"`
			New          string `json:"new"`
			Removed      uint64 `json:"removed"`
			RemovedBytes uint64 `json:"removed_bytes"`
			Forgotten    bool   `json:"forgotten"`
		} `json:"snapshots"`
	}
	out := decodeJSON[rwOut](t, e.ok("rewrite", "--json", "--all", "--exclude", filepath.Join(src, "secret.key"), "--forget"))
	if len(out.Snapshots) != 2 {
		t.Fatalf("rewrite: %+v", out)
	}
	for _, s := range out.Snapshots {
		if s.Removed != 1 || s.RemovedBytes != 300<<10 || !s.Forgotten || s.New == "" {
			t.Errorf("rewrite of %s: %+v", s.Old, s)
		}
	}
	snaps := e.snapshots()
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots after rewrite --forget, want 2", len(snaps))
	}
	for _, s := range snaps {
		if s.ID == b1.Snapshot || s.ID == b2.Snapshot {
			t.Errorf("old snapshot %s is still there", s.ID)
		}
	}
	rec := decodeJSON[map[string]any](t, e.ok("cat", "snapshot", "latest"))
	if rec["original"] != b2.Snapshot {
		t.Errorf("the rewritten snapshot's original is %v, want %s", rec["original"], b2.Snapshot)
	}
	dst := e.path("restored")
	e.ok("restore", "latest:"+src, "--target", dst)
	if _, err := os.Stat(filepath.Join(dst, "secret.key")); !os.IsNotExist(err) {
		t.Errorf("the secret is restored from the rewritten snapshot: %v", err)
	}
	os.Remove(filepath.Join(src, "secret.key"))
	testutil.CompareTrees(t, src, dst)

	// prune (mark, then sweep): no pack holds the secret's chunks
	e.ok("prune", "--grace", "0")
	e.ok("prune", "--grace", "0")
	ids, _ := packBlobIDs(t, e.repo)
	for _, id := range secretIDs {
		if ids[id] {
			t.Errorf("blob %s of the secret is still in a pack after rewrite, forget and prune", id[:12])
		}
	}
	idxFiles, err := os.ReadDir(filepath.Join(e.repo, "index"))
	if err != nil || len(idxFiles) == 0 {
		t.Fatalf("index files: %v", err)
	}
	for _, f := range idxFiles {
		idx := decodeJSON[struct {
			Packs []struct {
				Blobs []struct {
					ID string `json:"id"`
				} `json:"blobs"`
			} `json:"packs"`
		}](t, e.ok("cat", "index", f.Name()))
		for _, p := range idx.Packs {
			for _, b := range p.Blobs {
				for _, id := range secretIDs {
					if b.ID == id {
						t.Errorf("index %s still lists the secret's blob %s", f.Name()[:12], id[:12])
					}
				}
			}
		}
	}
	e.ok("check", "--read-data")
}
