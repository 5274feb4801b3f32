package repo

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
)

// cacheFixture is a repository whose index files come from a full key
// (signed) and a write-only key (unsigned), with blobs listed in several
// files.
type cacheFixture struct {
	t       *testing.T
	r, wo   *Repository
	be      *mem.Backend
	rng     *rand.Rand
	handles []BlobHandle
	files   []hash.ID // in the order written
	woOnly  BlobHandle
}

func newCacheFixture(t *testing.T) *cacheFixture {
	old := indexCacheMin
	indexCacheMin = 1
	t.Cleanup(func() { indexCacheMin = old })
	r, be := newRepo(t)
	fx := &cacheFixture{t: t, r: r, be: be, wo: writeOnly(t, r, be), rng: rand.New(rand.NewPCG(3, 4))}
	for f := 0; f < 6; f++ {
		fx.addFile(f%3 == 2, 4, 60, nil)
	}
	// a blob that only the write-only key's file lists
	h := BlobHandle{Type: DataBlob, ID: fx.id()}
	fx.save(true, &IndexFile{Packs: []PackInfo{{ID: fx.id(), Blobs: []PackedBlob{{Type: h.Type, ID: h.ID, Length: 100}}}}})
	fx.woOnly = h
	fx.handles = append(fx.handles, h)
	return fx
}

func (fx *cacheFixture) id() hash.ID {
	var x hash.ID
	for i := range x {
		x[i] = byte(fx.rng.IntN(256))
	}
	return x
}

func (fx *cacheFixture) save(unsigned bool, f *IndexFile) hash.ID {
	fx.t.Helper()
	w := fx.r
	if unsigned {
		w = fx.wo
	}
	id, err := w.SaveIndexFile(context.Background(), f)
	if err != nil {
		fx.t.Fatal(err)
	}
	fx.files = append(fx.files, id)
	return id
}

// addFile writes an index file of packs × blobs, some of them further
// copies of blobs listed before.
func (fx *cacheFixture) addFile(unsigned bool, packs, blobs int, supersedes []hash.ID) hash.ID {
	x := &IndexFile{Supersedes: supersedes}
	for p := 0; p < packs; p++ {
		pk := PackInfo{ID: fx.id()}
		for b := 0; b < blobs; b++ {
			h := BlobHandle{Type: BlobType(fx.rng.IntN(2)), ID: fx.id()}
			if len(fx.handles) > 0 && fx.rng.IntN(5) == 0 {
				h = fx.handles[fx.rng.IntN(len(fx.handles))]
			} else {
				fx.handles = append(fx.handles, h)
			}
			pk.Blobs = append(pk.Blobs, PackedBlob{Type: h.Type, ID: h.ID, Offset: uint32(b * 100), Length: 100})
		}
		x.Packs = append(x.Packs, pk)
	}
	return fx.save(unsigned, x)
}

// load opens the repository afresh and loads its index with the cache in
// dir ("" for none).
func (fx *cacheFixture) load(dir string) *Repository {
	fx.t.Helper()
	r, err := Open(context.Background(), fx.be, Credential{Password: []byte("pw")}, OpenOptions{})
	if err != nil {
		fx.t.Fatal(err)
	}
	r.SetIndexCache(dir)
	if err := r.LoadIndex(context.Background()); err != nil {
		fx.t.Fatal(err)
	}
	return r
}

type blobView struct {
	Copies []Location
	Dedup  dedupState
}

// view is what an index says about every handle; ordered false sorts
// the copies (after copies of equal rank were added in another order).
func (fx *cacheFixture) view(r *Repository, ordered bool) map[BlobHandle]blobView {
	x := r.Index()
	out := map[BlobHandle]blobView{}
	for _, h := range fx.handles {
		v := blobView{Copies: x.Copies(h), Dedup: x.dedup(h)}
		if !ordered {
			slices.SortFunc(v.Copies, func(a, b Location) int {
				return cmp.Or(bytes.Compare(a.Pack[:], b.Pack[:]), cmp.Compare(a.Offset, b.Offset))
			})
		}
		out[h] = v
	}
	out[BlobHandle{Type: 9}] = blobView{Dedup: dedupState(x.Len())}
	return out
}

// same checks that the cache in dir gives the index that the files give,
// found from source.
func (fx *cacheFixture) same(dir, source string, ordered bool) *Repository {
	fx.t.Helper()
	got := fx.load(dir)
	if got.IndexSource() != source {
		fx.t.Fatalf("index from %q, want %q", got.IndexSource(), source)
	}
	want := fx.load("")
	if a, b := fx.view(got, ordered), fx.view(want, ordered); !reflect.DeepEqual(a, b) {
		fx.t.Fatalf("index from %s differs from the index files'", source)
	}
	if !reflect.DeepEqual(got.Index().Packs(), want.Index().Packs()) {
		fx.t.Fatalf("index from %s: other packs", source)
	}
	return got
}

func TestIndexCache(t *testing.T) {
	fx := newCacheFixture(t)
	dir := t.TempDir()
	fx.same(dir, "files", true)
	r := fx.same(dir, "cache", true)
	// trust survives the cache: the write-only key's entry stays unvouched
	if r.Index().dedup(fx.woOnly) != untrusted {
		t.Fatal("an entry of an unsigned index file is trusted after the cache")
	}
	// an unsigned file supersedes nothing, cached files included
	fx.addFile(true, 1, 5, fx.files[:3])
	fx.same(dir, "cache+1", false)
	fx.addFile(false, 1, 5, nil)
	fx.same(dir, "cache+2", false)
	// a signed file that supersedes a cached one: built from the files
	fx.addFile(false, 1, 5, fx.files[:1])
	fx.same(dir, "files", true)
	fx.same(dir, "cache", true)
	// a removed index file (prune): built from the files
	if err := fx.be.Remove(context.Background(), storage.Handle{Type: storage.Index, Name: fx.files[3].String()}); err != nil {
		t.Fatal(err)
	}
	fx.same(dir, "files", true)
	fx.same(dir, "cache", true)
	// a gc mark: built from the files, and its pack is not deduplicated against
	loc, _ := r.Index().Lookup(fx.woOnly)
	if _, err := fx.r.SaveGCMark(context.Background(), &GCMark{Time: time.Now(), Packs: []hash.ID{loc.Pack}}); err != nil {
		t.Fatal(err)
	}
	fx.same(dir, "files", true)
	r = fx.same(dir, "cache", true)
	if r.Index().dedup(fx.woOnly) != absent || !r.Index().Marked(loc.Pack) {
		t.Fatal("a blob of a marked pack is deduplicated against after the cache")
	}
	// more new entries than the slack: merged into the table, cache rewritten
	fx.addFile(false, 2, r.Index().Len()/indexCacheSlack, nil)
	fx.addFile(true, 2, r.Index().Len()/indexCacheSlack, nil)
	fx.same(dir, "cache+2 merged", false)
	fx.same(dir, "cache", false)
	if r := fx.load(dir); r.Index().dedup(fx.woOnly) != absent {
		t.Fatal("a blob of a marked pack is deduplicated against after a merge")
	}
	fx.addFile(false, 1, 5, nil)
	fx.same(dir, "cache+1", false)
}

// A damaged, truncated, foreign or stale cache file is ignored (and
// replaced), never used.
func TestIndexCacheDamaged(t *testing.T) {
	fx := newCacheFixture(t)
	dir := t.TempDir()
	fx.same(dir, "files", true)
	name := filepath.Join(dir, indexCacheName)
	good, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	other := newCacheFixture(t)
	otherDir := t.TempDir()
	other.same(otherDir, "files", true)
	foreign, err := os.ReadFile(filepath.Join(otherDir, indexCacheName))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 0x10; return b }
	cases := map[string][]byte{
		"empty":                {},
		"truncated":            good[:len(good)-1],
		"longer":               append(bytes.Clone(good), 0),
		"header byte":          flip(3),
		"count":                flip(62),
		"bucket count":         flip(73),
		"first entry":          flip(len(good) - indexCacheMACSize - compactEntrySize*3 + 5),
		"mac":                  flip(len(good) - 1),
		"another repository's": foreign,
	}
	for what, data := range cases {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
		fx.same(dir, "files", true) // and it rewrites the cache
		if got, _ := os.ReadFile(name); !bytes.Equal(got, good) {
			t.Fatalf("%s: the cache was not rewritten", what)
		}
	}
	fx.same(dir, "cache", true)
}

// FuzzIndexCache decodes arbitrary cache bytes, with a MAC that verifies
// (as if written with the key) and as stored (the MAC fails): never a
// panic, and an index that decodes is safe to use.
func FuzzIndexCache(f *testing.F) {
	old := indexCacheMin
	indexCacheMin = 1
	defer func() { indexCacheMin = old }()
	r, be := newRepo(f)
	fx := &cacheFixture{r: r, be: be, rng: rand.New(rand.NewPCG(5, 6))}
	x := &IndexFile{}
	for p := 0; p < 2; p++ {
		pk := PackInfo{ID: fx.id()}
		for b := 0; b < 3; b++ {
			pk.Blobs = append(pk.Blobs, PackedBlob{Type: DataBlob, ID: fx.id(), Offset: uint32(b * 100), Length: 100})
		}
		x.Packs = append(x.Packs, pk)
	}
	x.Packs = append(x.Packs, PackInfo{ID: fx.id(), Blobs: x.Packs[0].Blobs[:1]}) // a further copy
	if _, err := r.SaveIndexFile(context.Background(), x); err != nil {
		f.Fatal(err)
	}
	dir := f.TempDir()
	r.SetIndexCache(dir)
	if err := r.LoadIndex(context.Background()); err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(dir, indexCacheName))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good[:len(good)-indexCacheMACSize])
	f.Add(good[:indexCacheHeader])
	f.Fuzz(func(t *testing.T, body []byte) {
		var key [32]byte
		if len(body) >= 60 {
			copy(key[:], body[28:60])
		}
		mac := r.indexCacheMAC()
		mac.Write(body)
		for _, data := range [][]byte{append(bytes.Clone(body), mac.Sum(nil)...), body} {
			c, err := r.decodeIndexCache(bytes.NewReader(data), int64(len(data)), key, nil)
			if err != nil {
				continue
			}
			ix := c.x
			var hs []BlobHandle
			ix.Each(func(h BlobHandle, _ Location) { hs = append(hs, h) })
			for _, h := range hs {
				ix.Copies(h)
				ix.dedup(h)
				ix.use(h)
			}
			for h := range ix.extra {
				ix.Lookup(h)
			}
			ix.Packs()
		}
	})
}

// TestIndexMergeMatchesMap merges index files into a built table
// (mergeFiles) and compares with the map path given the same files in the
// same order: the same blobs, best copies, every copy with its flags.
func TestIndexMergeMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	id := func() hash.ID {
		var x hash.ID
		for i := range x {
			x[i] = byte(rng.IntN(256))
		}
		x[0], x[1] = 0, byte(rng.IntN(3)) // crowd a few prefixes
		return x
	}
	var handles []BlobHandle
	var packs []PackInfo
	mk := func(trusted bool) *IndexFile {
		x := &IndexFile{Trusted: trusted}
		for p := 0; p < 4; p++ {
			if len(packs) > 0 && rng.IntN(6) == 0 {
				x.Packs = append(x.Packs, packs[rng.IntN(len(packs))]) // a pack listed again
				continue
			}
			pk := PackInfo{ID: id()}
			for b := 0; b < 30; b++ {
				h := BlobHandle{Type: BlobType(rng.IntN(2)), ID: id()}
				if len(handles) > 0 && rng.IntN(4) == 0 {
					h = handles[rng.IntN(len(handles))]
				} else {
					handles = append(handles, h)
				}
				pk.Blobs = append(pk.Blobs, PackedBlob{Type: h.Type, ID: h.ID, Offset: uint32(b * 100), Length: 100})
			}
			packs = append(packs, pk)
			x.Packs = append(x.Packs, pk)
		}
		return x
	}
	first := map[hash.ID]*IndexFile{}
	for f := 0; f < 6; f++ {
		first[hash.ID{byte(f)}] = mk(f%2 == 0)
	}
	var later []*IndexFile
	for f := 0; f < 4; f++ {
		later = append(later, mk(f%2 == 1))
	}
	marked := map[hash.ID]bool{packs[1].ID: true, packs[len(packs)-1].ID: true}
	merged := newIndex()
	merged.marked = marked
	merged.addFiles(first)
	merged.mergeFiles(later)
	ref := newIndex()
	ref.marked = marked
	for f := 0; f < 6; f++ {
		ref.addPacks(first[hash.ID{byte(f)}].Packs, first[hash.ID{byte(f)}].EntriesTrusted(), false)
	}
	for _, f := range later {
		ref.addPacks(f.Packs, f.EntriesTrusted(), false)
	}
	if len(merged.blobs.more) != 0 || len(merged.packPos) != 0 || len(merged.packOrder) != len(merged.packs) {
		t.Fatal("the merge left blobs or packs outside the table")
	}
	if merged.Len() != ref.Len() {
		t.Fatalf("Len %d, want %d", merged.Len(), ref.Len())
	}
	for _, h := range handles {
		if a, b := merged.Copies(h), ref.Copies(h); !reflect.DeepEqual(a, b) {
			t.Fatalf("copies of %v = %+v, want %+v", h, a, b)
		}
		if a, b := merged.dedup(h), ref.dedup(h); a != b {
			t.Fatalf("dedup of %v = %v, want %v", h, a, b)
		}
	}
	n := 0
	merged.Each(func(h BlobHandle, loc Location) {
		n++
		if want, _ := ref.Lookup(h); want != loc {
			t.Fatalf("Each %v = %+v, want %+v", h, loc, want)
		}
	})
	if n != ref.Len() {
		t.Fatalf("Each saw %d blobs, want %d", n, ref.Len())
	}
	if !reflect.DeepEqual(merged.Packs(), ref.Packs()) {
		t.Fatal("other packs")
	}
}

// Processes that load the index with one cache directory at the same
// time, while index files are written, each get a whole index.
func TestIndexCacheConcurrent(t *testing.T) {
	fx := newCacheFixture(t)
	dir := t.TempDir()
	want := fx.load("").Index().Len()
	errs := make(chan error, 8)
	done := make(chan bool)
	for g := 0; g < 4; g++ {
		go func() {
			for i := 0; i < 5; i++ {
				r, err := Open(context.Background(), fx.be, Credential{Password: []byte("pw")}, OpenOptions{})
				if err == nil {
					r.SetIndexCache(dir)
					err = r.LoadIndex(context.Background())
				}
				if err == nil && r.Index().Len() < want {
					err = fmt.Errorf("%d blobs from %s, want at least %d", r.Index().Len(), r.IndexSource(), want)
				}
				if err != nil {
					errs <- err
					break
				}
			}
			done <- true
		}()
	}
	for i := 0; i < 6; i++ {
		fx.addFile(i%2 == 0, 1, 40, nil)
	}
	for g := 0; g < 4; g++ {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if a, b := fx.view(fx.load(dir), false), fx.view(fx.load(""), false); !reflect.DeepEqual(a, b) {
		t.Fatal("the cache written concurrently gives another index than the files")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("%d files in the cache directory, want the table only", len(ents))
	}
}
