package remote

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/floe-backup/floe/internal/storage"
)

// SaveStream implements storage.StreamSaver: a pack is written to a
// temporary file (so that memory holds no pack) and uploaded from it at
// Commit, when its name is known. The file makes the upload retriable.
func (b *Backend) SaveStream(ctx context.Context, t storage.FileType) (storage.PendingObject, error) {
	if err := storage.ValidateListType(t); err != nil {
		return nil, fmt.Errorf("save stream: %w", err)
	}
	f, err := os.CreateTemp(b.opts.SpoolDir, "floe-upload-*")
	if err != nil {
		return nil, fmt.Errorf("save stream: spool file: %w", err)
	}
	// unlinked at once: a crash leaves nothing behind, and the open file
	// stays readable for the upload
	os.Remove(f.Name())
	return &spooled{b: b, t: t, f: f}, nil
}

type spooled struct {
	b    *Backend
	t    storage.FileType
	f    *os.File
	n    int64
	done bool
}

func (s *spooled) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	s.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("write %s spool file: %w", s.t, err)
	}
	return n, nil
}

func (s *spooled) Commit(ctx context.Context, name string) error {
	defer s.Abort()
	h := storage.Handle{Type: s.t, Name: name}
	body := func() (io.ReadCloser, error) {
		return io.NopCloser(io.NewSectionReader(s.f, 0, s.n)), nil
	}
	return s.b.put(ctx, h, body, s.n)
}

func (s *spooled) Abort() {
	if s.done {
		return
	}
	s.done = true
	s.f.Close()
}
