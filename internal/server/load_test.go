package server_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/remote"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

// Loads from a root directory are streamed a chunk at a time at aligned
// offsets (direct reads): every range, across chunk boundaries and at
// odd offsets, comes back exactly; a range past the end is refused
// before the answer starts.
func TestLoadRangesStreamed(t *testing.T) {
	repos, err := server.NewRootDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, repos, server.Options{AllowAnyName: true})
	tok := s.token(t, "r", "admin")
	ctx := context.Background()
	b, err := remote.Create(ctx, s.url+"/r", remote.Options{Token: tok, Fingerprint: s.fp, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	data := make([]byte, 3<<20+1234)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("streamed")}
	if err := b.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	size := int64(len(data))
	for _, r := range []struct{ off, n int64 }{
		{0, 0},                  // whole
		{0, 1},                  // one byte
		{1, 1 << 20},            // odd offset across a chunk boundary
		{4095, 4097},            // across a block boundary
		{1<<20 - 3, 2<<20 + 10}, // three chunks
		{size - 1234, 0},        // the partial block at the end
		{size - 5000, 5000},     // to the end, unaligned
		{2 << 20, 0},            // from a chunk boundary to the end
		{size, 0},               // nothing, at the end
	} {
		got, err := b.Load(ctx, h, r.off, r.n)
		want := data[r.off:]
		if r.n > 0 {
			want = want[:r.n]
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("Load(%d, %d): %d bytes, equal %v, %v", r.off, r.n, len(got), bytes.Equal(got, want), err)
		}
	}
	if _, err := b.Load(ctx, h, size-10, 11); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("Load past the end: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := b.Load(ctx, storage.Handle{Type: storage.Pack, Name: storagetest.Name("missing")}, 0, 0); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Load of a missing object: %v, want ErrNotExist", err)
	}
}
