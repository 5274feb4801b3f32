package check

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/testutil"
)

var password = []byte("correct horse")

// fixture is a small repository with two snapshots:
//
//	snapshot 1: /etc/passwd (blobs passwd1, passwd2), /etc/hosts (hosts)
//	snapshot 2: the same /etc tree, and /home/notes (notes)
//
// Every data blob is in a pack of its own, with an index file of its own;
// all trees are in one tree pack.
type fixture struct {
	be    *mem.Backend
	blobs map[string]hash.Ref
	trees map[string]hash.Ref
	snaps []hash.ID
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func newFixture(t *testing.T, be storage.Backend) *fixture {
	t.Helper()
	ctx := context.Background()
	r, _, err := repo.Init(ctx, be, repo.Credential{Password: password}, repo.InitOptions{KDF: testutil.CheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{blobs: map[string]hash.Ref{}, trees: map[string]hash.Ref{}}
	if m, ok := be.(*mem.Backend); ok {
		f.be = m
	}
	for _, name := range []string{"passwd1", "passwd2", "hosts", "notes"} {
		data := randomBytes(3000)
		w := r.StartWriting()
		id, _, _, err := w.SaveBlob(ctx, repo.DataBlob, r.BlobKey(data), data)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Finish(ctx); err != nil { // one pack and index file per blob
			t.Fatal(err)
		}
		f.blobs[name] = id
	}
	w := r.StartWriting()
	saveTree := func(name string, nodes ...*snapshot.Node) {
		data, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
		if err != nil {
			t.Fatal(err)
		}
		id, _, _, err := w.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(data), data)
		if err != nil {
			t.Fatal(err)
		}
		f.trees[name] = id
	}
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	saveTree("etc",
		&snapshot.Node{Name: "passwd", Type: snapshot.TypeFile, Mode: 0o644, Size: 6000, ModTime: mtime,
			Content: []hash.Ref{f.blobs["passwd1"], f.blobs["passwd2"]}, ChunkSizes: []uint32{3000, 3000}},
		&snapshot.Node{Name: "hosts", Type: snapshot.TypeFile, Mode: 0o644, Size: 3000, ModTime: mtime,
			Content: []hash.Ref{f.blobs["hosts"]}, ChunkSizes: []uint32{3000}},
		&snapshot.Node{Name: "motd", Type: snapshot.TypeFile, Mode: 0o644}, // empty
	)
	saveTree("home", &snapshot.Node{Name: "notes", Type: snapshot.TypeFile, Mode: 0o600, Size: 3000,
		Content: []hash.Ref{f.blobs["notes"]}, ChunkSizes: []uint32{3000}})
	saveTree("root1", &snapshot.Node{Name: "etc", Type: snapshot.TypeDir, Mode: 0o755, Subtree: f.trees["etc"]})
	saveTree("root2",
		&snapshot.Node{Name: "etc", Type: snapshot.TypeDir, Mode: 0o755, Subtree: f.trees["etc"]},
		&snapshot.Node{Name: "home", Type: snapshot.TypeDir, Mode: 0o755, Subtree: f.trees["home"]})
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	for i, root := range []string{"root1", "root2"} {
		id, err := snapshot.Save(ctx, r, &snapshot.Snapshot{Time: mtime.Add(time.Duration(i) * time.Hour),
			Hostname: "web1", Paths: []string{"/"}, Tree: f.trees[root]})
		if err != nil {
			t.Fatal(err)
		}
		f.snaps = append(f.snaps, id)
	}
	return f
}

func open(t *testing.T, be storage.Backend) *repo.Repository {
	t.Helper()
	r, err := repo.Open(context.Background(), be, repo.Credential{Password: password}, repo.OpenOptions{KDF: testutil.CheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// run checks be, and also checks that every problem was reported.
func run(t *testing.T, be storage.Backend, opts Options) *Result {
	t.Helper()
	var reported []*Problem
	res, err := Run(context.Background(), open(t, be), opts, func(p *Problem) { reported = append(reported, p) })
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(reported, res.Problems) {
		t.Errorf("reported %d problems, result has %d", len(reported), len(res.Problems))
	}
	if res.Summary.Errors != len(res.Errors()) || res.Summary.Warnings != len(res.Warnings()) {
		t.Errorf("summary counts %d errors, %d warnings; result has %d, %d",
			res.Summary.Errors, res.Summary.Warnings, len(res.Errors()), len(res.Warnings()))
	}
	return res
}

// packOf returns the pack that holds a blob.
func (f *fixture) packOf(t *testing.T, typ repo.BlobType, ref hash.Ref) (storage.Handle, repo.Location) {
	t.Helper()
	id := ref.ID
	r := open(t, f.be)
	if err := r.LoadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	loc, ok := r.Index().Lookup(repo.BlobHandle{Type: typ, ID: id})
	if !ok {
		t.Fatalf("%s blob %s not in index", typ, id.Short())
	}
	return storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}, loc
}

func (f *fixture) dataPack(t *testing.T, name string) (storage.Handle, repo.Location) {
	return f.packOf(t, repo.DataBlob, f.blobs[name])
}

// flip inverts one bit of an object; a negative offset counts from the end.
func (f *fixture) flip(t *testing.T, h storage.Handle, off int) {
	t.Helper()
	data, ok := f.be.Get(h)
	if !ok {
		t.Fatalf("no %s", h)
	}
	if off < 0 {
		off += len(data)
	}
	data[off] ^= 0x10
	f.be.Set(h, data)
}

// indexListing returns the index file that lists a pack.
func (f *fixture) indexListing(t *testing.T, pack storage.Handle) storage.Handle {
	t.Helper()
	ctx := context.Background()
	r := open(t, f.be)
	ids, err := r.ListIDs(ctx, storage.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		file, err := r.LoadIndexFile(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range file.Packs {
			if p.ID.String() == pack.Name {
				return storage.Handle{Type: storage.Index, Name: id.String()}
			}
		}
	}
	t.Fatalf("no index lists %s", pack)
	return storage.Handle{}
}

type want struct {
	kinds    []string // error kinds, sorted
	warnings []string // warning kinds, sorted
	affected []string // "snapshot-number:path", sorted
	message  string   // a substring of some error message
}

func kinds(ps []*Problem) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.Kind)
	}
	sort.Strings(out)
	return out
}

func (f *fixture) affected(res *Result) []string {
	out := []string{}
	for _, a := range res.Affected {
		n := slices.Index(f.snaps, a.Snapshot) + 1
		out = append(out, fmt.Sprintf("%d:%s", n, a.Path))
	}
	sort.Strings(out)
	return out
}

func (f *fixture) verify(t *testing.T, res *Result, w want) {
	t.Helper()
	if w.kinds == nil {
		w.kinds = []string{}
	}
	if w.warnings == nil {
		w.warnings = []string{}
	}
	if w.affected == nil {
		w.affected = []string{}
	}
	if got := kinds(res.Errors()); !slices.Equal(got, w.kinds) {
		t.Errorf("errors %v, want %v", got, w.kinds)
	}
	if got := kinds(res.Warnings()); !slices.Equal(got, w.warnings) {
		t.Errorf("warnings %v, want %v", got, w.warnings)
	}
	if got := f.affected(res); !slices.Equal(got, w.affected) {
		t.Errorf("affected %v, want %v", got, w.affected)
	}
	if w.message != "" && !slices.ContainsFunc(res.Errors(), func(p *Problem) bool { return strings.Contains(p.Message, w.message) }) {
		t.Errorf("no error says %q", w.message)
	}
	for _, p := range res.Problems {
		t.Logf("%s", p)
		for _, a := range p.Affected {
			t.Logf("    %s", a)
		}
	}
	if t.Failed() {
		return
	}
	// every affected path belongs to an error, and the summary agrees
	n := 0
	for _, p := range res.Errors() {
		n += len(p.Affected) + p.AffectedMore
	}
	if n != len(res.Affected) || res.Summary.AffectedPaths != len(res.Affected) {
		t.Errorf("%d affected paths, problems list %d, summary %d", len(res.Affected), n, res.Summary.AffectedPaths)
	}
}

func TestCheck(t *testing.T) {
	passwd := []string{"1:/etc/passwd", "2:/etc/passwd"}
	tests := []struct {
		name     string
		damage   func(t *testing.T, f *fixture)
		plain    want
		readData want
	}{
		{
			name:   "clean",
			damage: func(t *testing.T, f *fixture) {},
		},
		{
			name: "bit flipped in a data blob",
			damage: func(t *testing.T, f *fixture) {
				h, loc := f.dataPack(t, "passwd2")
				f.flip(t, h, int(loc.Offset+loc.Length/2))
			},
			// the header is intact: only reading the data finds it
			readData: want{kinds: []string{KindPack}, affected: passwd, message: "content does not match its name"},
		},
		{
			name: "bit flipped in a pack header",
			damage: func(t *testing.T, f *fixture) {
				h, _ := f.dataPack(t, "hosts")
				f.flip(t, h, -20)
			},
			plain: want{kinds: []string{KindPack}, affected: []string{"1:/etc/hosts", "2:/etc/hosts"}, message: "disagrees with index"},
			// the blob itself is intact, and restore reads it through the index
			readData: want{kinds: []string{KindPack}, message: "disagrees with index"},
		},
		{
			name: "truncated pack",
			damage: func(t *testing.T, f *fixture) {
				h, _ := f.dataPack(t, "notes")
				data, _ := f.be.Get(h)
				f.be.Set(h, data[:len(data)/2])
			},
			plain:    want{kinds: []string{KindPack}, affected: []string{"2:/home/notes"}, message: "(truncated)"},
			readData: want{kinds: []string{KindPack}, affected: []string{"2:/home/notes"}, message: "(truncated)"},
		},
		{
			name: "deleted pack",
			damage: func(t *testing.T, f *fixture) {
				h, _ := f.dataPack(t, "passwd1")
				if err := f.be.Remove(context.Background(), h); err != nil {
					t.Fatal(err)
				}
			},
			plain:    want{kinds: []string{KindPack}, affected: passwd, message: "is missing"},
			readData: want{kinds: []string{KindPack}, affected: passwd, message: "is missing"},
		},
		{
			name: "bit flipped in an index file",
			damage: func(t *testing.T, f *fixture) {
				h, _ := f.dataPack(t, "hosts")
				f.flip(t, f.indexListing(t, h), 40)
			},
			// the pack is still there, now unreferenced: a warning, but not "harmless"
			plain: want{kinds: []string{KindIndex, KindMissingBlob}, warnings: []string{KindUnreferenced},
				affected: []string{"1:/etc/hosts", "2:/etc/hosts"}, message: "index file is damaged or lost): do not prune"},
			readData: want{kinds: []string{KindIndex, KindMissingBlob}, warnings: []string{KindUnreferenced},
				affected: []string{"1:/etc/hosts", "2:/etc/hosts"}, message: "index file is damaged or lost): do not prune"},
		},
		{
			name: "damaged snapshot",
			damage: func(t *testing.T, f *fixture) {
				f.flip(t, storage.Handle{Type: storage.Snapshot, Name: f.snaps[0].String()}, 50)
			},
			plain:    want{kinds: []string{KindSnapshot}, message: "cannot be restored"},
			readData: want{kinds: []string{KindSnapshot}},
		},
		{
			name: "damaged tree blob",
			damage: func(t *testing.T, f *fixture) {
				h, loc := f.packOf(t, repo.TreeBlob, f.trees["etc"])
				f.flip(t, h, int(loc.Offset+loc.Length/2))
			},
			plain:    want{kinds: []string{KindTree}, affected: []string{"1:/etc", "2:/etc"}, message: "do not match the blob ID"},
			readData: want{kinds: []string{KindPack}, affected: []string{"1:/etc", "2:/etc"}, message: "do not match the blob ID"},
		},
		{
			name: "unreferenced pack",
			damage: func(t *testing.T, f *fixture) {
				ctx := context.Background()
				r := open(t, f.be)
				if err := r.LoadIndex(ctx); err != nil {
					t.Fatal(err)
				}
				data := randomBytes(100)
				w := r.StartWriting()
				ref, _, _, err := w.SaveBlob(ctx, repo.DataBlob, r.BlobKey(data), data)
				if err != nil {
					t.Fatal(err)
				}
				if err := w.Finish(ctx); err != nil {
					t.Fatal(err)
				}
				h, _ := f.packOf(t, repo.DataBlob, ref)
				// as if the backup was killed before writing its index
				if err := f.be.Remove(ctx, f.indexListing(t, h)); err != nil {
					t.Fatal(err)
				}
			},
			plain:    want{warnings: []string{KindUnreferenced}},
			readData: want{warnings: []string{KindUnreferenced}},
		},
		{
			name: "several problems at once",
			damage: func(t *testing.T, f *fixture) {
				h, _ := f.dataPack(t, "passwd1")
				if err := f.be.Remove(context.Background(), h); err != nil {
					t.Fatal(err)
				}
				h, _ = f.dataPack(t, "notes")
				f.flip(t, h, -20)
				f.flip(t, storage.Handle{Type: storage.Snapshot, Name: f.snaps[0].String()}, 50)
				ctx := context.Background()
				// a second key, then damaged: the first still opens the repository
				r := open(t, f.be)
				id, _, err := r.AddKey(ctx, []byte("other"), false)
				if err != nil {
					t.Fatal(err)
				}
				f.flip(t, storage.Handle{Type: storage.Key, Name: id}, 30)
			},
			plain: want{kinds: []string{KindKey, KindPack, KindPack, KindSnapshot},
				affected: []string{"2:/etc/passwd", "2:/home/notes"}},
			readData: want{kinds: []string{KindKey, KindPack, KindPack, KindSnapshot},
				affected: []string{"2:/etc/passwd"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, mem.New())
			tc.damage(t, f)
			for _, readData := range []bool{false, true} {
				w := tc.plain
				if readData {
					w = tc.readData
				}
				t.Run(fmt.Sprintf("read-data=%v", readData), func(t *testing.T) {
					res := run(t, f.be, Options{ReadData: readData})
					f.verify(t, res, w)
					s := res.Summary
					if readData && s.PacksRead != s.Packs {
						t.Errorf("read %d of %d packs", s.PacksRead, s.Packs)
					}
					if !readData && s.BytesRead != 0 {
						t.Errorf("plain check read %d bytes of data", s.BytesRead)
					}
				})
			}
		})
	}
}

func TestCleanSummary(t *testing.T) {
	f := newFixture(t, mem.New())
	res := run(t, f.be, Options{ReadData: true})
	s := res.Summary
	got := fmt.Sprintf("keys %d index %d packs %d blobs %d snapshots %d trees %d files %d verified %d damaged %v",
		s.Keys, s.IndexFiles, s.Packs, s.Blobs, s.Snapshots, s.Trees, s.Files, s.BlobsVerified, s.DamagedSnapshots)
	want := "keys 1 index 5 packs 5 blobs 8 snapshots 2 trees 4 files 4 verified 8 damaged []"
	if got != want {
		t.Errorf("summary\n got %s\nwant %s", got, want)
	}
	if s.BytesRead != s.PackBytes || s.BytesRead == 0 {
		t.Errorf("read %d bytes of %d", s.BytesRead, s.PackBytes)
	}
}

func TestReadDataSubset(t *testing.T) {
	f := newFixture(t, mem.New())
	// damage every data pack's body; a subset finds only its share
	for _, name := range []string{"passwd1", "passwd2", "hosts", "notes"} {
		h, loc := f.dataPack(t, name)
		f.flip(t, h, int(loc.Offset+1))
	}
	total, damaged := 0, 0
	for n := 1; n <= 3; n++ {
		res := run(t, f.be, Options{Subset: &Subset{N: n, M: 3}})
		total += res.Summary.PacksRead
		damaged += len(res.Errors())
		if !res.Summary.ReadData || res.Summary.Subset != fmt.Sprintf("%d/3", n) {
			t.Errorf("summary says read_data %v subset %q", res.Summary.ReadData, res.Summary.Subset)
		}
	}
	if total != 5 || damaged != 4 {
		t.Errorf("1/3..3/3 read %d packs and found %d damaged, want 5 and 4", total, damaged)
	}
	res := run(t, f.be, Options{Subset: &Subset{Percent: 1}})
	if res.Summary.PacksRead != 1 {
		t.Errorf("1%% read %d packs, want 1", res.Summary.PacksRead)
	}
}

func TestParseSubset(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Subset
		err  bool
	}{
		{in: "1/5", want: Subset{N: 1, M: 5}},
		{in: "5/5", want: Subset{N: 5, M: 5}},
		{in: "10%", want: Subset{Percent: 10}},
		{in: "2.5%", want: Subset{Percent: 2.5}},
		{in: "100%", want: Subset{Percent: 100}},
		{in: "0/5", err: true},
		{in: "6/5", err: true},
		{in: "1/0", err: true},
		{in: "0%", err: true},
		{in: "101%", err: true},
		{in: "NaN%", err: true},
		{in: "5", err: true},
		{in: "", err: true},
	} {
		got, err := ParseSubset(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseSubset(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("Subset %q prints as %q", tc.in, got.String())
		}
	}
}

func TestSubsetSelect(t *testing.T) {
	ids := make([]hash.ID, 1000)
	for i := range ids {
		ids[i] = hash.Sum([]byte{byte(i), byte(i >> 8)})
	}
	seen := map[hash.ID]int{}
	for n := 1; n <= 7; n++ {
		sel := Subset{N: n, M: 7}.Select(ids)
		if len(sel) < 100 || len(sel) > 190 {
			t.Errorf("%d/7 selects %d of 1000", n, len(sel))
		}
		for _, id := range sel {
			seen[id]++
		}
	}
	if len(seen) != len(ids) {
		t.Errorf("1/7..7/7 cover %d of %d packs", len(seen), len(ids))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s selected %d times", id.Short(), n)
		}
	}
	first := Subset{N: 1, M: 5}.Select(ids)
	if first[len(first)-1][0] >= 0x34 {
		t.Errorf("1/5 holds %s, beyond the first fifth of the ID space", first[len(first)-1])
	}
	if n := len(Subset{Percent: 10}.Select(ids)); n != 100 {
		t.Errorf("10%% selects %d of 1000", n)
	}
}

// Every single damaged byte anywhere is found by --read-data, and nothing panics.
func TestEveryObjectDamaged(t *testing.T) {
	f := newFixture(t, mem.New())
	ctx := context.Background()
	var handles []storage.Handle
	for _, typ := range []storage.FileType{storage.Key, storage.Pack, storage.Index, storage.Snapshot} {
		f.be.List(ctx, typ, func(fi storage.FileInfo) error {
			handles = append(handles, storage.Handle{Type: typ, Name: fi.Name})
			return nil
		})
	}
	handles = append(handles, storage.Handle{Type: storage.Config})
	r := open(t, f.be) // before the damage: a damaged key or config stops Open
	for _, h := range handles {
		orig, _ := f.be.Get(h)
		for _, off := range []int{0, len(orig) / 3, len(orig) - 1} {
			f.flip(t, h, off)
			res, err := Run(ctx, r, Options{ReadData: true}, nil)
			if err != nil {
				t.Fatalf("%s byte %d: %v", h, off, err)
			}
			if len(res.Errors()) == 0 {
				t.Errorf("%s byte %d: damage not found", h, off)
			}
			f.be.Set(h, orig)
		}
	}
}

func TestWriteOnlyKey(t *testing.T) {
	f := newFixture(t, mem.New())
	ctx := context.Background()
	_, kf, err := open(t, f.be).AddKey(ctx, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	h, loc := f.dataPack(t, "hosts")
	f.flip(t, h, int(loc.Offset+1))
	r, err := repo.Open(ctx, f.be, repo.Credential{KeyFile: kf}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(ctx, r, Options{ReadData: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// the pack hash needs no key; snapshots and blobs are not checked
	f.verify(t, res, want{kinds: []string{KindPack}, warnings: []string{KindIncomplete}, message: "does not match its name"})
}

func TestLeftoverTempFiles(t *testing.T) {
	dir := t.TempDir()
	be, err := local.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	newFixture(t, be)
	old := filepath.Join(dir, "data", "ab", ".tmp-123")
	fresh := filepath.Join(dir, "index", ".tmp-456")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	res := run(t, be, Options{})
	if len(res.Errors()) != 0 {
		t.Errorf("errors: %v", res.Errors())
	}
	w := res.Warnings()
	if len(w) != 1 || w[0].Kind != KindLeftover || w[0].Object != old {
		t.Errorf("warnings %v, want one about %s", w, old)
	}
}

func TestCanceled(t *testing.T) {
	f := newFixture(t, mem.New())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Run(ctx, open(t, f.be), Options{ReadData: true}, nil); err == nil {
		t.Error("canceled check returned no error")
	}
}

// TestReadDataPackHash: --read-data hashes a pack against its name only
// where the other checks leave bytes unverified (readPack). A flipped bit
// in the header's random unique bytes, which no reader uses, is the one
// damage that is then not reported; a damaged pack that no index lists
// is hashed, and reported.
func TestReadDataPackHash(t *testing.T) {
	f := newFixture(t, mem.New())
	h, _ := f.dataPack(t, "hosts")
	data, _ := f.be.Get(h)
	hdrLen := int(binary.LittleEndian.Uint32(data[len(data)-12:]))
	f.flip(t, h, len(data)-12-hdrLen+1+5) // version byte, then 16 unique bytes
	res := run(t, f.be, Options{ReadData: true})
	f.verify(t, res, want{})
	if res.Summary.PacksRead != res.Summary.Packs {
		t.Fatalf("read %d of %d packs", res.Summary.PacksRead, res.Summary.Packs)
	}

	// an unreferenced pack with a flipped bit in its body
	ctx := context.Background()
	r := open(t, f.be)
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	blob := randomBytes(1000)
	w := r.StartWriting()
	ref, _, _, err := w.SaveBlob(ctx, repo.DataBlob, r.BlobKey(blob), blob)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	ph, loc := f.packOf(t, repo.DataBlob, ref)
	if err := f.be.Remove(ctx, f.indexListing(t, ph)); err != nil {
		t.Fatal(err)
	}
	f.flip(t, ph, int(loc.Offset+10))
	res = run(t, f.be, Options{ReadData: true})
	f.verify(t, res, want{warnings: []string{KindUnreferenced}})
	if !slices.ContainsFunc(res.Warnings(), func(p *Problem) bool { return strings.Contains(p.Message, "does not match its name") }) {
		t.Fatal("the damaged unreferenced pack is not reported as such")
	}
}
