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
	ctx := context.Background()
	b, h, data := savedPack(t, func(i int) byte { return byte(i*7 + i>>12) })
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

// OpenStream reads the same ranges as Load, as a body read as it comes,
// in pieces of any size; what the server refuses is refused before a
// body is handed out.
func TestOpenStreamRanges(t *testing.T) {
	ctx := context.Background()
	b, h, data := savedPack(t, func(i int) byte { return byte(i*13 + i>>11) })
	size := int64(len(data))
	for _, r := range []struct{ off, n int64 }{{0, 0}, {0, 1}, {1, 1 << 20}, {4095, 4097}, {size - 5000, 0}, {size, 0}} {
		body, err := b.OpenStream(ctx, h, r.off, r.n)
		if err != nil {
			t.Fatalf("OpenStream(%d, %d): %v", r.off, r.n, err)
		}
		// small reads, as a restore takes a blob at a time
		var got []byte
		buf := make([]byte, 777)
		for {
			n, err := body.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("OpenStream(%d, %d): read: %v", r.off, r.n, err)
			}
		}
		body.Close()
		want := data[r.off:]
		if r.n > 0 {
			want = want[:r.n]
		}
		if !bytes.Equal(got, want) {
			t.Errorf("OpenStream(%d, %d): %d bytes, want %d", r.off, r.n, len(got), len(want))
		}
	}
	// closed before its end: the connection serves the next request
	body, err := b.OpenStream(ctx, h, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	body.Close()
	if _, err := body.Read(make([]byte, 1)); err == nil {
		t.Error("a read after Close: no error")
	}
	if _, err := b.OpenStream(ctx, h, size-10, 11); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("OpenStream past the end: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := b.OpenStream(ctx, storage.Handle{Type: storage.Pack, Name: storagetest.Name("missing")}, 0, 0); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("OpenStream of a missing object: %v, want ErrNotExist", err)
	}
	if _, err := b.OpenStream(ctx, h, -1, 0); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("OpenStream at a negative offset: %v, want ErrInvalid", err)
	}
	if got, err := b.Load(ctx, h, 5, 10); err != nil || !bytes.Equal(got, data[5:15]) {
		t.Errorf("Load after the streams: %v", err)
	}
}

// savedPack starts a server over a root directory and saves, as an admin
// client, a pack of 3 MiB and a bit (more than a load chunk, not a
// multiple of a block) whose byte i is fill(i).
func savedPack(t *testing.T, fill func(int) byte) (*remote.Backend, storage.Handle, []byte) {
	t.Helper()
	repos, err := server.NewRootDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, repos, server.Options{AllowAnyName: true})
	tok := s.token(t, "r", "admin")
	b, err := remote.Create(context.Background(), s.url+"/r", remote.Options{Token: tok, Fingerprint: s.fp, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	data := make([]byte, 3<<20+1234)
	for i := range data {
		data[i] = fill(i)
	}
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("streamed")}
	if err := b.Save(context.Background(), h, data); err != nil {
		t.Fatal(err)
	}
	return b, h, data
}
