package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/testutil/backuptest"
	"golang.org/x/sys/unix"
)

// countingBackend counts the loads of packs and fails those that cover
// the byte failAt of pack failPack.
type countingBackend struct {
	storage.Backend
	mu       sync.Mutex
	loads    int
	failPack string
	failAt   int64
}

var errInjected = errors.New("injected read error")

func (b *countingBackend) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	if h.Type == storage.Pack {
		b.mu.Lock()
		b.loads++
		fail := h.Name == b.failPack && offset <= b.failAt && b.failAt < offset+length
		b.mu.Unlock()
		if fail {
			return nil, fmt.Errorf("load %s: %w", h, errInjected)
		}
	}
	return b.Backend.Load(ctx, h, offset, length)
}

// rangeRepo backs up a tree in which many files share blobs (identical
// small files, two identical large files) and returns the repository
// reopened on a counting backend, the snapshot's tree and the source.
func rangeRepo(t *testing.T) (*repo.Repository, *countingBackend, *snapshot.Record, string) {
	t.Helper()
	r, mem := testutil.NewRepo(t)
	src := t.TempDir()
	for i := range 30 {
		writeFile(t, filepath.Join(src, "same", fmt.Sprintf("f%02d", i)), strings.Repeat("shared content\n", 500))
		writeFile(t, filepath.Join(src, "own", fmt.Sprintf("f%02d", i)), strings.Repeat(fmt.Sprintf("file %d\n", i), 100+i))
	}
	testutil.WriteRandom(t, filepath.Join(src, "big1"), 5<<20, 7)
	testutil.WriteRandom(t, filepath.Join(src, "big2"), 5<<20, 7)
	sn := backuptest.Backup(t, r, backup.Options{Paths: []string{src}})
	cb := &countingBackend{Backend: mem}
	r2 := testutil.Reopen(t, cb)
	return r2, cb, sn, src
}

// Blobs that many files share are read once, by ranges: restoring 62
// files (with 30 identical ones and two identical large ones) takes a
// handful of pack reads, not one per file or per blob.
func TestRestoreReadsByRanges(t *testing.T) {
	r, cb, sn, src := rangeRepo(t)
	target := t.TempDir()
	cb.loads = 0
	res, err := Run(context.Background(), r, sn.Tree, src, Options{Target: target, Verify: true})
	if err != nil || len(res.Errors) > 0 {
		t.Fatalf("restore: %v %v", err, res.Errors)
	}
	if res.Files != 62 || res.Verified != 62 {
		t.Fatalf("files %d verified %d, want 62", res.Files, res.Verified)
	}
	testutil.CompareTrees(t, src, target)
	t.Logf("%d pack reads", cb.loads)
	// the trees of the path down to src are loaded one by one
	if cb.loads > 8+strings.Count(src, "/") {
		t.Fatalf("%d pack reads for 62 files sharing their blobs: not read by ranges", cb.loads)
	}
}

// A read error in the middle of a range: the range is read blob by blob
// instead, so every file but the one whose blob cannot be read at all is
// restored, and that one is reported.
func TestRestorePackReadErrorMidRange(t *testing.T) {
	r, cb, sn, src := rangeRepo(t)
	// the blob of own/f10, which lies between others in its pack
	tree, _, err := subtree(context.Background(), snapshot.RepoTrees{Repo: r}, sn.Tree, src+"/own")
	if err != nil {
		t.Fatal(err)
	}
	n := tree.Find("f10")
	loc, ok := r.Index().Lookup(repo.BlobHandle{Type: repo.DataBlob, ID: n.Content[0].ID})
	if !ok {
		t.Fatal("blob of own/f10 not in the index")
	}
	cb.failPack, cb.failAt = loc.Pack.String(), int64(loc.Offset)+int64(loc.Length)/2

	target := t.TempDir()
	res, err := Run(context.Background(), r, sn.Tree, src, Options{Target: target})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || !errors.Is(res.Errors[0], errInjected) || !strings.Contains(res.Errors[0].Error(), "own/f10") {
		t.Fatalf("errors = %v, want one read error for own/f10", res.Errors)
	}
	if res.Files != 61 {
		t.Fatalf("restored %d files, want 61", res.Files)
	}
	// the failed file is there (created) but without its content; the
	// comparison below covers every other file. Removing it from both
	// trees changes both directories' mtimes, a clock tick apart on a
	// loaded machine: they get back the source's, which restore must
	// have set.
	own, err := os.Stat(filepath.Join(src, "own"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.Stat(filepath.Join(target, "own"))
	if err != nil {
		t.Fatal(err)
	}
	if !got.ModTime().Equal(own.ModTime()) {
		t.Fatalf("restored own: mtime %v, want %v", got.ModTime(), own.ModTime())
	}
	if err := os.Remove(filepath.Join(src, "own", "f10")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(target, "own", "f10")); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, dir := range []string{src, target} {
		if err := os.Chtimes(filepath.Join(dir, "own"), own.ModTime(), own.ModTime()); err != nil {
			t.Fatal(err)
		}
	}
	testutil.CompareTrees(t, src, target)
}

// A blob missing from the index fails only the files that need it; a
// window's other blobs are still read by ranges.
func TestRestoreBlobMissingFromIndex(t *testing.T) {
	ctx := context.Background()
	r, _, sn, src := rangeRepo(t)
	tree, _, err := subtree(ctx, snapshot.RepoTrees{Repo: r}, sn.Tree, src+"/own")
	if err != nil {
		t.Fatal(err)
	}
	// a tree whose f03 names a blob nobody stored
	ghost := *tree.Find("f03")
	ghost.Content = []hash.Ref{{ID: hash.ID{0xde, 0xad}, Key: hash.ID{0xbe, 0xef}}}
	var nodes []*snapshot.Node
	for _, n := range tree.Nodes {
		if n.Name == "f03" {
			n = &ghost
		}
		nodes = append(nodes, n)
	}
	data, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	w := r.StartWriting()
	ref, _, _, err := w.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(data), data)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	res, err := Run(ctx, r, ref, "", Options{Target: target})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || !errors.Is(res.Errors[0], repo.ErrBlobNotFound) || !strings.Contains(res.Errors[0].Error(), "f03") {
		t.Fatalf("errors = %v, want one missing blob for f03", res.Errors)
	}
	if res.Files != 29 {
		t.Fatalf("restored %d files, want 29", res.Files)
	}
	for i := range 30 {
		name := fmt.Sprintf("f%02d", i)
		got, err := os.ReadFile(filepath.Join(target, name))
		if i == 3 {
			if err == nil {
				t.Fatal("f03 restored without its content")
			}
			continue
		}
		want, _ := os.ReadFile(filepath.Join(src, "own", name))
		if err != nil || string(got) != string(want) {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// streamingBackend streams ranges as S3 and a floe server do
// (repo.StreamsRanges), and counts the streams.
type streamingBackend struct {
	storage.Backend
	streams atomic.Int64
}

func (b *streamingBackend) OpenStream(ctx context.Context, h storage.Handle, offset, length int64) (io.ReadCloser, error) {
	b.streams.Add(1)
	data, err := b.Load(ctx, h, offset, length)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// On a backend that streams, windows grow from streamFirstFiles: a tree
// of more small files than that comes back whole, its files read with
// fewer streams than windows of the first size would take (one per
// window and pack at least).
func TestRestoreStreamWindowsGrow(t *testing.T) {
	r, mem := testutil.NewRepo(t)
	src := t.TempDir()
	n := 3*streamFirstFiles + 100
	for i := range n {
		writeFile(t, filepath.Join(src, fmt.Sprintf("d%02d", i%50), fmt.Sprintf("f%04d", i)), fmt.Sprintf("small file %d\n", i))
	}
	sn := backuptest.Backup(t, r, backup.Options{Paths: []string{src}})
	sb := &streamingBackend{Backend: mem}
	r2 := testutil.Reopen(t, sb)
	if !r2.StreamsRanges() {
		t.Fatal("the test backend does not stream")
	}
	if w, open := openFileLimits(true); w < 2*streamFirstFiles || open < 2*w {
		t.Skipf("descriptor limit too low for growing windows (window %d, open %d)", w, open)
	}
	target := t.TempDir()
	res, err := Run(context.Background(), r2, sn.Tree, src, Options{Target: target})
	if err != nil || len(res.Errors) > 0 {
		t.Fatalf("restore: %v %v", err, res.Errors)
	}
	if res.Files != uint64(n) {
		t.Fatalf("restored %d files, want %d", res.Files, n)
	}
	testutil.CompareTrees(t, src, target)
	// One pack holds every file, one more the trees (one level below
	// src: one stream). Windows of streamFirstFiles files each would
	// take 4 streams of data; growing ones (1,024, 2,048, the last 100) 3.
	s := sb.streams.Load()
	t.Logf("%d streams", s)
	if s > 3+1 {
		t.Fatalf("%d streams for %d small files in one pack: windows did not grow", s, n)
	}
}

// openFileLimits: streamed windows hold more files, never beyond a
// quarter of the descriptor limit.
func TestOpenFileLimits(t *testing.T) {
	w, open := openFileLimits(false)
	sw, sopen := openFileLimits(true)
	if w != open/2 || sw != sopen/2 || sopen < open || sopen > streamOpenFiles {
		t.Fatalf("limits %d/%d, streamed %d/%d", w, open, sw, sopen)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && uint64(sopen) > max(16, lim.Cur/4) {
		t.Fatalf("streamed: %d open files, beyond a quarter of the limit %d", sopen, lim.Cur)
	}
}

// The trees of a deep tree are read ahead a level at a time, each level
// scattered over the tree pack: the stretch of the pack read for one
// level serves the levels below, so the tree pack is read once, not once
// per level.
func TestPrefetchTreesReadsTreePackOnce(t *testing.T) {
	r, mem := testutil.NewRepo(t)
	src := t.TempDir()
	const depth = 10
	for i := range 4 {
		dir := filepath.Join(src, fmt.Sprintf("top%d", i))
		for d := range depth {
			dir = filepath.Join(dir, fmt.Sprintf("l%d", d))
			writeFile(t, filepath.Join(dir, "f"), fmt.Sprintf("file %d %d\n", i, d))
		}
	}
	sn := backuptest.Backup(t, r, backup.Options{Paths: []string{src}})
	cb := &countingBackend{Backend: mem}
	r2 := testutil.Reopen(t, cb)
	target := t.TempDir()
	cb.loads = 0
	res, err := Run(context.Background(), r2, sn.Tree, src, Options{Target: target})
	if err != nil || len(res.Errors) > 0 {
		t.Fatalf("restore: %v %v", err, res.Errors)
	}
	testutil.CompareTrees(t, src, target)
	// the snapshot's tree and those of the path down to src one by one,
	// the tree pack once, the files' pack once (one range); read once per
	// level, the tree pack took 10 more
	if want := 1 + strings.Count(src, "/") + 1 + 1; cb.loads > want {
		t.Fatalf("%d pack reads, want at most %d: the tree pack is read once per level", cb.loads, want)
	}
}
