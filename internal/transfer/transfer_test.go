package transfer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/check"
	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/restore"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/testutil/backuptest"
	"github.com/floe-backup/floe/internal/ui"
)

var password = []byte("correct horse")

func cred() repo.Credential { return repo.Credential{Password: password} }

func newRepo(t *testing.T, opts repo.InitOptions) (*repo.Repository, *mem.Backend) {
	t.Helper()
	be := mem.New()
	opts.KDF = testutil.CheapKDF()
	r, _, err := repo.Init(context.Background(), be, cred(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return r, be
}

// sibling makes a repository that shares src's chunker and chunk ID key
// (init --copy-chunker-params-from).
func sibling(t *testing.T, src *repo.Repository) (*repo.Repository, *mem.Backend) {
	ch := src.Config().Chunker
	key := src.ChunkIDKey()
	return newRepo(t, repo.InitOptions{Chunker: &ch, ChunkIDKey: &key})
}

// open opens the repository on be as a new process would, index loaded.
func open(t *testing.T, be storage.Backend) *repo.Repository {
	t.Helper()
	ctx := context.Background()
	r, err := repo.Open(ctx, be, cred(), repo.OpenOptions{KDF: testutil.CheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	return r
}

func backupDir(t *testing.T, r *repo.Repository, dir string, host string, parent *snapshot.Record) *snapshot.Record {
	return backuptest.Backup(t, r, backup.Options{Paths: []string{dir}, Hostname: host, Tags: []string{"t"},
		Parent: parent, ParentTrees: snapshot.RepoTrees{Repo: r}})
}

// restoreMatches restores snapshot id of r and compares the files with want.
func restoreMatches(t *testing.T, r *repo.Repository, id hash.ID, src string, want map[string]string) {
	t.Helper()
	sn, err := snapshot.Load(context.Background(), r, id)
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	res, err := restore.Run(context.Background(), r, sn.Tree, "", restore.Options{Target: target})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) > 0 {
		t.Fatalf("restore errors: %v", res.Errors)
	}
	testutil.DiffManifest(t, want, filepath.Join(target, src))
}

func checkClean(t *testing.T, r *repo.Repository) {
	t.Helper()
	res, err := check.Run(context.Background(), r, check.Options{ReadData: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Errors() {
		t.Errorf("check: %s %s: %s", p.Kind, p.Object, p.Message)
	}
}

func snapshotsOf(t *testing.T, r *repo.Repository) []*snapshot.Record {
	t.Helper()
	all, errs, err := snapshot.List(context.Background(), r)
	if err != nil || len(errs) > 0 {
		t.Fatalf("list snapshots: %v %v", err, errs)
	}
	return all
}

// twoSnapshots backs up a directory, adds a new file of newSize bytes and
// backs it up again.
type fixture struct {
	src            *repo.Repository
	srcBe          *mem.Backend
	dir            string
	s1, s2         *snapshot.Record
	want1, want2   map[string]string
	newSize        int64
	firstDataBytes int64
}

func newFixture(t *testing.T, firstSize, newSize int64) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), newSize: newSize, firstDataBytes: firstSize}
	f.src, f.srcBe = newRepo(t, repo.InitOptions{})
	testutil.ManyFiles(t, f.dir, 30, 10<<10, 1)
	testutil.WriteRandom(t, filepath.Join(f.dir, "big1"), firstSize, 2)
	os.Symlink("big1", filepath.Join(f.dir, "link"))
	f.s1 = backupDir(t, f.src, f.dir, "h1", nil)
	f.want1 = testutil.Manifest(t, f.dir)
	testutil.WriteRandom(t, filepath.Join(f.dir, "d0", "big2"), newSize, 3)
	f.s2 = backupDir(t, f.src, f.dir, "h1", f.s1)
	f.want2 = testutil.Manifest(t, f.dir)
	return f
}

func TestCopySharedKeySendsOnlyNewBlobs(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 3<<20, 2<<20)
	dst, dstBe := sibling(t, f.src)

	var m ui.Meter
	res, err := Copy(ctx, f.src, dst, []*snapshot.Record{f.s1}, Options{Verify: true, Progress: &m})
	if err != nil {
		t.Fatal(err)
	}
	if !res.SharedKey || len(res.Snapshots) != 1 || res.Snapshots[0].Skipped || !res.Verified {
		t.Fatalf("first copy: %+v", res)
	}
	// the counters of the JSON status (docs/JSON.md), kept across phases
	if m.PhaseName() != "verify" || m.Counter(CountSnapshotsDone) != 1 || m.Counter(CountSnapshotsTotal) != 1 ||
		m.Counter(CountBlobsSent) == 0 || m.Counter(CountBlobsDone) < m.Counter(CountBlobsSent) ||
		m.Counter(CountBytesRead) < f.firstDataBytes || m.Counter(CountBytesSent) < f.firstDataBytes ||
		m.Counter(CountBytesVerified) < f.firstDataBytes {
		t.Errorf("progress after the first copy: phase %q, snapshots %d/%d, blobs %d (%d sent), bytes read %d, sent %d, verified %d",
			m.PhaseName(), m.Counter(CountSnapshotsDone), m.Counter(CountSnapshotsTotal), m.Counter(CountBlobsDone),
			m.Counter(CountBlobsSent), m.Counter(CountBytesRead), m.Counter(CountBytesSent), m.Counter(CountBytesVerified))
	}
	if res.Saved.RawBytes < uint64(f.firstDataBytes) {
		t.Errorf("first copy saved %d bytes, want at least the %d of big1", res.Saved.RawBytes, f.firstDataBytes)
	}
	c1, err := snapshot.Load(ctx, dst, res.Snapshots[0].Destination)
	if err != nil {
		t.Fatal(err)
	}
	if c1.Original != f.s1.ID || c1.Tree != f.s1.Tree || c1.Hostname != "h1" || !c1.Time.Equal(f.s1.Time) ||
		c1.Summary != f.s1.Summary || len(c1.Tags) != 1 || !snapshot.SamePaths(c1.Paths, f.s1.Paths) {
		t.Errorf("copied record %+v does not match the source %+v", c1.Snapshot, f.s1.Snapshot)
	}

	// The second snapshot adds one file: only its blobs (and the changed
	// trees) travel. s1 again is skipped.
	before := dst.SavedStats()
	res, err = Copy(ctx, f.src, dst, []*snapshot.Record{f.s2, f.s1}, Options{Connections: 3})
	if err != nil {
		t.Fatal(err)
	}
	sent := dst.SavedStats().RawBytes - before.RawBytes
	if sent != res.Saved.RawBytes {
		t.Errorf("Result.Saved.RawBytes %d, SavedStats says %d", res.Saved.RawBytes, sent)
	}
	if sent < uint64(f.newSize) || sent > uint64(f.newSize)+256<<10 {
		t.Errorf("second copy sent %d bytes, want the %d of the new file and a few trees", sent, f.newSize)
	}
	if len(res.Snapshots) != 2 || !res.Snapshots[0].Skipped || res.Snapshots[0].Source != f.s1.ID || res.Snapshots[1].Skipped {
		t.Fatalf("second copy: %+v", res.Snapshots)
	}
	c2, err := snapshot.Load(ctx, dst, res.Snapshots[1].Destination)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Tree != f.s2.Tree {
		t.Errorf("shared key: the tree IDs differ")
	}
	if c2.Parent != c1.ID {
		t.Errorf("parent %s, want the copy of s1 %s", c2.Parent.Short(), c1.ID.Short())
	}
	restoreMatches(t, open(t, dstBe), c2.ID, f.dir, f.want2)
	checkClean(t, open(t, dstBe))
}

func TestCopyDifferentKeysRewritesTrees(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 2<<20, 1<<20)
	dst, dstBe := newRepo(t, repo.InitOptions{})
	res, err := Copy(ctx, f.src, dst, []*snapshot.Record{f.s1, f.s2}, Options{Verify: true, Connections: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.SharedKey || len(res.Snapshots) != 2 || !res.Verified || res.VerifiedBlobs == 0 {
		t.Fatalf("copy: %+v", res)
	}
	for i, c := range res.Snapshots {
		sn, err := snapshot.Load(ctx, dst, c.Destination)
		if err != nil {
			t.Fatal(err)
		}
		src := []*snapshot.Record{f.s1, f.s2}[i]
		if sn.Tree == src.Tree || sn.Original != src.ID {
			t.Errorf("copy %d: tree %s (source %s), original %s", i, sn.Tree.Short(), src.Tree.Short(), sn.Original.Short())
		}
	}
	fresh := open(t, dstBe)
	restoreMatches(t, fresh, res.Snapshots[0].Destination, f.dir, f.want1)
	restoreMatches(t, fresh, res.Snapshots[1].Destination, f.dir, f.want2)
	checkClean(t, fresh)

	// again: nothing to do
	res, err = Copy(ctx, f.src, fresh, []*snapshot.Record{f.s1, f.s2}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Saved.Blobs != 0 || !res.Snapshots[0].Skipped || !res.Snapshots[1].Skipped {
		t.Errorf("second copy did work: %+v", res)
	}
	if n := len(snapshotsOf(t, fresh)); n != 2 {
		t.Errorf("%d snapshots in the destination, want 2", n)
	}

	// a copy of the copy is recognised by its original
	third, _ := newRepo(t, repo.InitOptions{})
	copies := snapshotsOf(t, fresh)
	if _, err := Copy(ctx, fresh, third, copies, Options{}); err != nil {
		t.Fatal(err)
	}
	res, err = Copy(ctx, f.src, third, []*snapshot.Record{f.s1, f.s2}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Snapshots[0].Skipped || !res.Snapshots[1].Skipped {
		t.Errorf("the originals were copied again into a repository holding copies of their copies: %+v", res.Snapshots)
	}
}

func TestVerifyFindsDamage(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1<<20, 1<<20)
	dst, dstBe := newRepo(t, repo.InitOptions{})
	res, err := Copy(ctx, f.src, dst, []*snapshot.Record{f.s2}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// flip a byte in every data pack
	fresh := open(t, dstBe)
	n := 0
	fresh.Index().Each(func(h repo.BlobHandle, loc repo.Location) {
		if h.Type != repo.DataBlob {
			return
		}
		ph := storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}
		data, _ := dstBe.Get(ph)
		data[loc.Offset+20] ^= 1
		dstBe.Set(ph, data)
		n++
	})
	_, _, err = Verify(ctx, fresh, []hash.ID{res.Snapshots[0].Destination}, 2, nil)
	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Count == 0 {
		t.Fatalf("Verify of a damaged copy: %v", err)
	}
	t.Logf("%d blobs damaged: %v", n, err)
}

// cancelAfter is a backend that cancels a context after a condition on
// what was saved (the save itself succeeds).
type cancelAfter struct {
	storage.Backend
	mu     sync.Mutex
	cancel context.CancelFunc
	when   func(h storage.Handle) bool
	packs  atomic.Int64
}

func (b *cancelAfter) Save(ctx context.Context, h storage.Handle, data []byte) error {
	err := b.Backend.Save(ctx, h, data)
	if h.Type == storage.Pack {
		b.packs.Add(1)
	}
	b.mu.Lock()
	if err == nil && b.when != nil && b.when(h) {
		b.cancel()
		b.when = nil
	}
	b.mu.Unlock()
	return err
}

func TestCopyResumesAfterInterruption(t *testing.T) {
	f := newFixture(t, 2<<20, 34<<20)
	dstMem := mem.New()
	be := &cancelAfter{Backend: dstMem}
	if _, _, err := repo.Init(context.Background(), be, cred(), repo.InitOptions{KDF: testutil.CheapKDF()}); err != nil {
		t.Fatal(err)
	}
	dst := open(t, be)

	// interrupted: after the first snapshot and one pack of the second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	snapshots, packsAfter := 0, 0
	be.cancel = cancel
	be.when = func(h storage.Handle) bool {
		switch h.Type {
		case storage.Snapshot:
			snapshots++
		case storage.Pack:
			if snapshots > 0 {
				packsAfter++
			}
		}
		return packsAfter == 1
	}
	_, err := Copy(ctx, f.src, dst, []*snapshot.Record{f.s1, f.s2}, Options{Connections: 4})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted copy: %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "run the copy again") {
		t.Errorf("the error does not say how to continue: %v", err)
	}
	if n := len(snapshotsOf(t, open(t, dstMem))); n != 1 {
		t.Fatalf("%d snapshots after the interruption, want 1", n)
	}

	// again, as a new process: s1 is skipped, and the pack stored before
	// the interruption is not sent again
	dst = open(t, dstMem)
	res, err := Copy(context.Background(), f.src, dst, []*snapshot.Record{f.s1, f.s2}, Options{Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Snapshots[0].Skipped || res.Snapshots[1].Skipped {
		t.Fatalf("resumed copy: %+v", res.Snapshots)
	}
	// one full pack (at least 8 MiB of data: a pack closes early only for
	// a blob that would not fit, and blobs are at most 8 MiB) was kept
	if limit := uint64(f.newSize) - 6<<20; res.Saved.RawBytes > limit {
		t.Errorf("the resumed copy sent %d bytes of the second snapshot's %d new: what arrived before was sent again", res.Saved.RawBytes, f.newSize)
	}
	t.Logf("resumed copy sent %d of %d new bytes", res.Saved.RawBytes, f.newSize)
	fresh := open(t, dstMem)
	restoreMatches(t, fresh, res.Snapshots[1].Destination, f.dir, f.want2)
	checkClean(t, fresh)
}

func TestExportImportRoundTrip(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 2<<20, 1<<20)
	dir := filepath.Join(t.TempDir(), "export")
	er, err := Export(ctx, f.src, []*snapshot.Record{f.s1, f.s2}, dir, ExportOptions{Connections: 2})
	if err != nil {
		t.Fatal(err)
	}
	if er.Packs == 0 || er.Copied != er.Packs || len(er.Manifest.Snapshots) != 2 || er.Manifest.SourceRepository != f.src.Config().ID {
		t.Fatalf("export: %+v", er)
	}
	for _, name := range []string{ManifestName, ManifestSumName, "config"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := VerifyExport(ctx, dir, 2); err != nil {
		t.Fatal(err)
	}
	// the export is a repository that the source's password opens
	lb, err := local.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkClean(t, open(t, lb))

	// into a repository with other keys: copied and verified
	dst, dstBe := newRepo(t, repo.InitOptions{})
	ir, err := Import(ctx, exportAt(dir), dst, importOpts())
	if err != nil {
		t.Fatal(err)
	}
	if ir.Verbatim || len(ir.Snapshots) != 2 || !ir.Verified {
		t.Fatalf("import: %+v", ir.Result)
	}
	fresh := open(t, dstBe)
	restoreMatches(t, fresh, ir.Snapshots[0].Destination, f.dir, f.want1)
	restoreMatches(t, fresh, ir.Snapshots[1].Destination, f.dir, f.want2)
	checkClean(t, fresh)
	sn, err := snapshot.Load(ctx, fresh, ir.Snapshots[1].Destination)
	if err != nil || sn.Original != f.s2.ID {
		t.Fatalf("imported record: %v, original %v", err, sn)
	}
	// again: nothing new
	ir, err = Import(ctx, exportAt(dir), fresh, importOpts())
	if err != nil {
		t.Fatal(err)
	}
	if !ir.Snapshots[0].Skipped || !ir.Snapshots[1].Skipped || ir.Saved.Blobs != 0 {
		t.Errorf("second import: %+v", ir.Result)
	}

	// into a repository with the source's secrets (another export, of s1
	// only): packs are copied verbatim
	dir1 := filepath.Join(t.TempDir(), "export1")
	if _, err := Export(ctx, f.src, []*snapshot.Record{f.s1}, dir1, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	lb1, err := local.Open(dir1)
	if err != nil {
		t.Fatal(err)
	}
	same := open(t, lb1)
	ir, err = Import(ctx, exportAt(dir), same, importOpts())
	if err != nil {
		t.Fatal(err)
	}
	if !ir.Verbatim || !ir.Snapshots[0].Skipped || ir.Snapshots[1].Skipped || ir.Snapshots[1].Destination != f.s2.ID || !ir.Verified {
		t.Fatalf("verbatim import: %+v", ir.Result)
	}
	restoreMatches(t, open(t, lb1), f.s2.ID, f.dir, f.want2)
	checkClean(t, open(t, lb1))
}

func importOpts() ImportOptions { return ImportOptions{Options: Options{Connections: 2}} }

// exportAt is the export in dir, opened with the source's password.
func exportAt(dir string) connect.Target {
	c := cred()
	return connect.Target{Location: dir, Credential: &c}
}

func TestImportRefusesDamagedExport(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 1<<20, 1<<20)
	good := filepath.Join(t.TempDir(), "export")
	if _, err := Export(ctx, f.src, []*snapshot.Record{f.s2}, good, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	somePack := func(dir string) string {
		var p string
		filepath.WalkDir(filepath.Join(dir, "data"), func(path string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() && p == "" {
				p = path
			}
			return nil
		})
		if p == "" {
			t.Fatal("no pack in the export")
		}
		return p
	}
	cases := []struct {
		name   string
		damage func(dir string)
		want   string
	}{
		{"flipped byte in a pack", func(dir string) {
			p := somePack(dir)
			data, _ := os.ReadFile(p)
			data[len(data)/2] ^= 0x40
			os.WriteFile(p, data, 0o600)
		}, "does not match the manifest"},
		{"deleted pack", func(dir string) { os.Remove(somePack(dir)) }, "missing"},
		{"truncated pack", func(dir string) {
			p := somePack(dir)
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()-1)
		}, "truncated"},
		{"deleted snapshot", func(dir string) {
			os.Remove(filepath.Join(dir, "snapshots", f.s2.ID.String()))
		}, "missing"},
		{"truncated manifest", func(dir string) {
			p := filepath.Join(dir, ManifestName)
			fi, _ := os.Stat(p)
			os.Truncate(p, fi.Size()/2)
		}, "does not match its checksum"},
		{"half-written export (no checksum)", func(dir string) {
			os.Remove(filepath.Join(dir, ManifestSumName))
		}, "not finished"},
		{"unlisted snapshot added", func(dir string) {
			os.WriteFile(filepath.Join(dir, "snapshots", strings.Repeat("ab", 32)), []byte("x"), 0o600)
		}, "not listed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "export")
			if err := os.CopyFS(dir, os.DirFS(good)); err != nil {
				t.Fatal(err)
			}
			// stray files of a removable disk are fine
			os.Mkdir(filepath.Join(dir, "lost+found"), 0o700)
			tc.damage(dir)
			dst, dstBe := newRepo(t, repo.InitOptions{})
			before := objectCount(t, dstBe)
			_, err := Import(ctx, exportAt(dir), dst, importOpts())
			if !errors.Is(err, ErrBadExport) {
				t.Fatalf("import of a damaged export: %v, want ErrBadExport", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "nothing was imported") {
				t.Errorf("the error does not say %q and that nothing was imported: %v", tc.want, err)
			}
			if after := objectCount(t, dstBe); after != before {
				t.Errorf("the destination changed: %d objects, was %d", after, before)
			}
		})
	}
	// the intact export with stray files imports
	dir := filepath.Join(t.TempDir(), "export")
	if err := os.CopyFS(dir, os.DirFS(good)); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "lost+found"), 0o700)
	os.WriteFile(filepath.Join(dir, ".DS_Store"), []byte("x"), 0o600)
	dst, _ := newRepo(t, repo.InitOptions{})
	if _, err := Import(ctx, exportAt(dir), dst, importOpts()); err != nil {
		t.Fatal(err)
	}
}

func objectCount(t *testing.T, be storage.Backend) int {
	n := 0
	for _, typ := range storage.AllTypes {
		be.List(context.Background(), typ, func(storage.FileInfo) error { n++; return nil })
	}
	return n
}

func TestExportResumes(t *testing.T) {
	f := newFixture(t, 2<<20, 34<<20)
	dir := filepath.Join(t.TempDir(), "export")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wrapped *cancelAfter
	_, err := Export(ctx, f.src, []*snapshot.Record{f.s2}, dir, ExportOptions{Connections: 1, wrapOut: func(be storage.Backend) storage.Backend {
		wrapped = &cancelAfter{Backend: be, cancel: cancel, when: func(h storage.Handle) bool { return h.Type == storage.Pack }}
		return wrapped
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted export: %v", err)
	}
	if _, err := VerifyExport(context.Background(), dir, 2); !errors.Is(err, ErrBadExport) {
		t.Fatalf("an interrupted export verifies: %v", err)
	}
	er, err := Export(context.Background(), f.src, []*snapshot.Record{f.s2}, dir, ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !er.Resumed || er.Copied >= er.Packs {
		t.Errorf("resumed export copied %d of %d packs (resumed %v)", er.Copied, er.Packs, er.Resumed)
	}
	// a finished export is not changed
	if _, err := Export(context.Background(), f.src, []*snapshot.Record{f.s1}, dir, ExportOptions{}); err == nil {
		t.Error("exported into a finished export")
	}
	dst, dstBe := newRepo(t, repo.InitOptions{})
	ir, err := Import(context.Background(), exportAt(dir), dst, importOpts())
	if err != nil {
		t.Fatal(err)
	}
	restoreMatches(t, open(t, dstBe), ir.Snapshots[0].Destination, f.dir, f.want2)
}
