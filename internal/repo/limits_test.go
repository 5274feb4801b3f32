package repo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
)

// sparseBackend reports objects of the given sizes (a sparse file costs
// the storage nothing) and records every load of them: a load means the
// bound was not checked before reading.
type sparseBackend struct {
	storage.Backend
	mu     sync.Mutex
	sizes  map[storage.Handle]int64
	loaded []storage.Handle
}

func (b *sparseBackend) Stat(ctx context.Context, h storage.Handle) (storage.FileInfo, error) {
	if size, ok := b.sizes[h]; ok {
		return storage.FileInfo{Name: h.Name, Size: size}, nil
	}
	return b.Backend.Stat(ctx, h)
}

func (b *sparseBackend) Load(ctx context.Context, h storage.Handle, off, length int64) ([]byte, error) {
	b.mu.Lock()
	if _, ok := b.sizes[h]; ok {
		b.loaded = append(b.loaded, h)
	}
	b.mu.Unlock()
	return b.Backend.Load(ctx, h, off, length)
}

// A 200 GB index file and a 200 GB pack are refused before anything of
// them is read, naming the limit; so are they for export and import
// (LoadWhole).
func TestIndexAndPackLimits(t *testing.T) {
	ctx := context.Background()
	_, be := newRepo(t)
	idx := storage.Handle{Type: storage.Index, Name: hash.Sum([]byte("huge index")).String()}
	pack := storage.Handle{Type: storage.Pack, Name: hash.Sum([]byte("huge pack")).String()}
	be.Set(idx, []byte("x"))
	be.Set(pack, []byte("x"))
	sb := &sparseBackend{Backend: be, sizes: map[storage.Handle]int64{idx: 200 << 30, pack: 200 << 30}}
	r, err := Open(ctx, sb, Credential{Password: []byte("pw")}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id, _ := hash.Parse(idx.Name)
	if _, err := r.LoadIndexFile(ctx, id); !errors.Is(err, storage.ErrTooLarge) || !strings.Contains(err.Error(), "limit of 268435456 bytes for an index file") {
		t.Errorf("huge index file: %v", err)
	}
	var le *IndexLoadError
	if err := r.LoadIndex(ctx); !errors.As(err, &le) || !errors.Is(le.Errs[0], storage.ErrTooLarge) {
		t.Errorf("LoadIndex with a huge index file: %v", err)
	}
	pid, _ := hash.Parse(pack.Name)
	if _, err := r.LoadPack(ctx, pid); !errors.Is(err, storage.ErrTooLarge) || !strings.Contains(err.Error(), "for a pack") {
		t.Errorf("huge pack: %v", err)
	}
	for _, h := range []storage.Handle{idx, pack} {
		if _, err := LoadWhole(ctx, sb, h); !errors.Is(err, storage.ErrTooLarge) {
			t.Errorf("LoadWhole %s: %v", h, err)
		}
	}
	if len(sb.loaded) > 0 {
		t.Errorf("read before the size was checked: %v", sb.loaded)
	}
	// the pack cap is 4x pack_size plus the largest blob and header, and
	// a pack just under it still loads as far as its size goes
	if got, want := r.MaxPackSize(), 4*int64(DefaultPackSize)+int64(packfile.MaxBlobLength(packfile.Tree))+packfile.MaxHeaderLen+int64(packfile.TrailerLen); got != want {
		t.Errorf("MaxPackSize %d, want %d", got, want)
	}
	if maxPackSize != packMaxFor(1<<30) {
		t.Errorf("maxPackSize %d is not the cap for the largest pack_size (%d)", maxPackSize, packMaxFor(1<<30))
	}
}

// An index entry (signed, so trusted) of a data blob longer than this
// repository's chunker maximum can seal to, but within the format's
// bound, is refused by the reader without reading the pack.
func TestBlobLengthReaderBound(t *testing.T) {
	ctx := context.Background()
	r0, be := newRepo(t)
	pack := hash.Sum([]byte("pack"))
	sb := &sparseBackend{Backend: be, sizes: map[storage.Handle]int64{{Type: storage.Pack, Name: pack.String()}: 1 << 30}}
	ref := hash.Ref{ID: hash.Sum([]byte("blob")), Key: hash.Sum([]byte("key"))}
	length := packfile.MaxStoredLength(int(r0.chunker.Max)) + 1
	if length > packfile.MaxBlobLength(packfile.Data) {
		t.Fatalf("test repository's chunker maximum %d is the format's", r0.chunker.Max)
	}
	f := &IndexFile{Packs: []PackInfo{{ID: pack, Blobs: []packfile.Blob{{Type: DataBlob, ID: ref.ID, Length: length}}}}}
	if _, err := r0.SaveIndexFile(ctx, f); err != nil {
		t.Fatal(err)
	}
	r, err := Open(ctx, sb, Credential{Password: []byte("pw")}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.LoadBlob(ctx, DataBlob, ref, nil); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Errorf("LoadBlob of an oversize entry: %v", err)
	}
	var got error
	err = r.LoadBlobsFromPack(ctx, pack, []PackBlob{{Type: DataBlob, Ref: ref, Length: length}}, func(b PackBlob, data []byte, err error) error {
		got = err
		return nil
	})
	if err != nil || got == nil || !strings.Contains(got.Error(), "more than the limit") {
		t.Errorf("LoadBlobsFromPack of an oversize entry: %v, %v", err, got)
	}
	if len(sb.loaded) > 0 {
		t.Errorf("read the pack: %v", sb.loaded)
	}
}

// SplitIndexFile keeps every file within its entries (but for a pack of
// more blobs, alone in its file), every pack whole, and puts the superseded
// files after every pack.
func TestSplitIndexFile(t *testing.T) {
	f := &IndexFile{}
	for i := 0; i < 7; i++ {
		p := PackInfo{ID: hash.Sum([]byte{byte(i)})}
		for j := 0; j < i; j++ { // 0..6 blobs; a pack of 6 is more than a file holds
			p.Blobs = append(p.Blobs, packfile.Blob{Type: DataBlob, ID: hash.Sum([]byte{byte(i), byte(j)}), Offset: uint32(j * 100), Length: 100})
		}
		f.Packs = append(f.Packs, p)
		f.Supersedes = append(f.Supersedes, hash.Sum([]byte{'s', byte(i)}))
	}
	if got := SplitIndexFile(f, 1000); len(got) != 1 || got[0] != f {
		t.Fatalf("a file within the limit is split: %d files", len(got))
	}
	const max = 6
	parts := SplitIndexFile(f, max)
	var packs []PackInfo
	var supersedes []hash.ID
	for i, p := range parts {
		if n := indexEntries(p); n == 0 || n > max && len(p.Packs) != 1 {
			t.Errorf("file %d: %d entries in %d packs", i, n, len(p.Packs))
		}
		if len(p.Packs) > 0 && len(supersedes) > 0 {
			t.Errorf("file %d lists packs after a file that supersedes", i)
		}
		supersedes = append(supersedes, p.Supersedes...)
		packs = append(packs, p.Packs...)
	}
	if len(parts) < 5 {
		t.Errorf("%d files for %d entries", len(parts), indexEntries(f))
	}
	if fmt.Sprint(packs) != fmt.Sprint(f.Packs) || fmt.Sprint(supersedes) != fmt.Sprint(f.Supersedes) {
		t.Errorf("the split lost or reordered entries")
	}
}
