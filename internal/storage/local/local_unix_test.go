//go:build unix

package local

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

func TestLoadNotRegular(t *testing.T) {
	b, dir := newRepo(t)
	name := storagetest.Name("fifo")
	p := filepath.Join(dir, "index", name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Skip("mkfifo:", err)
	}
	h := storage.Handle{Type: storage.Index, Name: name}
	done := make(chan error, 1)
	go func() {
		_, err := b.Load(context.Background(), h, 0, 0)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Load of a FIFO: no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Load of a FIFO blocks")
	}
	if _, err := b.Stat(context.Background(), h); err == nil {
		t.Error("Stat of a FIFO: no error")
	}
}

// OpenRange refuses what Load refuses (a FIFO, without blocking; a missing
// object as ErrNotExist) and reads ranges only inside the object.
func TestOpenRange(t *testing.T) {
	ctx := context.Background()
	b, dir := newRepo(t)
	name := storagetest.Name("obj")
	h := storage.Handle{Type: storage.Index, Name: name}
	if err := b.Save(ctx, h, []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	o, err := b.OpenRange(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.Size() != 10 {
		t.Fatalf("Size = %d", o.Size())
	}
	p := make([]byte, 4)
	if _, err := o.ReadAt(p, 3); err != nil || string(p) != "3456" {
		t.Fatalf("ReadAt(3) = %q, %v", p, err)
	}
	if _, err := o.ReadAt(p, 8); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("ReadAt past the end: err = %v", err)
	}
	if _, err := b.OpenRange(ctx, storage.Handle{Type: storage.Index, Name: storagetest.Name("missing")}); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("missing: err = %v", err)
	}
	fifo := storagetest.Name("fifo")
	if err := syscall.Mkfifo(filepath.Join(dir, "index", fifo), 0o600); err != nil {
		t.Skip("mkfifo:", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.OpenRange(ctx, storage.Handle{Type: storage.Index, Name: fifo})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("OpenRange of a FIFO: no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OpenRange of a FIFO blocks")
	}
}
