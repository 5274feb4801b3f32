// Package storagetest is the conformance suite that every storage.Backend
// passes. A backend's test calls
//
//	storagetest.TestBackend(t, func(t *testing.T) storage.Backend { ... })
//
// where the function returns a new, empty backend (a fresh repository).
// Backends that stream saves (storage.StreamSaver) are tested on that path
// too, directly and through a wrapper (storage.As must find it). The
// subtests run in parallel, each with its own backend, so newBackend must be
// safe to call from parallel subtests. The suite closes each backend it gets.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/floe-backup/floe/internal/storage"
)

// TestBackend runs the conformance suite against backends made by newBackend.
func TestBackend(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b storage.Backend)
	}{
		{"SaveLoad", testSaveLoad},
		{"LoadRange", testLoadRange},
		{"Empty", testEmpty},
		{"LoadAll", testLoadAll},
		{"Stat", testStat},
		{"Missing", testMissing},
		{"NoOverwrite", testNoOverwrite},
		{"Config", testConfig},
		{"TypesDistinct", testTypesDistinct},
		{"List", testList},
		{"ListErrors", testListErrors},
		{"Remove", testRemove},
		{"Copies", testCopies},
		{"Canceled", testCanceled},
		{"ConcurrentSave", testConcurrentSave},
		{"ConcurrentSameName", testConcurrentSameName},
		{"HostileNames", testHostileNames},
		{"SaveStream", testSaveStream},
		{"Wrapped", testWrapped},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t)
			t.Cleanup(func() {
				if err := b.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			if b.Location() == "" {
				t.Errorf("Location is empty")
			}
			tc.fn(t, b)
		})
	}
}

// Name returns a valid object name derived from seed.
func Name(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return hex.EncodeToString(sum[:])
}

func randomData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	buf := make([]byte, n)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	return buf
}

func save(t *testing.T, b storage.Backend, h storage.Handle, data []byte) {
	t.Helper()
	if err := b.Save(context.Background(), h, data); err != nil {
		t.Fatalf("Save %s: %v", h, err)
	}
}

// saveAll saves objs from several goroutines (fsyncs are slow).
func saveAll(t *testing.T, b storage.Backend, objs map[storage.Handle][]byte) {
	t.Helper()
	work := make(chan storage.Handle)
	errs := make(chan error, len(objs))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for h := range work {
				if err := b.Save(context.Background(), h, objs[h]); err != nil {
					errs <- err
				}
			}
		}()
	}
	for h := range objs {
		work <- h
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Save: %v", err)
	}
}

func load(t *testing.T, b storage.Backend, h storage.Handle, off, n int64) []byte {
	t.Helper()
	data, err := b.Load(context.Background(), h, off, n)
	if err != nil {
		t.Fatalf("Load %s %d+%d: %v", h, off, n, err)
	}
	return data
}

func list(t *testing.T, b storage.Backend, ft storage.FileType) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	err := b.List(context.Background(), ft, func(fi storage.FileInfo) error {
		if _, dup := got[fi.Name]; dup {
			t.Errorf("List %s: %s reported twice", ft, fi.Name)
		}
		got[fi.Name] = fi.Size
		return nil
	})
	if err != nil {
		t.Fatalf("List %s: %v", ft, err)
	}
	return got
}

func testSaveLoad(t *testing.T, b storage.Backend) {
	for i, size := range []int{1, 100, 4096, 1<<20 + 17} {
		h := storage.Handle{Type: storage.Pack, Name: Name(fmt.Sprint("saveload", i))}
		data := randomData(uint64(i), size)
		save(t, b, h, data)
		if got := load(t, b, h, 0, 0); !bytes.Equal(got, data) {
			t.Errorf("Load %s: got %d bytes, want %d identical bytes", h, len(got), len(data))
		}
		got, err := storage.ReadAll(context.Background(), b, h)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("ReadAll %s: %d bytes, %v", h, len(got), err)
		}
	}
}

func testLoadRange(t *testing.T, b storage.Backend) {
	const size = 10000
	data := randomData(7, size)
	h := storage.Handle{Type: storage.Index, Name: Name("range")}
	save(t, b, h, data)
	ok := []struct{ off, n int64 }{
		{0, 0}, {0, 1}, {0, size}, {1, 0}, {1, size - 1}, {size - 1, 1}, {size - 1, 0},
		{size, 0}, {5000, 123}, {4321, 0}, {9999, 1},
	}
	for _, r := range ok {
		got := load(t, b, h, r.off, r.n)
		end := r.off + r.n
		if r.n == 0 {
			end = size
		}
		if !bytes.Equal(got, data[r.off:end]) {
			t.Errorf("Load %d+%d: got %d bytes, want %d identical bytes", r.off, r.n, len(got), end-r.off)
		}
	}
	pastEnd := []struct{ off, n int64 }{
		{0, size + 1}, {1, size}, {size - 1, 2}, {size, 1}, {size + 1, 0}, {size + 1, 1},
		{1 << 62, 1 << 62}, {1, 1<<63 - 1}, {1<<63 - 1, 1<<63 - 1},
	}
	for _, r := range pastEnd {
		got, err := b.Load(context.Background(), h, r.off, r.n)
		if err == nil {
			t.Errorf("Load %d+%d past end: no error (%d bytes)", r.off, r.n, len(got))
		} else if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("Load %d+%d past end: %v, want io.ErrUnexpectedEOF", r.off, r.n, err)
		}
	}
	negative := []struct{ off, n int64 }{{-1, 0}, {0, -1}, {-1, -1}, {-1 << 63, 10}, {5, -3}}
	for _, r := range negative {
		if _, err := b.Load(context.Background(), h, r.off, r.n); err == nil {
			t.Errorf("Load %d+%d: no error", r.off, r.n)
		}
	}
}

func testEmpty(t *testing.T, b storage.Backend) {
	h := storage.Handle{Type: storage.Snapshot, Name: Name("empty")}
	save(t, b, h, nil)
	if got := load(t, b, h, 0, 0); len(got) != 0 {
		t.Errorf("Load empty object: %d bytes", len(got))
	}
	fi, err := b.Stat(context.Background(), h)
	if err != nil || fi.Size != 0 {
		t.Errorf("Stat empty object: %+v, %v", fi, err)
	}
	if _, err := b.Load(context.Background(), h, 0, 1); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("Load 0+1 of empty object: %v, want io.ErrUnexpectedEOF", err)
	}
	if got := list(t, b, storage.Snapshot); len(got) != 1 || got[h.Name] != 0 {
		t.Errorf("List: %v", got)
	}
}

// storage.LoadAll (through a backend's WholeLoader, if it is one): the
// whole object within the limit, ErrTooLarge above it, ErrNotExist for a
// missing one, an empty object as empty.
func testLoadAll(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	h := storage.Handle{Type: storage.Index, Name: Name("loadall")}
	data := randomData(7, 3000)
	save(t, b, h, data)
	if got, err := storage.LoadAll(ctx, b, h, 3000); err != nil || !bytes.Equal(got, data) {
		t.Errorf("LoadAll within the limit: %d bytes, %v", len(got), err)
	}
	if _, err := storage.LoadAll(ctx, b, h, 2999); !errors.Is(err, storage.ErrTooLarge) {
		t.Errorf("LoadAll above the limit: %v, want ErrTooLarge", err)
	}
	if _, err := storage.LoadAll(ctx, b, h, 0); !errors.Is(err, storage.ErrTooLarge) {
		t.Errorf("LoadAll with limit 0: %v, want ErrTooLarge", err)
	}
	if _, err := storage.LoadAll(ctx, b, storage.Handle{Type: storage.Index, Name: Name("loadall-missing")}, 100); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("LoadAll of a missing object: %v, want ErrNotExist", err)
	}
	empty := storage.Handle{Type: storage.Snapshot, Name: Name("loadall-empty")}
	save(t, b, empty, nil)
	if got, err := storage.LoadAll(ctx, b, empty, 10); err != nil || got == nil || len(got) != 0 {
		t.Errorf("LoadAll of an empty object: %v, %v", got, err)
	}
}

func testStat(t *testing.T, b storage.Backend) {
	for i, size := range []int{1, 333, 65536} {
		h := storage.Handle{Type: storage.Key, Name: Name(fmt.Sprint("stat", i))}
		save(t, b, h, randomData(uint64(i), size))
		fi, err := b.Stat(context.Background(), h)
		if err != nil {
			t.Fatalf("Stat %s: %v", h, err)
		}
		if fi.Size != int64(size) {
			t.Errorf("Stat %s: size %d, want %d", h, fi.Size, size)
		}
		if fi.Name != h.Name {
			t.Errorf("Stat %s: name %q, want %q", h, fi.Name, h.Name)
		}
	}
}

func testMissing(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	handles := []storage.Handle{{Type: storage.Config}}
	for _, ft := range storage.AllTypes {
		handles = append(handles, storage.Handle{Type: ft, Name: Name("missing")})
	}
	// A pack whose name shares its prefix with an existing one.
	present := storage.Handle{Type: storage.Pack, Name: Name("present")}
	save(t, b, present, []byte("x"))
	handles = append(handles, storage.Handle{Type: storage.Pack, Name: present.Name[:62] + "00"})
	for _, h := range handles {
		if h == present {
			continue
		}
		if _, err := b.Load(ctx, h, 0, 0); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Load missing %s: %v, want ErrNotExist", h, err)
		}
		if _, err := b.Load(ctx, h, 1, 1); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Load range of missing %s: %v, want ErrNotExist", h, err)
		}
		if _, err := b.Stat(ctx, h); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Stat missing %s: %v, want ErrNotExist", h, err)
		} else if !storage.IsNotExist(err) {
			t.Errorf("IsNotExist(%v) = false", err)
		}
		if err := b.Remove(ctx, h); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Remove missing %s: %v, want ErrNotExist", h, err)
		}
	}
}

func testNoOverwrite(t *testing.T, b storage.Backend) {
	for _, h := range []storage.Handle{
		{Type: storage.Pack, Name: Name("once")},
		{Type: storage.Config},
	} {
		orig := []byte("original content of " + h.String())
		save(t, b, h, orig)
		for _, other := range [][]byte{[]byte("other"), orig, nil, randomData(1, 100000)} {
			err := b.Save(context.Background(), h, other)
			if !errors.Is(err, storage.ErrExist) {
				t.Errorf("Save over existing %s: %v, want ErrExist", h, err)
			}
		}
		if got := load(t, b, h, 0, 0); !bytes.Equal(got, orig) {
			t.Errorf("%s changed by a refused Save: %q", h, got)
		}
		if fi, err := b.Stat(context.Background(), h); err != nil || fi.Size != int64(len(orig)) {
			t.Errorf("Stat %s after refused Save: %+v, %v", h, fi, err)
		}
	}
	if got := list(t, b, storage.Pack); len(got) != 1 {
		t.Errorf("List after refused Saves: %v", got)
	}
}

func testConfig(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	h := storage.Handle{Type: storage.Config}
	data := []byte("sealed config")
	save(t, b, h, data)
	if got := load(t, b, h, 0, 0); !bytes.Equal(got, data) {
		t.Errorf("Load config: %q", got)
	}
	if got := load(t, b, h, 2, 4); !bytes.Equal(got, data[2:6]) {
		t.Errorf("Load config 2+4: %q", got)
	}
	if fi, err := b.Stat(ctx, h); err != nil || fi.Size != int64(len(data)) {
		t.Errorf("Stat config: %+v, %v", fi, err)
	}
	err := b.List(ctx, storage.Config, func(storage.FileInfo) error {
		t.Errorf("List(Config) called fn")
		return nil
	})
	if !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("List(Config): %v, want ErrInvalid", err)
	}
	for _, ft := range storage.AllTypes {
		if got := list(t, b, ft); len(got) != 0 {
			t.Errorf("List %s lists config: %v", ft, got)
		}
	}
	if err := b.Remove(ctx, h); err != nil {
		t.Errorf("Remove config: %v", err)
	}
	if _, err := b.Stat(ctx, h); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat removed config: %v", err)
	}
}

func testTypesDistinct(t *testing.T, b storage.Backend) {
	name := Name("shared")
	for i, ft := range storage.AllTypes {
		save(t, b, storage.Handle{Type: ft, Name: name}, []byte(string(ft)+strings.Repeat("!", i)))
	}
	for i, ft := range storage.AllTypes {
		h := storage.Handle{Type: ft, Name: name}
		if got := string(load(t, b, h, 0, 0)); got != string(ft)+strings.Repeat("!", i) {
			t.Errorf("Load %s: %q", h, got)
		}
	}
	if err := b.Remove(context.Background(), storage.Handle{Type: storage.Index, Name: name}); err != nil {
		t.Fatal(err)
	}
	for _, ft := range storage.AllTypes {
		_, err := b.Stat(context.Background(), storage.Handle{Type: ft, Name: name})
		if (ft == storage.Index) != errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Stat %s/%s after removing the index: %v", ft, name, err)
		}
	}
}

func testList(t *testing.T, b storage.Backend) {
	want := map[storage.FileType]map[string]int64{}
	objs := map[storage.Handle][]byte{}
	for i, ft := range storage.AllTypes {
		want[ft] = map[string]int64{}
		n := 3 + i*5
		if ft == storage.Pack {
			n = 100 // spread over many prefixes
		}
		for j := 0; j < n; j++ {
			name := Name(fmt.Sprint("list", ft, j))
			size := (i*31 + j) % 50
			objs[storage.Handle{Type: ft, Name: name}] = randomData(uint64(j), size)
			want[ft][name] = int64(size)
		}
	}
	saveAll(t, b, objs)
	save(t, b, storage.Handle{Type: storage.Config}, []byte("config"))
	for _, ft := range storage.AllTypes {
		got := list(t, b, ft)
		if len(got) != len(want[ft]) {
			t.Errorf("List %s: %d objects, want %d", ft, len(got), len(want[ft]))
		}
		for name, size := range want[ft] {
			if gs, ok := got[name]; !ok {
				t.Errorf("List %s: %s missing", ft, name)
			} else if gs != size {
				t.Errorf("List %s: %s size %d, want %d", ft, name, gs, size)
			}
		}
		for name := range got {
			if _, ok := want[ft][name]; !ok {
				t.Errorf("List %s: unexpected %q", ft, name)
			}
		}
	}
	// fn may call the backend.
	err := b.List(context.Background(), storage.Index, func(fi storage.FileInfo) error {
		st, err := b.Stat(context.Background(), storage.Handle{Type: storage.Index, Name: fi.Name})
		if err != nil || st.Size != fi.Size {
			return fmt.Errorf("Stat inside List: %+v, %v", st, err)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func testListErrors(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	for _, ft := range storage.AllTypes {
		if got := list(t, b, ft); len(got) != 0 {
			t.Errorf("List %s of empty backend: %v", ft, got)
		}
	}
	for i := 0; i < 5; i++ {
		save(t, b, storage.Handle{Type: storage.Pack, Name: Name(fmt.Sprint("stop", i))}, []byte{byte(i)})
	}
	stop := errors.New("stop here")
	calls := 0
	err := b.List(ctx, storage.Pack, func(storage.FileInfo) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) {
		t.Errorf("List with failing fn: %v, want the fn's error", err)
	}
	if calls != 1 {
		t.Errorf("List went on after fn failed: %d calls", calls)
	}
	for _, ft := range []storage.FileType{"", "bogus", "../data", "data/00", storage.Config} {
		err := b.List(ctx, ft, func(storage.FileInfo) error {
			t.Errorf("List(%q) called fn", ft)
			return nil
		})
		if !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("List(%q): %v, want ErrInvalid", ft, err)
		}
	}
}

func testRemove(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	var hs []storage.Handle
	for _, ft := range storage.AllTypes {
		h := storage.Handle{Type: ft, Name: Name("remove" + string(ft))}
		save(t, b, h, []byte("to be removed"))
		hs = append(hs, h)
	}
	keep := storage.Handle{Type: storage.Pack, Name: Name("keep")}
	save(t, b, keep, []byte("kept"))
	for _, h := range hs {
		if err := b.Remove(ctx, h); err != nil {
			t.Fatalf("Remove %s: %v", h, err)
		}
		if _, err := b.Load(ctx, h, 0, 0); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Load removed %s: %v", h, err)
		}
		if err := b.Remove(ctx, h); !errors.Is(err, storage.ErrNotExist) {
			t.Errorf("Remove removed %s again: %v", h, err)
		}
		if _, ok := list(t, b, h.Type)[h.Name]; ok {
			t.Errorf("List %s after Remove still lists it", h)
		}
		// Saving again after removal is allowed.
		save(t, b, h, []byte("again"))
		if got := load(t, b, h, 0, 0); string(got) != "again" {
			t.Errorf("Load %s saved again: %q", h, got)
		}
	}
	if got := load(t, b, keep, 0, 0); string(got) != "kept" {
		t.Errorf("unrelated object changed: %q", got)
	}
}

// testCopies checks that the backend keeps its own copy of saved data and
// hands out copies.
func testCopies(t *testing.T, b storage.Backend) {
	h := storage.Handle{Type: storage.Pack, Name: Name("copies")}
	data := []byte("immutable bytes")
	save(t, b, h, data)
	data[0] = 'X'
	got := load(t, b, h, 0, 0)
	if string(got) != "immutable bytes" {
		t.Fatalf("changing the saved slice changed the object: %q", got)
	}
	got[1] = 'X'
	if got := load(t, b, h, 0, 0); string(got) != "immutable bytes" {
		t.Errorf("changing a loaded slice changed the object: %q", got)
	}
	part := load(t, b, h, 2, 3)
	part[0] = 'X'
	if got := load(t, b, h, 0, 0); string(got) != "immutable bytes" {
		t.Errorf("changing a loaded range changed the object: %q", got)
	}
}

func testCanceled(t *testing.T, b storage.Backend) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h := storage.Handle{Type: storage.Snapshot, Name: Name("canceled")}
	if err := b.Save(ctx, h, []byte("data")); err == nil {
		t.Errorf("Save with canceled context: no error")
	}
	if _, err := b.Stat(context.Background(), h); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat after canceled Save: %v, want ErrNotExist", err)
	}
	if err := b.List(ctx, storage.Snapshot, func(storage.FileInfo) error { return nil }); err == nil {
		t.Errorf("List with canceled context: no error")
	}
}

func testConcurrentSave(t *testing.T, b storage.Backend) {
	const workers, perWorker = 8, 24
	type obj struct {
		h    storage.Handle
		data []byte
	}
	objs := make([][]obj, workers)
	for w := range objs {
		for i := 0; i < perWorker; i++ {
			ft := storage.AllTypes[(w+i)%len(storage.AllTypes)]
			objs[w] = append(objs[w], obj{
				h:    storage.Handle{Type: ft, Name: Name(fmt.Sprint("concurrent", w, i))},
				data: randomData(uint64(w*1000+i), 1+(w*perWorker+i)*97%5000),
			})
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for w := range objs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, o := range objs[w] {
				if err := b.Save(context.Background(), o.h, o.data); err != nil {
					errs <- err
				}
				// Interleave reads with other writers.
				if err := b.List(context.Background(), o.h.Type, func(storage.FileInfo) error { return nil }); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Save: %v", err)
	}
	count := 0
	for _, ft := range storage.AllTypes {
		count += len(list(t, b, ft))
	}
	if count != workers*perWorker {
		t.Errorf("List after concurrent Saves: %d objects, want %d", count, workers*perWorker)
	}
	for _, ws := range objs {
		for _, o := range ws {
			if got := load(t, b, o.h, 0, 0); !bytes.Equal(got, o.data) {
				t.Errorf("Load %s after concurrent Saves: wrong content", o.h)
			}
		}
	}
}

// testConcurrentSameName saves one name from several goroutines at once:
// exactly one wins, the others get ErrExist, and the object is whole.
func testConcurrentSameName(t *testing.T, b storage.Backend) {
	const workers = 8
	for round := 0; round < 5; round++ {
		h := storage.Handle{Type: storage.Pack, Name: Name(fmt.Sprint("race", round))}
		datas := make([][]byte, workers)
		for w := range datas {
			datas[w] = randomData(uint64(round*100+w), 20000+w)
		}
		var wg sync.WaitGroup
		results := make([]error, workers)
		start := make(chan struct{})
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				results[w] = b.Save(context.Background(), h, datas[w])
			}()
		}
		close(start)
		wg.Wait()
		winner := -1
		for w, err := range results {
			switch {
			case err == nil:
				if winner >= 0 {
					t.Errorf("round %d: Saves %d and %d both succeeded", round, winner, w)
				}
				winner = w
			case !errors.Is(err, storage.ErrExist):
				t.Errorf("round %d: Save %d: %v, want ErrExist", round, w, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no Save succeeded", round)
		}
		if got := load(t, b, h, 0, 0); !bytes.Equal(got, datas[winner]) {
			t.Errorf("round %d: object is not the winner's content (%d bytes)", round, len(got))
		}
	}
	if got := list(t, b, storage.Pack); len(got) != 5 {
		t.Errorf("List: %d packs, want 5", len(got))
	}
}

// HostileHandles returns handles that every backend must refuse.
func HostileHandles() []storage.Handle {
	valid := Name("valid")
	names := []string{
		"", ".", "..", "../x", "a/b", "/", "/etc/passwd", ".tmp-x", ".tmp-" + valid[:59],
		"x\x00y", valid + "\x00", valid[:63] + "\x00", "\x00" + valid[:63],
		"../" + valid[:61], valid[:30] + "/" + valid[:33], valid[:30] + "\\" + valid[:33],
		strings.ToUpper(valid), valid[:63], valid + "0", valid[:63] + "g", valid[:63] + "é"[:1],
		" " + valid[:63], valid[:63] + "\n", "config", "../config", "../../../../../../tmp/" + valid[:43],
		strings.Repeat("../", 21) + "x",
	}
	var hs []storage.Handle
	for _, ft := range storage.AllTypes {
		for _, n := range names {
			hs = append(hs, storage.Handle{Type: ft, Name: n})
		}
	}
	for _, n := range names[1:] {
		hs = append(hs, storage.Handle{Type: storage.Config, Name: n})
	}
	hs = append(hs, storage.Handle{Type: storage.Config, Name: valid})
	for _, ft := range []storage.FileType{"", ".", "..", "../data", "data/00", "bogus", "/tmp", "data\x00"} {
		hs = append(hs, storage.Handle{Type: ft, Name: valid}, storage.Handle{Type: ft, Name: ""})
	}
	return hs
}

func testHostileNames(t *testing.T, b storage.Backend) {
	ctx := context.Background()
	// Objects that a hostile name might resolve to if joined naively.
	valid := Name("valid")
	decoy := storage.Handle{Type: storage.Pack, Name: valid}
	save(t, b, decoy, []byte("decoy"))
	save(t, b, storage.Handle{Type: storage.Config}, []byte("config"))

	for _, h := range HostileHandles() {
		if err := b.Save(ctx, h, []byte("hostile")); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Save %s: %v, want ErrInvalid", h, err)
		}
		if data, err := b.Load(ctx, h, 0, 0); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Load %s: %q, %v, want ErrInvalid", h, data, err)
		}
		if _, err := b.Load(ctx, h, 1, 2); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Load range of %s: %v, want ErrInvalid", h, err)
		}
		if _, err := b.Stat(ctx, h); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Stat %s: %v, want ErrInvalid", h, err)
		}
		if err := b.Remove(ctx, h); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Remove %s: %v, want ErrInvalid", h, err)
		}
		if err := h.Validate(); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("Validate %s: %v, want ErrInvalid", h, err)
		}
	}
	// Nothing was written, nothing was removed.
	for _, ft := range storage.AllTypes {
		got := list(t, b, ft)
		var names []string
		for n := range got {
			names = append(names, n)
		}
		sort.Strings(names)
		want := 0
		if ft == storage.Pack {
			want = 1
		}
		if len(names) != want || (want == 1 && names[0] != valid) {
			t.Errorf("List %s after hostile names: %q", ft, names)
		}
	}
	if got := load(t, b, decoy, 0, 0); string(got) != "decoy" {
		t.Errorf("decoy changed: %q", got)
	}
	if got := load(t, b, storage.Handle{Type: storage.Config}, 0, 0); string(got) != "config" {
		t.Errorf("config changed: %q", got)
	}
}

func testSaveStream(t *testing.T, b storage.Backend) {
	ss, ok := storage.As[storage.StreamSaver](b)
	if !ok {
		t.Skip("the backend does not stream saves")
	}
	ctx := context.Background()
	data := randomData(11, 3<<20+5)
	h := storage.Handle{Type: storage.Pack, Name: Name("stream")}
	before := len(list(t, b, storage.Pack))
	p, err := ss.SaveStream(ctx, storage.Pack)
	if err != nil {
		t.Fatalf("SaveStream: %v", err)
	}
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 700<<10)
		if w, err := p.Write(rest[:n]); err != nil || w != n {
			t.Fatalf("Write: %d, %v", w, err)
		}
		rest = rest[n:]
	}
	// invisible until committed
	if got := list(t, b, storage.Pack); len(got) != before {
		t.Errorf("List before Commit: %d objects, want the %d there before", len(got), before)
	}
	if _, err := b.Stat(ctx, h); !storage.IsNotExist(err) {
		t.Errorf("Stat before Commit: %v, want ErrNotExist", err)
	}
	if err := p.Commit(ctx, h.Name); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	p.Abort() // a no-op after Commit
	if got := load(t, b, h, 0, 0); !bytes.Equal(got, data) {
		t.Errorf("Load after Commit: %d bytes, want %d identical bytes", len(got), len(data))
	}

	// never overwrites
	p, err = ss.SaveStream(ctx, storage.Pack)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("other")); err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(ctx, h.Name); !errors.Is(err, storage.ErrExist) {
		t.Errorf("Commit over an existing object: %v, want ErrExist", err)
	}
	if got := load(t, b, h, 0, 0); !bytes.Equal(got, data) {
		t.Errorf("%s changed by a refused Commit", h)
	}

	// an aborted object leaves nothing
	p, err = ss.SaveStream(ctx, storage.Pack)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write(randomData(12, 1000)); err != nil {
		t.Fatal(err)
	}
	p.Abort()
	if got := list(t, b, storage.Pack); len(got) != before+1 {
		t.Errorf("List after Abort: %d objects, want %d (and %s)", len(got), before+1, h.Name)
	}

	// hostile names and types are refused
	if _, err := ss.SaveStream(ctx, storage.Config); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("SaveStream(config): %v, want ErrInvalid", err)
	}
	p, err = ss.SaveStream(ctx, storage.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Commit(ctx, "../../x"); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Commit(\"../../x\"): %v, want ErrInvalid", err)
	}
	p.Abort()
	if got := list(t, b, storage.Index); len(got) != 0 {
		t.Errorf("List index after a refused Commit: %v", got)
	}
}

// passThrough wraps a backend as bandwidth limits do, forwarding only the
// methods of storage.Backend; its capabilities are reached with Unwrap.
type passThrough struct{ storage.Backend }

func (p passThrough) Unwrap() storage.Backend { return p.Backend }

// testWrapped checks that storage.As finds the backend's capabilities
// through a wrapper, and that they work there.
func testWrapped(t *testing.T, b storage.Backend) {
	w := passThrough{b}
	for name, found := range map[string]func(storage.Backend) bool{
		"StreamSaver":     func(b storage.Backend) bool { _, ok := storage.As[storage.StreamSaver](b); return ok },
		"TempFiles":       func(b storage.Backend) bool { _, ok := storage.As[storage.TempFiles](b); return ok },
		"ConnectionsHint": func(b storage.Backend) bool { _, ok := storage.As[storage.ConnectionsHint](b); return ok },
		"ParallelSaver":   func(b storage.Backend) bool { _, ok := storage.As[storage.ParallelSaver](b); return ok },
	} {
		if direct, wrapped := found(b), found(w); direct != wrapped {
			t.Errorf("%s: the backend has it: %v, through a wrapper: %v", name, direct, wrapped)
		}
	}
	if got, want := storage.Connections(1, w), storage.Connections(1, b); got != want {
		t.Errorf("Connections through a wrapper: %d, directly: %d", got, want)
	}
	testSaveLoad(t, w)
	testSaveStream(t, w)
}
