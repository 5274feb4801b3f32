package backup

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/cache"
	"github.com/floe-backup/floe/internal/chunker"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/testutil"
)

func newRepo(t *testing.T) *repo.Repository {
	t.Helper()
	r, _ := testutil.NewRepo(t)
	return r
}

var hookMu sync.Mutex // tests that set testHookAfterRead do not run in parallel

func setHook(t *testing.T, fn func(path string, attempt int)) {
	hookMu.Lock()
	testHookAfterRead = fn
	t.Cleanup(func() { testHookAfterRead = nil; hookMu.Unlock() })
}

func TestConsistencyRecord(t *testing.T) {
	src := t.TempDir()
	stable := filepath.Join(src, "stable")
	once := filepath.Join(src, "changes-once")
	always := filepath.Join(src, "keeps-changing")
	for _, p := range []string{stable, once, always} {
		os.WriteFile(p, []byte("initial content"), 0o644)
	}
	var reads sync.Map
	setHook(t, func(path string, attempt int) {
		n, _ := reads.LoadOrStore(path, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		if (path == once && attempt == 0) || path == always {
			f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			f.Write([]byte("+"))
			f.Close()
		}
	})
	res, err := Run(context.Background(), newRepo(t), Options{Paths: []string{src}, Retries: 2})
	if err != nil {
		t.Fatal(err)
	}
	c := res.Snapshot.Consistency
	if !c.Checked || c.ChangedCount != 1 || len(c.ChangedDuringRead) != 1 || c.ChangedDuringRead[0] != always {
		t.Fatalf("consistency = %+v, want only %s", c, always)
	}
	count := func(p string) int32 { n, _ := reads.Load(p); return n.(*atomic.Int32).Load() }
	if count(stable) != 1 || count(once) != 2 || count(always) != 3 {
		t.Fatalf("reads: stable %d, once %d, always %d; want 1, 2, 3", count(stable), count(once), count(always))
	}
}

func TestParentSkipsUnchangedFiles(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	src := t.TempDir()
	os.Mkdir(filepath.Join(src, "d"), 0o755)
	for i := 0; i < 20; i++ {
		testutil.WriteRandom(t, filepath.Join(src, "d", string(rune('a'+i))), 10<<10, uint64(i))
	}
	first, err := Run(ctx, r, Options{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	changed := filepath.Join(src, "d", "c")
	testutil.WriteRandom(t, changed, 10<<10, 99)
	var reads atomic.Int32
	setHook(t, func(string, int) { reads.Add(1) })
	parent := &snapshot.Record{ID: first.ID, Snapshot: first.Snapshot}
	second, err := Run(ctx, r, Options{Paths: []string{src}, Parent: parent, ParentTrees: snapshot.RepoTrees{Repo: r}})
	if err != nil {
		t.Fatal(err)
	}
	s := second.Snapshot.Summary
	if reads.Load() != 1 || s.FilesChanged != 1 || s.FilesUnchanged != 19 {
		t.Fatalf("read %d files, summary %+v; want 1 read, 1 changed, 19 unchanged", reads.Load(), s)
	}
	if second.Snapshot.Tree == first.Snapshot.Tree {
		t.Fatal("tree did not change")
	}
}

func TestSparseHolesAreNotRead(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("data at the start"), 0)
	f.WriteAt([]byte("data at the end"), 4<<30-100)
	f.Truncate(4 << 30)
	f.Close()
	start := time.Now()
	res, err := Run(context.Background(), newRepo(t), Options{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	// 4 GiB logical, but only a few KiB of data and one all-zero chunk
	// per chunk size are new.
	if s := res.Snapshot.Summary; s.TotalBytes != 4<<30 || s.DataAdded > 64<<20 {
		t.Fatalf("summary %+v: want 4 GiB total, little new data", s)
	}
	t.Logf("4 GiB sparse file backed up in %v", time.Since(start))
}

func TestExcludes(t *testing.T) {
	src := t.TempDir()
	for _, p := range []string{"keep.txt", "skip.tmp", "cache/CACHEDIR.TAG", "cache/junk", "sub/skipdir/x"} {
		os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755)
		os.WriteFile(filepath.Join(src, p), []byte("x"), 0o644)
	}
	os.WriteFile(filepath.Join(src, "cache/CACHEDIR.TAG"), []byte("Signature: 8a477f597d28d172789f06886806bc55\n"), 0o644)
	r := newRepo(t)
	res, err := Run(context.Background(), r, Options{Paths: []string{src}, Excludes: []string{"*.tmp", src + "/sub/skipdir"}, ExcludeCaches: true})
	if err != nil {
		t.Fatal(err)
	}
	// keep.txt and CACHEDIR.TAG remain
	if s := res.Snapshot.Summary; s.FilesNew != 2 {
		t.Fatalf("backed up %d files, want 2 (keep.txt, CACHEDIR.TAG)", s.FilesNew)
	}
}

func TestHardLinksReadOnce(t *testing.T) {
	src := t.TempDir()
	testutil.WriteRandom(t, filepath.Join(src, "a"), 1<<20, 1)
	os.Link(filepath.Join(src, "a"), filepath.Join(src, "b"))
	os.Link(filepath.Join(src, "a"), filepath.Join(src, "c"))
	var reads atomic.Int32
	setHook(t, func(string, int) { reads.Add(1) })
	res, err := Run(context.Background(), newRepo(t), Options{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	if reads.Load() != 1 {
		t.Fatalf("hard-linked file read %d times, want 1", reads.Load())
	}
	_ = res
}

// Deduplication by key (docs/FORMAT.md "Deduplication"): a backup with no
// change compresses and encrypts no data, and one where a file changed at
// its end only the changed chunk. (Trees whose nodes changed, access
// times included, are encoded again.)
func TestUnchangedChunksAreNotEncoded(t *testing.T) {
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	src := t.TempDir()
	big := filepath.Join(src, "big")
	testutil.WriteRandom(t, big, 6<<20, 1)
	for i := 0; i < 5; i++ {
		os.WriteFile(filepath.Join(src, "small"+string(rune('a'+i))), []byte("small file"), 0o644)
	}
	open := func() *repo.Repository {
		r, err := repo.Open(ctx, be, repo.Credential{Password: []byte(testutil.Password)}, repo.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.LoadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		return r
	}
	res, err := Run(ctx, r, Options{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	parent := &snapshot.Record{ID: res.ID, Snapshot: res.Snapshot}
	r2 := open()
	res2, err := Run(ctx, r2, Options{Paths: []string{src}, Parent: parent, ParentTrees: snapshot.RepoTrees{Repo: r2}})
	if err != nil {
		t.Fatal(err)
	}
	if n := r2.SavedStats().EncodedData; n != 0 {
		t.Fatalf("a backup with no change encoded %d blobs", n)
	}
	// change the last bytes of the big file: its earlier chunks keep their keys
	f, _ := os.OpenFile(big, os.O_WRONLY, 0)
	f.WriteAt([]byte("changed"), 6<<20-7)
	f.Close()
	r3 := open()
	parent = &snapshot.Record{ID: res2.ID, Snapshot: res2.Snapshot}
	if _, err := Run(ctx, r3, Options{Paths: []string{src}, Parent: parent, ParentTrees: snapshot.RepoTrees{Repo: r3}}); err != nil {
		t.Fatal(err)
	}
	var chunks int
	// the file's chunk count, from the first snapshot's tree below src
	walkFind(t, ctx, r3, res.Snapshot.Tree, func(n *snapshot.Node) {
		if n.Name == "big" {
			chunks = len(n.Content)
		}
	})
	st := r3.SavedStats()
	// the last chunk changed; content-defined chunking may move one more cut
	if chunks < 3 || st.EncodedData == 0 || st.EncodedData > 2 {
		t.Fatalf("small change: %d data blobs encoded, the file has %d chunks", st.EncodedData, chunks)
	}
}

func walkFind(t *testing.T, ctx context.Context, r *repo.Repository, ref hash.Ref, fn func(*snapshot.Node)) {
	tree, err := snapshot.LoadTree(ctx, r, ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range tree.Nodes {
		fn(n)
		if !n.Subtree.IsNull() {
			walkFind(t, ctx, r, n.Subtree, fn)
		}
	}
}

// A backup without a parent learns the chunk keys of this host's newest
// snapshot in the local cache (FindKin): a copy of a tree backed up
// before, at another path and with other inodes, is read but none of its
// chunks is compressed and encrypted again.
func TestKinChunksAreNotEncoded(t *testing.T) {
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	a := filepath.Join(t.TempDir(), "a")
	testutil.ManyFiles(t, a, 30, 5000, 7)
	testutil.WriteRandom(t, filepath.Join(a, "big"), 3<<20, 8)
	res, c := backupWithCache(t, r, a, "h")
	b := filepath.Join(t.TempDir(), "b")
	if out, err := exec.Command("cp", "-a", a, b).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
	if kin, _ := FindKin(c, "other host"); kin != nil {
		t.Errorf("kin of another host: %s", kin.ID.Short())
	}
	for _, withKin := range []bool{false, true} {
		r2 := testutil.Reopen(t, be)
		opts := Options{Paths: []string{b}, Hostname: "h"}
		if withKin {
			opts.Kin, opts.KinTrees = FindKin(c, "h")
			if opts.Kin == nil || opts.Kin.ID != res.ID {
				t.Fatalf("kin %v, want the snapshot of a %s", opts.Kin, res.ID.Short())
			}
		}
		res2, err := Run(ctx, r2, opts)
		if err != nil {
			t.Fatal(err)
		}
		// only trees are new (their paths and inodes differ)
		if res2.Snapshot.Summary.FilesNew != 31 || res2.Snapshot.Summary.DataAdded > 16<<10 {
			t.Errorf("copy: %d new files, %d bytes added; want 31 and a few trees", res2.Snapshot.Summary.FilesNew, res2.Snapshot.Summary.DataAdded)
		}
		n := r2.SavedStats().EncodedData
		if withKin && n != 0 {
			t.Errorf("with kin: %d data blobs encoded, want none", n)
		}
		if !withKin && n < 31 {
			t.Errorf("without kin: %d data blobs encoded, want every chunk (at least 31)", n)
		}
	}
}

// slowTrees delays every tree it loads.
type slowTrees struct {
	snapshot.TreeLoader
	delay time.Duration
}

func (s slowTrees) LoadTree(ctx context.Context, ref hash.Ref) (*snapshot.Tree, error) {
	time.Sleep(s.delay)
	return s.TreeLoader.LoadTree(ctx, ref)
}

// The kin's keys are learned alongside the walk (Run): when learning them
// is slower than the walk, a chunk the walk reaches first waits for them
// instead of being compressed and encrypted to learn its ID.
func TestKinLearnedAlongsideTheWalk(t *testing.T) {
	ctx := context.Background()
	r, be := testutil.NewRepo(t)
	a := filepath.Join(t.TempDir(), "a")
	testutil.ManyFiles(t, a, 30, 5000, 7)
	for _, d := range []string{"d1", "d2", "d3"} {
		testutil.ManyFiles(t, filepath.Join(a, d), 5, 3000, 9)
	}
	_, c := backupWithCache(t, r, a, "h")
	b := filepath.Join(t.TempDir(), "b")
	if out, err := exec.Command("cp", "-a", a, b).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v\n%s", err, out)
	}
	r2 := testutil.Reopen(t, be)
	opts := Options{Paths: []string{b}, Hostname: "h"}
	opts.Kin, opts.KinTrees = FindKin(c, "h")
	if opts.Kin == nil {
		t.Fatal("no kin")
	}
	opts.KinTrees = slowTrees{opts.KinTrees, 30 * time.Millisecond}
	res, err := Run(ctx, r2, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Snapshot.Summary.FilesNew != 45 {
		t.Errorf("%d new files, want 45", res.Snapshot.Summary.FilesNew)
	}
	if n := r2.SavedStats().EncodedData; n != 0 {
		t.Errorf("%d data blobs encoded, want none: the kin has them all", n)
	}
}

// Unchanged objects take their extended attributes from the parent (no
// listing); an attribute set since changes the ctime and is found.
func TestXattrsFollowCtime(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	if !testutil.XattrsSupported(src) {
		t.Skip("no user xattrs here")
	}
	p := filepath.Join(src, "f")
	testutil.WriteFile(t, p, []byte("data"))
	r, _ := testutil.NewRepo(t)
	var parent *snapshot.Record
	for i, want := range []string{"", "", "v1", "v1"} {
		if i == 2 {
			if err := unix.Lsetxattr(p, "user.test", []byte("v1"), 0); err != nil {
				t.Fatal(err)
			}
		}
		opts := Options{Paths: []string{src}, Parent: parent}
		if parent != nil {
			opts.ParentTrees = snapshot.RepoTrees{Repo: r}
		}
		res, err := Run(ctx, r, opts)
		if err != nil {
			t.Fatal(err)
		}
		parent = &snapshot.Record{ID: res.ID, Snapshot: res.Snapshot}
		got := ""
		walkFind(t, ctx, r, res.Snapshot.Tree, func(n *snapshot.Node) {
			if n.Name == "f" {
				for _, x := range n.Xattrs {
					if x.Name == "user.test" {
						got = string(x.Value)
					}
				}
			}
		})
		if got != want {
			t.Errorf("backup %d: user.test %q, want %q", i+1, got, want)
		}
	}
}

// A record another host wrote under this host's name and paths (any
// write-only key can) must not become the parent of a host that has its
// own in the local cache, and one dated in the future never does.
func TestParentIgnoresForeignAndFutureRecords(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	src := t.TempDir()
	testutil.WriteRandom(t, filepath.Join(src, "f"), 10<<10, 1)
	own, c := backupWithCache(t, r, src, "web1")
	forge := func(at time.Time) hash.ID {
		s := *own.Snapshot
		s.Time = at
		plain, err := snapshot.MarshalSnapshot(&s)
		if err != nil {
			t.Fatal(err)
		}
		id, err := r.SaveSnapshotRecord(ctx, plain)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	forge(time.Now().Add(time.Minute))
	future := forge(time.Now().Add(48 * time.Hour))

	parent, _, _, err := FindParent(ctx, r, c, "web1", []string{src}, "")
	if err != nil || parent == nil || parent.ID != own.ID {
		t.Fatalf("with the local cache: parent %v (%v), want this host's own %s", parent, err, own.ID.Short())
	}
	// without a cache the repository decides, but never for a record
	// dated in the future
	parent, _, warnings, err := FindParent(ctx, r, nil, "web1", []string{src}, "")
	if err != nil || parent == nil || parent.ID == future {
		t.Fatalf("without a cache: parent %v (%v): the future-dated record was taken", parent, err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0].Error(), "in the future") {
		t.Fatalf("warnings %v, want one about the future-dated record", warnings)
	}
}

// backupWithCache backs up path as host into r and keeps the snapshot and
// its trees in a new local cache, as backup.Job does.
func backupWithCache(t *testing.T, r *repo.Repository, path, host string) (*Result, *cache.Cache) {
	t.Helper()
	c, err := cache.Open(t.TempDir(), strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	tw, err := c.NewTreeWriter()
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), r, Options{Paths: []string{path}, Hostname: host, OnTree: tw.Add})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Commit(&snapshot.Record{ID: res.ID, Snapshot: res.Snapshot}); err != nil {
		t.Fatal(err)
	}
	return res, c
}

// A file small enough to be saved whole (saveWhole, no chunker) is stored
// as the chunker would cut it, and so is a larger one: the same chunk
// keys and sizes, and its blobs read back as the file.
func TestSmallFilesSavedAsChunked(t *testing.T) {
	ctx := context.Background()
	r, _ := testutil.NewRepo(t)
	src := t.TempDir()
	sizes := map[string]int{"empty": 0, "one": 1, "page": 4096, "small": smallFile, "above": smallFile + 1, "min": int(r.ChunkerParams().Min), "large": 3 << 20}
	for name, n := range sizes {
		testutil.WriteRandom(t, filepath.Join(src, name), int64(n), uint64(n))
	}
	res, err := Run(ctx, r, Options{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	walkFind(t, ctx, r, res.Snapshot.Tree, func(n *snapshot.Node) {
		want, ok := sizes[n.Name]
		if !ok || n.Type != snapshot.TypeFile {
			return
		}
		found++
		data, err := os.ReadFile(filepath.Join(src, n.Name))
		if err != nil || len(data) != want {
			t.Fatalf("%s: %d bytes, %v", n.Name, len(data), err)
		}
		ch := chunker.New(bytes.NewReader(data), r.ChunkerParams())
		var keys []hash.ID
		var lens []uint32
		for {
			c, err := ch.Next(nil)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, r.BlobKey(c))
			lens = append(lens, uint32(len(c)))
		}
		if len(n.Content) != len(keys) || len(n.ChunkSizes) != len(lens) || n.Size != uint64(want) {
			t.Fatalf("%s: %d chunks %v (size %d), want %d %v", n.Name, len(n.Content), n.ChunkSizes, n.Size, len(keys), lens)
		}
		var got []byte
		for i, ref := range n.Content {
			if ref.Key != keys[i] || n.ChunkSizes[i] != lens[i] {
				t.Errorf("%s: chunk %d: key or size differs from the chunker's", n.Name, i)
			}
			b, err := r.LoadBlob(ctx, repo.DataBlob, ref, nil)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, b...)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("%s: stored bytes differ", n.Name)
		}
	})
	if found != len(sizes) {
		t.Fatalf("%d of %d files in the snapshot", found, len(sizes))
	}
}

// Small files go to the readers in batches (queueFile): files in many
// directories, hard links between them (the second link waits for a file
// in a batch not yet handed over) are all saved, each inode read once;
// and a backup cancelled while batches wait ends without hanging or
// leaving files open.
func TestSmallFilesBatched(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	want := map[string][]byte{}
	for d := 0; d < 3; d++ {
		for i := 0; i < 2*batchFiles+3; i++ {
			p := filepath.Join(src, fmt.Sprintf("d%d", d), fmt.Sprintf("f%02d", i))
			os.MkdirAll(filepath.Dir(p), 0o755)
			b := []byte(strings.Repeat(fmt.Sprintf("%s ", p), 1+i))
			testutil.WriteFile(t, p, b)
			want[p] = b
		}
	}
	for i := 0; i < 5; i++ {
		from := filepath.Join(src, "d0", fmt.Sprintf("f%02d", i))
		to := filepath.Join(src, "d2", fmt.Sprintf("link%d", i))
		if err := os.Link(from, to); err != nil {
			t.Fatal(err)
		}
		want[to] = want[from]
	}
	var reads atomic.Int32
	var cancel atomic.Pointer[context.CancelFunc] // set for the second run
	setHook(t, func(string, int) {
		if reads.Add(1) > int32(len(want)) { // a few files into the second run
			if c := cancel.Load(); c != nil {
				(*c)()
			}
		}
	})
	r := newRepo(t)
	res, err := Run(ctx, r, Options{Paths: []string{src}})
	if err != nil {
		t.Fatal(err)
	}
	if n := int(reads.Load()); n != len(want)-5 {
		t.Errorf("%d files read, want %d", n, len(want)-5)
	}
	got := 0
	var walk func(dir string, ref hash.Ref)
	walk = func(dir string, ref hash.Ref) {
		tree, err := snapshot.LoadTree(ctx, r, ref)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range tree.Nodes {
			p := filepath.Join(dir, n.Name)
			if !n.Subtree.IsNull() {
				walk(p, n.Subtree)
				continue
			}
			w, ok := want[p]
			if !ok {
				continue
			}
			got++
			var b []byte
			for _, ref := range n.Content {
				c, err := r.LoadBlob(ctx, repo.DataBlob, ref, nil)
				if err != nil {
					t.Fatal(err)
				}
				b = append(b, c...)
			}
			if !bytes.Equal(b, w) {
				t.Errorf("%s: stored content differs", p)
			}
		}
	}
	walk("/", res.Snapshot.Tree)
	if got != len(want) {
		t.Errorf("%d of %d files in the snapshot", got, len(want))
	}

	fds := func() int { e, _ := os.ReadDir("/proc/self/fd"); return len(e) }
	before := fds()
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	cancel.Store(&stop)
	if _, err := Run(cctx, newRepo(t), Options{Paths: []string{src}}); err == nil {
		t.Fatal("a cancelled backup succeeded")
	}
	if after := fds(); after > before {
		t.Errorf("%d descriptors open after the cancelled backup, %d before", after, before)
	}
}
