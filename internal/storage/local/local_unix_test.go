//go:build unix

package local

import (
	"context"
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
