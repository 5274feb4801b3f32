package repo

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
)

// TestIndexBuildMatchesMap loads the same index files through the sorted
// table (buildFiles) and through one addPacks per file (the map path), and
// finds the same blobs, best copies, every copy with its flags, and the
// same answers after marking copies bad and verified.
func TestIndexBuildMatchesMap(t *testing.T) {
	for _, perWorker := range []int{buildPerWorker, 1} {
		t.Run(fmt.Sprintf("perWorker=%d", perWorker), func(t *testing.T) {
			defer func(n, procs int) { buildPerWorker = n; runtime.GOMAXPROCS(procs) }(buildPerWorker, runtime.GOMAXPROCS(3))
			buildPerWorker = perWorker
			testIndexBuildMatchesMap(t)
		})
	}
}

func testIndexBuildMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	id := func() hash.ID {
		var x hash.ID
		for i := range x {
			x[i] = byte(rng.IntN(256))
		}
		x[0] = byte(rng.IntN(3)) // crowd a few prefixes
		return x
	}
	var handles []BlobHandle
	files := map[hash.ID]*IndexFile{}
	for f := 0; f < 12; f++ {
		x := &IndexFile{Trusted: f%3 != 0}
		for p := 0; p < 5; p++ {
			pk := PackInfo{ID: id()}
			for b := 0; b < 40; b++ {
				var h BlobHandle
				if len(handles) > 0 && rng.IntN(4) == 0 {
					h = handles[rng.IntN(len(handles))] // another copy
				} else {
					h = BlobHandle{Type: BlobType(rng.IntN(2)), ID: id()}
					if len(handles) > 0 && rng.IntN(10) == 0 {
						h.ID = handles[rng.IntN(len(handles))].ID // same ID, maybe other type
					}
					handles = append(handles, h)
				}
				pk.Blobs = append(pk.Blobs, PackedBlob{Type: h.Type, ID: h.ID, Offset: uint32(b * 100), Length: 100})
			}
			x.Packs = append(x.Packs, pk)
		}
		if f == 5 { // the same pack listed again, by another file
			x.Packs = append(x.Packs, files[hash.ID{4}].Packs[0])
		}
		files[hash.ID{byte(f)}] = x
	}
	built := newIndex()
	built.addFiles(files)
	if built.blobs.start == nil {
		t.Fatal("addFiles did not build the sorted table")
	}
	ref := newIndex()
	ref.replaced = Superseded(files)
	for f := 0; f < 12; f++ {
		ref.addPacks(files[hash.ID{byte(f)}].Packs, files[hash.ID{byte(f)}].EntriesTrusted(), false)
	}
	if len(ref.blobs.base) != 0 {
		t.Fatal("reference index used the table")
	}
	compare := func(stage string) {
		t.Helper()
		if built.Len() != ref.Len() {
			t.Fatalf("%s: Len %d, want %d", stage, built.Len(), ref.Len())
		}
		for _, h := range handles {
			if !built.Has(h) {
				t.Fatalf("%s: %v missing", stage, h)
			}
			if a, b := built.Copies(h), ref.Copies(h); !reflect.DeepEqual(a, b) {
				t.Fatalf("%s: copies of %v = %+v, want %+v", stage, h, a, b)
			}
			if a, b := built.dedup(h), ref.dedup(h); a != b {
				t.Fatalf("%s: dedup of %v = %v, want %v", stage, h, a, b)
			}
		}
		n := 0
		built.Each(func(h BlobHandle, loc Location) {
			n++
			if want, _ := ref.Lookup(h); want != loc {
				t.Fatalf("%s: Each %v = %+v, want %+v", stage, h, loc, want)
			}
		})
		if n != ref.Len() {
			t.Fatalf("%s: Each saw %d blobs, want %d", stage, n, ref.Len())
		}
		if built.Has(BlobHandle{Type: DataBlob, ID: id()}) {
			t.Fatalf("%s: an unknown blob is found", stage)
		}
	}
	compare("loaded")
	for i, h := range handles {
		loc, _ := ref.Lookup(h)
		switch i % 5 {
		case 0:
			built.markBad(h, loc)
			ref.markBad(h, loc)
		case 1:
			built.markVerified(h, loc)
			ref.markVerified(h, loc)
		case 2:
			built.use(h)
			ref.use(h)
		}
	}
	compare("after marking")
	// A blob saved after the load, and a new copy of a loaded one.
	newH := BlobHandle{Type: DataBlob, ID: id()}
	pk := []PackInfo{{ID: id(), Blobs: []PackedBlob{{Type: newH.Type, ID: newH.ID, Length: 7}, {Type: handles[3].Type, ID: handles[3].ID, Offset: 7, Length: 100}}}}
	built.addPacks(pk, true, true)
	ref.addPacks(pk, true, true)
	handles = append(handles, newH)
	compare("after a save")
}
