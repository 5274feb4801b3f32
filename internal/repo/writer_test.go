package repo

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// A Writer's blobs count as present while it runs; Abort indexes the
// packs that reached storage and drops the open one (what an interrupted
// backup or copy leaves), Finish stores everything, and neither Writer
// takes blobs afterwards.
func TestWriterLifetime(t *testing.T) {
	for _, streamed := range []bool{true, false} {
		t.Run(fmt.Sprintf("streamed=%v", streamed), func(t *testing.T) {
			ctx := context.Background()
			r, be := newSmallPackRepo(t, streamed)
			w := r.StartWriting()
			var refs []hash.Ref
			// the first two are stored (in one pack when streamed, else
			// rotated before the buffer would grow: two), the third
			// stays in the open pack
			for range 3 {
				data := randomBytes(600 << 10)
				ref, isNew, _, err := w.SaveBlob(ctx, DataBlob, r.BlobKey(data), data)
				if err != nil || !isNew {
					t.Fatalf("SaveBlob: new=%v %v", isNew, err)
				}
				if !r.HasBlob(BlobHandle{DataBlob, ref.ID}) {
					t.Fatal("a blob pending in a Writer is not reported by HasBlob")
				}
				refs = append(refs, ref)
			}
			if err := w.Abort(ctx); err != nil {
				t.Fatal(err)
			}
			wantPacks := uint64(1)
			if !streamed {
				wantPacks = 2
			}
			if st := w.Stats(); st.Blobs != 2 || st.Packs != wantPacks {
				t.Fatalf("after Abort: %+v, want the 2 blobs of the %d stored pack(s)", st, wantPacks)
			}
			if r.HasBlob(BlobHandle{DataBlob, refs[2].ID}) {
				t.Fatal("a blob of the dropped open pack is still reported present")
			}
			if _, _, _, err := w.SaveBlob(ctx, DataBlob, hash.ID{}, []byte("late")); !errors.Is(err, ErrWriterEnded) {
				t.Fatalf("SaveBlob after Abort: %v, want ErrWriterEnded", err)
			}
			r2 := reopen(t, be)
			for i, ref := range refs {
				if has := r2.HasBlob(BlobHandle{DataBlob, ref.ID}); has != (i < 2) {
					t.Fatalf("blob %d in the index after Abort: %v", i, has)
				}
			}

			w2 := r2.StartWriting()
			data := randomBytes(1000)
			if _, isNew, _, err := w2.SaveBlob(ctx, DataBlob, r2.BlobKey(data), data); err != nil || !isNew {
				t.Fatalf("SaveBlob: new=%v %v", isNew, err)
			}
			if err := w2.Finish(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := w2.SaveRawBlob(ctx, DataBlob, StoredBlobID(DataBlob, nil), nil, 0, true); !errors.Is(err, ErrWriterEnded) {
				t.Fatalf("SaveRawBlob after Finish: %v, want ErrWriterEnded", err)
			}
			if err := w2.Finish(ctx); err != nil {
				t.Fatalf("a second Finish: %v", err)
			}
			if got := r2.SavedStats(); got.Blobs != 1 || got.Packs != 1 {
				t.Fatalf("SavedStats = %+v", got)
			}
			n := 0
			be.List(ctx, storage.Pack, func(storage.FileInfo) error { n++; return nil })
			if uint64(n) != wantPacks+1 {
				t.Fatalf("%d packs stored, want %d", n, wantPacks+1)
			}
		})
	}
}
