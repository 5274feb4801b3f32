package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/floe-backup/floe/internal/storage"
)

// SaveStream implements storage.StreamSaver: the object is written to a
// temporary file in its type's directory and, at Commit, fsynced and linked
// into place under its final name without overwriting, like Save.
func (b *Backend) SaveStream(ctx context.Context, t storage.FileType) (storage.PendingObject, error) {
	if err := storage.ValidateListType(t); err != nil {
		return nil, fmt.Errorf("save stream: %w", err)
	}
	dir := filepath.Join(b.dir, string(t))
	f, err := os.CreateTemp(dir, TempPrefix+"*")
	if errors.Is(err, fs.ErrNotExist) {
		if merr := os.MkdirAll(dir, dirMode); merr != nil {
			return nil, fmt.Errorf("save stream: %w", diskErr(merr))
		}
		f, err = os.CreateTemp(dir, TempPrefix+"*")
	}
	if err != nil {
		return nil, fmt.Errorf("save stream: %w", diskErr(err))
	}
	p := &pendingFile{b: b, t: t, f: f}
	if b.direct {
		p.direct = newDirectStream(f)
	}
	return p, nil
}

type pendingFile struct {
	b    *Backend
	t    storage.FileType
	f    *os.File
	done bool
	// direct: with SetDirectIO, the writes go around the page cache
	// (nil: through it)
	direct *directStream
}

func (p *pendingFile) Write(data []byte) (int, error) {
	if p.direct != nil {
		if err := p.direct.write(data); err != nil {
			return 0, fmt.Errorf("write %s: %w", p.t, diskErr(err))
		}
		return len(data), nil
	}
	n, err := p.f.Write(data)
	if err != nil {
		return n, fmt.Errorf("write %s: %w", p.t, diskErr(err))
	}
	return n, nil
}

func (p *pendingFile) Commit(ctx context.Context, name string) (err error) {
	h := storage.Handle{Type: p.t, Name: name}
	defer func() {
		if err != nil {
			p.Abort()
			err = fmt.Errorf("save %s: %w", h, err)
		}
	}()
	if err := h.Validate(); err != nil {
		return err
	}
	if p.direct != nil {
		err := p.direct.finish()
		p.direct = nil
		if err != nil {
			return diskErr(err)
		}
	}
	if err := p.f.Sync(); err != nil {
		return diskErr(err)
	}
	if err := p.f.Close(); err != nil {
		return diskErr(err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	final := p.b.path(h)
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return diskErr(err)
	}
	if err := renameNoReplace(p.f.Name(), final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return storage.ErrExist
		}
		return diskErr(err)
	}
	p.done = true
	return syncDir(dir)
}

func (p *pendingFile) Abort() {
	if p.done {
		return
	}
	p.done = true
	if p.direct != nil {
		p.direct.abort()
		p.direct = nil
	}
	p.f.Close()
	os.Remove(p.f.Name())
}
