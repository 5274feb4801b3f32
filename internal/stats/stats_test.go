package stats_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/stats"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/testutil/backuptest"
	"github.com/floe-backup/floe/internal/walk"
)

func newRepo(t *testing.T) *repo.Repository {
	t.Helper()
	r, _ := testutil.NewRepo(t)
	return r
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t *testing.T, path string, data []byte) { t.Helper(); testutil.WriteFile(t, path, data) }

func backupDir(t *testing.T, r *repo.Repository, dir string) *snapshot.Record {
	return backuptest.Backup(t, r, backup.Options{Paths: []string{dir}, Hostname: "test"})
}

func TestStats(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	dir := t.TempDir()
	a := randomBytes(t, 100_000)
	write(t, filepath.Join(dir, "a"), a)
	write(t, filepath.Join(dir, "b"), a) // a duplicate: deduplicated
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "sub", "c"), []byte("small file, compressible compressible compressible compressible"))
	if err := os.Symlink("a", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	s1 := backupDir(t, r, dir)
	d := randomBytes(t, 50_000)
	write(t, filepath.Join(dir, "sub", "d"), d)
	s2 := backupDir(t, r, dir)

	l := walk.NewCache(snapshot.RepoTrees{Repo: r}, 0)
	smallSize := uint64(len("small file, compressible compressible compressible compressible"))

	t1, err := stats.Snapshots(ctx, l, r.Index(), []hash.Ref{s1.Tree})
	if err != nil {
		t.Fatal(err)
	}
	if t1.Snapshots != 1 || t1.Files != 3 || t1.Others != 1 || t1.LogicalSize != 200_000+smallSize {
		t.Fatalf("s1: %+v", t1)
	}
	if t1.DataBlobs != 2 || t1.DataRaw != 100_000+smallSize {
		t.Fatalf("s1 data blobs: %+v", t1)
	}
	if t1.TreeBlobs == 0 || t1.Blobs != t1.DataBlobs+t1.TreeBlobs || t1.RawSize != t1.DataRaw+t1.TreeRaw || t1.MissingBlobs != 0 {
		t.Fatalf("s1 blobs: %+v", t1)
	}
	if t1.DedupRatio < 1.9 || t1.DedupRatio > 2.0 {
		t.Fatalf("s1 dedup ratio %.3f, want ~2", t1.DedupRatio)
	}
	if t1.StoredSize == 0 || t1.CompressionRatio <= 0 || t1.CompressionRatio > 1.1 {
		t.Fatalf("s1 stored %d, compression %.3f (random data does not compress)", t1.StoredSize, t1.CompressionRatio)
	}

	both, err := stats.Snapshots(ctx, l, r.Index(), []hash.Ref{s1.Tree, s2.Tree})
	if err != nil {
		t.Fatal(err)
	}
	if both.Files != 3+4 || both.LogicalSize != 2*(200_000+smallSize)+50_000 || both.DataBlobs != 3 ||
		both.DataRaw != 150_000+smallSize || both.Dirs != t1.Dirs*2 {
		t.Fatalf("both: %+v (s1 %+v)", both, t1)
	}
	// the same snapshot twice counts its files twice but its blobs once
	twice, err := stats.Snapshots(ctx, l, r.Index(), []hash.Ref{s1.Tree, s1.Tree})
	if err != nil {
		t.Fatal(err)
	}
	if twice.Files != 6 || twice.Blobs != t1.Blobs || twice.StoredSize != t1.StoredSize {
		t.Fatalf("twice: %+v", twice)
	}

	u2, err := stats.UniqueTo(ctx, l, r.Index(), s2.Tree, []hash.Ref{s1.Tree})
	if err != nil {
		t.Fatal(err)
	}
	// d, plus the trees from / down to sub that changed
	if u2.RawSize < 50_000 || u2.RawSize > 60_000 || u2.Blobs < 2 || u2.StoredSize < 50_000 {
		t.Fatalf("unique to s2: %+v", u2)
	}
	u1, err := stats.UniqueTo(ctx, l, r.Index(), s1.Tree, []hash.Ref{s2.Tree})
	if err != nil {
		t.Fatal(err)
	}
	if u1.RawSize > 10_000 || u1.Blobs == 0 { // only s1's trees
		t.Fatalf("unique to s1: %+v", u1)
	}
	if u, err := stats.UniqueTo(ctx, l, r.Index(), s1.Tree, []hash.Ref{s1.Tree}); err != nil || u.Blobs != 0 {
		t.Fatalf("unique to s1 vs itself: %+v %v", u, err)
	}
	// against every other snapshot of the repository: the same as above
	if u, err := stats.UniqueToSnapshot(ctx, l, r, s2); err != nil || *u != *u2 {
		t.Fatalf("UniqueToSnapshot(s2) = %+v, %v; want %+v", u, err, u2)
	}

	rt, err := stats.Repository(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if rt.Packs < 2 || rt.Blobs != uint64(both.Blobs) || rt.StoredSize != both.StoredSize || rt.PackBytes <= rt.StoredSize {
		t.Fatalf("repository %+v, snapshots %+v", rt, both)
	}
}

func TestWriteOnly(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a"), []byte("x"))
	s := backupDir(t, r, dir)
	wo := testutil.WriteOnly(t, r)
	_, err := stats.Snapshots(ctx, snapshot.RepoTrees{Repo: wo}, wo.Index(), []hash.Ref{s.Tree})
	if !errors.Is(err, repo.ErrWriteOnly) {
		t.Fatalf("write-only key: %v", err)
	}
}
