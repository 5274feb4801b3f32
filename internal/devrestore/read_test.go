//go:build linux

package devrestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/ui"
)

// meteredBackend counts the requests for pack bytes (loads, and streams
// when stream is set: it then streams ranges as S3 and a floe server do),
// and flips a byte of pack damagePack at damageAt in what it returns.
type meteredBackend struct {
	storage.Backend
	stream bool

	mu         sync.Mutex
	requests   int
	damagePack string
	damageAt   int64
}

func (b *meteredBackend) load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	data, err := b.Backend.Load(ctx, h, offset, length)
	if err != nil || h.Type != storage.Pack {
		return data, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.requests++
	if h.Name == b.damagePack && offset <= b.damageAt && b.damageAt < offset+int64(len(data)) {
		data = bytes.Clone(data)
		data[b.damageAt-offset] ^= 0x40
	}
	return data, nil
}

func (b *meteredBackend) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	return b.load(ctx, h, offset, length)
}

// streamingBackend is a meteredBackend that streams ranges.
type streamingBackend struct{ *meteredBackend }

func (b streamingBackend) OpenStream(ctx context.Context, h storage.Handle, offset, length int64) (io.ReadCloser, error) {
	data, err := b.load(ctx, h, offset, length)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

func (b *meteredBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.requests
}

// testImage stores an image of n chunks of odd sizes (no multiple of a
// block) in r: random ones, one repeated at many offsets, and zero ones,
// and returns its node and bytes.
func testImage(t *testing.T, r *repo.Repository, n int) (*snapshot.Node, []byte) {
	t.Helper()
	ctx := context.Background()
	rnd := rand.New(rand.NewSource(5))
	w := r.StartWriting()
	node := &snapshot.Node{Type: snapshot.TypeFile}
	var img []byte
	repeated := make([]byte, 70<<10+13)
	rnd.Read(repeated)
	for i := range n {
		var data []byte
		switch {
		case i%7 == 3:
			data = repeated
		case i%11 == 5:
			data = make([]byte, 90<<10+511) // a zero chunk
		default:
			data = make([]byte, 40<<10+rnd.Intn(120<<10))
			rnd.Read(data)
		}
		ref, _, _, err := w.SaveBlob(ctx, repo.DataBlob, r.BlobKey(data), data)
		if err != nil {
			t.Fatal(err)
		}
		node.Content = append(node.Content, ref)
		node.ChunkSizes = append(node.ChunkSizes, uint32(len(data)))
		img = append(img, data...)
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	node.Size = uint64(len(img))
	return node, img
}

// restoreImage writes node's data into a new file of its size (holes
// where the image is zero, as a device zeroed by Run), directly when
// direct (as onto a device), and returns the file's path and writeData's
// error.
func restoreImage(t *testing.T, r *repo.Repository, node *snapshot.Node, direct bool) (string, error) {
	t.Helper()
	chunks, err := imageChunks(r, node, "img")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if direct {
		testutil.SkipWithoutDirectIO(t, dir)
	}
	path := filepath.Join(dir, "dev")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(node.Size)); err != nil {
		t.Fatal(err)
	}
	out := output{f: f, maxChunk: r.ChunkerParams().Max}
	if direct {
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if out.dw = directio.NewFile(fd, int64(node.Size), directio.Options{}); out.dw == nil {
			t.Skip("the file system refuses O_DIRECT")
		}
	}
	err = writeData(context.Background(), r, "img", chunks, out, 4, ui.NoProgress)
	if out.dw != nil {
		if err != nil {
			out.dw.Release()
		} else if ferr := out.dw.Finish(); ferr != nil {
			t.Fatal(ferr)
		}
	}
	return path, err
}

// restoresAs restores node's image (restoreImage) and fails the test
// unless it is img.
func restoresAs(t *testing.T, r *repo.Repository, node *snapshot.Node, direct bool, img []byte) {
	t.Helper()
	path, err := restoreImage(t, r, node, direct)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img) {
		t.Fatalf("direct=%v: the restored image differs", direct)
	}
}

// A device restore reads the image by pack ranges: far fewer requests
// than chunks, from a backend that streams ranges (a floe server, S3),
// one that opens them (a local directory) and one that does neither; a
// blob the image repeats is read once per window and written at every
// offset; the image comes back byte for byte, written directly or not.
func TestWriteDataReadsByRanges(t *testing.T) {
	src, mem := testutil.NewRepo(t)
	const n = 300
	node, img := testImage(t, src, n)
	distinct := map[hash.Ref]bool{}
	for _, ref := range node.Content {
		distinct[ref] = true
	}
	for _, direct := range []bool{false, true} {
		for _, kind := range []string{"stream", "plain", "local"} {
			t.Run(fmt.Sprintf("%s direct=%v", kind, direct), func(t *testing.T) {
				mb := &meteredBackend{Backend: mem}
				var be storage.Backend = mb
				switch kind {
				case "stream":
					be = streamingBackend{mb}
				case "local":
					// a copy of the repository in a directory
					dir := filepath.Join(t.TempDir(), "repo")
					lb, err := local.Create(dir)
					if err != nil {
						t.Fatal(err)
					}
					copyObjects(t, mem, lb)
					be = lb
				}
				r := testutil.Reopen(t, be)
				lim, streamed := r.ReadRanges()
				if streamed != (kind == "stream") {
					t.Fatalf("ReadRanges: %+v streamed=%v", lim, streamed)
				}
				before := mb.count()
				restoresAs(t, r, node, direct, img)
				if kind == "local" {
					return // its reads are preads of an open pack
				}
				reqs := mb.count() - before
				t.Logf("%d requests for %d chunks (%d distinct blobs, %d bytes)", reqs, n, len(distinct), len(img))
				// ~25 MB in two packs: by 4 MiB ranges about 8
				// requests, streamed one per pack
				want := 2 + len(img)/(4<<20)
				if kind == "stream" {
					want = 3
				}
				if reqs > want || reqs >= len(distinct)/10 {
					t.Fatalf("%d requests for %d distinct blobs: not read by ranges (want at most %d)", reqs, len(distinct), want)
				}
			})
		}
	}
}

// Small windows: a blob the image repeats is read again in each window
// that needs it, a pack once per window at most, and the image still
// comes back whole, directly written across the windows' seams.
func TestWriteDataWindows(t *testing.T) {
	src, mem := testutil.NewRepo(t)
	const n, per = 200, 25
	node, img := testImage(t, src, n)
	old := windowChunks
	windowChunks = per
	t.Cleanup(func() { windowChunks = old })
	mb := &meteredBackend{Backend: mem}
	r := testutil.Reopen(t, streamingBackend{mb})
	for _, direct := range []bool{false, true} {
		before := mb.count()
		restoresAs(t, r, node, direct, img)
		// windows of 25 data chunks (zero ones are not counted), each
		// reading at most the two packs
		reqs := mb.count() - before
		chunks, _ := imageChunks(r, node, "img")
		data := 0
		for _, c := range chunks {
			if !c.zero {
				data++
			}
		}
		windows := (data + per - 1) / per
		t.Logf("direct=%v: %d requests, %d windows", direct, reqs, windows)
		if reqs < windows || reqs > 2*windows {
			t.Fatalf("%d requests for %d windows of at most two packs", reqs, windows)
		}
	}
}

// copyObjects copies every object of from into to.
func copyObjects(t *testing.T, from, to storage.Backend) {
	t.Helper()
	ctx := context.Background()
	cfg, err := from.Load(ctx, storage.Handle{Type: storage.Config}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := to.Save(ctx, storage.Handle{Type: storage.Config}, cfg); err != nil {
		t.Fatal(err)
	}
	for _, typ := range storage.AllTypes {
		err := from.List(ctx, typ, func(fi storage.FileInfo) error {
			h := storage.Handle{Type: typ, Name: fi.Name}
			data, err := from.Load(ctx, h, 0, 0)
			if err != nil {
				return err
			}
			return to.Save(ctx, h, data)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// A damaged blob is still reported with the offset of the image where it
// belongs (the first of them, for a blob the image repeats), as when
// every chunk was loaded by itself; read by a range or streamed, its
// copy is loaded again alone, which finds it damaged.
func TestWriteDataDamagedBlob(t *testing.T) {
	src, mem := testutil.NewRepo(t)
	node, _ := testImage(t, src, 60)
	for _, tc := range []struct {
		name  string
		chunk int // the chunk whose blob is damaged
	}{
		{"single", 20},
		{"repeated", 10}, // i%7 == 3: the first of it is chunk 3
	} {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s stream=%v", tc.name, stream), func(t *testing.T) {
				mb := &meteredBackend{Backend: mem}
				var be storage.Backend = mb
				if stream {
					be = streamingBackend{mb}
				}
				r := testutil.Reopen(t, be)
				ref := node.Content[tc.chunk]
				loc, ok := r.Index().Lookup(repo.BlobHandle{Type: repo.DataBlob, ID: ref.ID})
				if !ok {
					t.Fatal("blob not in the index")
				}
				mb.damagePack, mb.damageAt = loc.Pack.String(), int64(loc.Offset)+int64(loc.Length)/2
				first := 0
				var off int64
				for i, c := range node.Content {
					if c == ref {
						first = i
						break
					}
					off += int64(node.ChunkSizes[i])
				}
				_, err := restoreImage(t, r, node, false)
				want := fmt.Sprintf("restore img at offset %d: ", off)
				if !errors.Is(err, repo.ErrForged) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), ref.Short()) {
					t.Fatalf("chunk %d (first at %d) damaged: %v; want %q and %v", tc.chunk, first, err, want, repo.ErrForged)
				}
			})
		}
	}
}

// imageChunks marks exactly the all-zero chunks (by their keys, of every
// length), and refuses chunks that do not make up the image.
func TestImageChunks(t *testing.T) {
	r, _ := testutil.NewRepo(t)
	node, img := testImage(t, r, 80)
	chunks, err := imageChunks(r, node, "img")
	if err != nil {
		t.Fatal(err)
	}
	zeros := 0
	for i, c := range chunks {
		data := img[c.off : c.off+int64(c.size)]
		if c.zero != !slices.ContainsFunc(data, func(b byte) bool { return b != 0 }) {
			t.Fatalf("chunk %d at %d: zero=%v", i, c.off, c.zero)
		}
		if c.zero {
			zeros++
		}
	}
	if zeros == 0 {
		t.Fatal("no zero chunk in the test image")
	}
	node.Size++
	if _, err := imageChunks(r, node, "img"); err == nil || !strings.Contains(err.Error(), "damaged tree") {
		t.Fatalf("a size beyond the chunks: %v", err)
	}
}
