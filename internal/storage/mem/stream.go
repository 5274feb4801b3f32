package mem

import (
	"bytes"
	"context"
	"fmt"

	"github.com/floe-backup/floe/internal/storage"
)

// SaveStream implements storage.StreamSaver (collecting the bytes), so that
// tests on the in-memory backend exercise the same path as local storage.
func (b *Backend) SaveStream(ctx context.Context, t storage.FileType) (storage.PendingObject, error) {
	if err := storage.ValidateListType(t); err != nil {
		return nil, fmt.Errorf("save stream: %w", err)
	}
	return &pending{b: b, t: t}, nil
}

type pending struct {
	b    *Backend
	t    storage.FileType
	buf  bytes.Buffer
	done bool
}

func (p *pending) Write(data []byte) (int, error) { return p.buf.Write(data) }

func (p *pending) Commit(ctx context.Context, name string) error {
	if p.done {
		return fmt.Errorf("save stream: committed or aborted already")
	}
	p.done = true
	return p.b.Save(ctx, storage.Handle{Type: p.t, Name: name}, p.buf.Bytes())
}

func (p *pending) Abort() { p.done = true; p.buf = bytes.Buffer{} }
