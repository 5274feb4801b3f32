package snapshot_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/walk"
	wt "github.com/floe-backup/floe/internal/walk/walktest"
)

// countingBackend counts the loads of packs, each with its range. It is
// a plain storage.Backend (no RangeOpener, no RangeStreamer): every read
// is one Load, as one request to a server would be.
type countingBackend struct {
	storage.Backend
	mu    sync.Mutex
	loads []packLoad
}

type packLoad struct {
	pack           string
	offset, length int64
}

func (c *countingBackend) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	if h.Type == storage.Pack {
		c.mu.Lock()
		c.loads = append(c.loads, packLoad{h.Name, offset, length})
		c.mu.Unlock()
	}
	return c.Backend.Load(ctx, h, offset, length)
}

func (c *countingBackend) packLoads() []packLoad {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.loads)
}

// dirTree stores the trees of 4 + 4*8 + 4*8*6 = 228 directories, each
// leaf with an empty file of its own name, as a backup stores them (a
// directory's subtrees before its tree, in name order), and returns the
// backend and the root tree.
func dirTree(t *testing.T) (*mem.Backend, hash.Ref, int) {
	t.Helper()
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	w := r.StartWriting()
	save := func(nodes ...*snapshot.Node) hash.Ref {
		raw, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
		if err != nil {
			t.Fatal(err)
		}
		ref, _, _, err := w.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(raw), raw)
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	var tops []*snapshot.Node
	for a := range 4 {
		var mids []*snapshot.Node
		for b := range 8 {
			var leaves []*snapshot.Node
			for c := range 6 {
				leaf := save(wt.File(fmt.Sprintf("file%d%d%d", a, b, c), 0))
				leaves = append(leaves, wt.Dir(fmt.Sprintf("leaf%d", c), leaf))
			}
			mids = append(mids, wt.Dir(fmt.Sprintf("mid%d", b), save(leaves...)))
		}
		tops = append(tops, wt.Dir(fmt.Sprintf("top%d", a), save(mids...)))
	}
	root := save(tops...)
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	return be, root, 4 + 4*8 + 4*8*6
}

func openCounting(t *testing.T, be storage.Backend) (*repo.Repository, *countingBackend) {
	t.Helper()
	cb := &countingBackend{Backend: be}
	r, err := repo.Open(context.Background(), cb, repo.Credential{Password: []byte(testutil.Password)}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r, cb
}

// walkAll returns every path below root in walk order, and the walk's error.
func walkAll(l snapshot.TreeLoader, root hash.Ref) ([]string, error) {
	var paths []string
	err := walk.Walk(context.Background(), l, "/", root, func(p string, n *snapshot.Node) error {
		paths = append(paths, p)
		return nil
	})
	return paths, err
}

// A walk of a snapshot of N directories through ReadAheadTrees takes a
// few loads, not N, and sees exactly what a walk loading each tree by
// itself sees.
func TestReadAheadTreesFewLoads(t *testing.T) {
	be, root, dirs := dirTree(t)

	r1, c1 := openCounting(t, be)
	want, err := walkAll(snapshot.RepoTrees{Repo: r1}, root)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(c1.packLoads()); n < dirs {
		t.Fatalf("one by one: %d loads for %d directories; the test's premise is wrong", n, dirs)
	}

	r2, c2 := openCounting(t, be)
	trees := snapshot.NewReadAheadTrees(r2)
	got, err := walkAll(walk.NewCache(trees, 0), root)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the walk saw %d paths, want %d", len(got), len(want))
	}
	loads := c2.packLoads()
	if len(loads) == 0 || len(loads)*20 > dirs {
		t.Fatalf("%d loads for %d directories, want at most %d", len(loads), dirs, dirs/20)
	}
	if trees.HeldBytes() == 0 {
		t.Fatal("nothing held: the trees were not read ahead")
	}
	t.Logf("%d directories: %d loads one by one, %d read ahead", dirs, len(c1.packLoads()), len(loads))

	// A path looked up (walk.Resolve, as ls PATH does) costs no more
	// than it did: a load per level, nothing of the siblings.
	r3, c3 := openCounting(t, be)
	if _, _, err := walk.Resolve(context.Background(), snapshot.NewReadAheadTrees(r3), root, firstDir(t, want, "/top3/mid5/leaf4")); err != nil {
		t.Fatal(err)
	}
	r4, c4 := openCounting(t, be)
	if _, _, err := walk.Resolve(context.Background(), snapshot.RepoTrees{Repo: r4}, root, firstDir(t, want, "/top3/mid5/leaf4")); err != nil {
		t.Fatal(err)
	}
	if a, b := len(c3.packLoads()), len(c4.packLoads()); a > b {
		t.Fatalf("a lookup read ahead took %d loads, one by one %d", a, b)
	}
}

// firstDir returns the path of paths that ends in suffix.
func firstDir(t *testing.T, paths []string, suffix string) string {
	t.Helper()
	for _, p := range paths {
		if len(p) >= len(suffix) && p[len(p)-len(suffix):] == suffix {
			return p
		}
	}
	t.Fatalf("no path ends in %s", suffix)
	return ""
}

// A tree blob damaged inside a stretch read ahead is reported exactly as
// a load of it by itself reports it: its bytes hashed against its ID, the
// copy reported as forged, the walk failing with the same error at the
// same path.
func TestReadAheadTreesDamagedBlob(t *testing.T) {
	be, root, _ := dirTree(t)
	ctx := context.Background()

	// The tree of a directory deep in the walk, so that its bytes come
	// from a stretch read for its siblings.
	r0, _ := openCounting(t, be)
	paths, err := walkAll(snapshot.RepoTrees{Repo: r0}, root)
	if err != nil {
		t.Fatal(err)
	}
	_, node, err := walk.Resolve(ctx, snapshot.RepoTrees{Repo: r0}, root, firstDir(t, paths, "/top2/mid3"))
	if err != nil {
		t.Fatal(err)
	}
	loc, ok := r0.Index().Lookup(repo.BlobHandle{Type: repo.TreeBlob, ID: node.Subtree.ID})
	if !ok {
		t.Fatal("the damaged tree is not in the index")
	}
	h := storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}
	pack, ok := be.Get(h)
	if !ok {
		t.Fatal("no pack")
	}
	pack[loc.Offset+loc.Length/2] ^= 0x40
	be.Set(h, pack)

	r1, _ := openCounting(t, be)
	want, wantErr := walkAll(snapshot.RepoTrees{Repo: r1}, root)
	if wantErr == nil || !errors.Is(wantErr, repo.ErrForged) {
		t.Fatalf("one by one: %v, want a forged copy", wantErr)
	}

	r2, c2 := openCounting(t, be)
	got, err := walkAll(walk.NewCache(snapshot.NewReadAheadTrees(r2), 0), root)
	if err == nil || err.Error() != wantErr.Error() {
		t.Fatalf("read ahead: %v\nwant %v", err, wantErr)
	}
	if !errors.Is(err, repo.ErrForged) {
		t.Fatalf("read ahead: %v does not wrap ErrForged", err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("read ahead saw %d paths before the error, one by one %d", len(got), len(want))
	}
	if f1, f2 := r1.ForgedCopies(), r2.ForgedCopies(); len(f2) != 1 || !slices.Equal(f1, f2) {
		t.Fatalf("forged copies: read ahead %+v, one by one %+v", f2, f1)
	}
	// and the damaged bytes came from a stretch, not a load of their own
	for _, l := range c2.packLoads() {
		if l.pack == h.Name && l.offset == int64(loc.Offset) && l.length == int64(loc.Length) {
			t.Fatalf("the damaged blob was loaded by itself: %+v", l)
		}
	}
}

// failingRanges fails every load longer than one tree blob can be here,
// as a server that cannot serve a stretch would.
type failingRanges struct {
	countingBackend
	refused atomic.Int64
}

func (f *failingRanges) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	if h.Type == storage.Pack && length > 8<<10 {
		f.refused.Add(1)
		return nil, errors.New("range refused")
	}
	return f.countingBackend.Load(ctx, h, offset, length)
}

// Stretches that cannot be read cost the walk nothing but their
// requests: each tree is then loaded by itself, as before.
func TestReadAheadTreesStretchesFail(t *testing.T) {
	be, root, dirs := dirTree(t)
	r1, _ := openCounting(t, be)
	want, err := walkAll(snapshot.RepoTrees{Repo: r1}, root)
	if err != nil {
		t.Fatal(err)
	}
	fb := &failingRanges{countingBackend: countingBackend{Backend: be}}
	r2, err := repo.Open(context.Background(), fb, repo.Credential{Password: []byte(testutil.Password)}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.LoadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := walkAll(walk.NewCache(snapshot.NewReadAheadTrees(r2), 0), root)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("the walk saw %d paths, want %d", len(got), len(want))
	}
	if fb.refused.Load() == 0 {
		t.Fatal("no stretch was refused: the test tests nothing")
	}
	t.Logf("%d directories: %d stretches refused, %d loads served", dirs, fb.refused.Load(), len(fb.packLoads()))
}

// walk.EachTree (prune, check --read-data), depth first on several
// goroutines, reads the trees ahead as a walk does.
func TestReadAheadTreesEachTree(t *testing.T) {
	be, root, dirs := dirTree(t)
	r, c := openCounting(t, be)
	visited := 0
	err := walk.EachTree(context.Background(), snapshot.NewReadAheadTrees(r), []hash.Ref{root}, 8, func(_ hash.Ref, _ *snapshot.Tree, err error) error {
		visited++
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if visited < dirs {
		t.Fatalf("visited %d trees, want at least %d", visited, dirs)
	}
	if n := len(c.packLoads()); n*10 > dirs {
		t.Fatalf("%d loads for %d trees", n, visited)
	}
	t.Logf("%d trees: %d loads", visited, len(c.packLoads()))
}
