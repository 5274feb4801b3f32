// Package mem is an in-memory storage.Backend for tests of other packages.
// Set and Get let a test corrupt or inspect stored bytes.
package mem

import (
	"context"
	"fmt"
	"sync"

	"github.com/floe-backup/floe/internal/storage"
)

// Backend keeps objects in memory. It is safe for concurrent use.
type Backend struct {
	mu      sync.RWMutex
	objects map[storage.Handle][]byte
}

var _ storage.Backend = (*Backend)(nil)

// New returns an empty in-memory backend.
func New() *Backend {
	return &Backend{objects: map[storage.Handle][]byte{}}
}

// Location implements storage.Backend.
func (b *Backend) Location() string { return "mem" }

// Save implements storage.Backend.
func (b *Backend) Save(ctx context.Context, h storage.Handle, data []byte) error {
	if err := h.Validate(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.objects[h]; ok {
		return fmt.Errorf("save %s: %w", h, storage.ErrExist)
	}
	b.objects[h] = clone(data)
	return nil
}

// Load implements storage.Backend.
func (b *Backend) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	data, ok := b.objects[h]
	if !ok {
		return nil, fmt.Errorf("load %s: %w", h, storage.ErrNotExist)
	}
	n, err := storage.CheckRange(offset, length, int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	return clone(data[offset : offset+n]), nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, h storage.Handle) (storage.FileInfo, error) {
	if err := h.Validate(); err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	data, ok := b.objects[h]
	if !ok {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, storage.ErrNotExist)
	}
	return storage.FileInfo{Name: h.Name, Size: int64(len(data))}, nil
}

// List implements storage.Backend. fn runs without the lock held, so it may
// call the backend.
func (b *Backend) List(ctx context.Context, t storage.FileType, fn func(storage.FileInfo) error) error {
	if err := storage.ValidateListType(t); err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	b.mu.RLock()
	var infos []storage.FileInfo
	for h, data := range b.objects {
		if h.Type == t {
			infos = append(infos, storage.FileInfo{Name: h.Name, Size: int64(len(data))})
		}
	}
	b.mu.RUnlock()
	return storage.ListEach(ctx, t, infos, fn)
}

// Remove implements storage.Backend.
func (b *Backend) Remove(ctx context.Context, h storage.Handle) error {
	if err := h.Validate(); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.objects[h]; !ok {
		return fmt.Errorf("remove %s: %w", h, storage.ErrNotExist)
	}
	delete(b.objects, h)
	return nil
}

// Close implements storage.Backend. The objects stay readable.
func (b *Backend) Close() error { return nil }

// Set stores a copy of data under h, replacing any object there (for tests
// that corrupt or plant objects). It panics if h is not a valid handle,
// since such an object could never be loaded.
func (b *Backend) Set(h storage.Handle, data []byte) {
	if err := h.Validate(); err != nil {
		panic("mem.Set: " + err.Error())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.objects[h] = clone(data)
}

// Get returns a copy of the bytes stored under h and whether h exists.
func (b *Backend) Get(h storage.Handle) ([]byte, bool) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	data, ok := b.objects[h]
	if !ok {
		return nil, false
	}
	return clone(data), true
}

// clone copies data; the result is never nil, so empty objects load as
// empty, non-nil slices.
func clone(data []byte) []byte {
	return append(make([]byte, 0, len(data)), data...)
}
