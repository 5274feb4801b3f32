package mem

import (
	"bytes"
	"context"
	"testing"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend { return New() })
}

func TestSetGet(t *testing.T) {
	ctx := context.Background()
	b := New()
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("x")}
	if _, ok := b.Get(h); ok {
		t.Fatal("Get of missing object reports it present")
	}
	if err := b.Save(ctx, h, []byte("good")); err != nil {
		t.Fatal(err)
	}
	got, ok := b.Get(h)
	if !ok || string(got) != "good" {
		t.Fatalf("Get: %q, %v", got, ok)
	}
	got[0] = 'X'
	b.Set(h, []byte("bad!!"))
	data, err := b.Load(ctx, h, 0, 0)
	if err != nil || !bytes.Equal(data, []byte("bad!!")) {
		t.Fatalf("Load after Set: %q, %v", data, err)
	}
	fi, err := b.Stat(ctx, h)
	if err != nil || fi.Size != 5 {
		t.Fatalf("Stat after Set: %+v, %v", fi, err)
	}
	// Set plants new objects too.
	h2 := storage.Handle{Type: storage.Snapshot, Name: storagetest.Name("planted")}
	b.Set(h2, nil)
	if data, err := b.Load(ctx, h2, 0, 0); err != nil || len(data) != 0 {
		t.Fatalf("Load planted: %q, %v", data, err)
	}
}

func TestSetInvalidPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Set with an invalid handle did not panic")
		}
	}()
	New().Set(storage.Handle{Type: storage.Pack, Name: "../x"}, nil)
}
