package remote

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/floe-backup/floe/internal/storage"
)

// SaveStream implements storage.StreamSaver: a pack is held in memory
// (up to storage.SpoolMemory, beyond it in a temporary file, so that
// memory holds no large pack) and uploaded at Commit, when its name is
// known. The spool makes the upload retriable.
func (b *Backend) SaveStream(ctx context.Context, t storage.FileType) (storage.PendingObject, error) {
	if err := storage.ValidateListType(t); err != nil {
		return nil, fmt.Errorf("save stream: %w", err)
	}
	sp := storage.NewSpool(true, func() (*os.File, error) {
		f, err := os.CreateTemp(b.opts.SpoolDir, "floe-upload-*")
		if err != nil {
			return nil, err
		}
		// unlinked at once: a crash leaves nothing behind, and the
		// open file stays readable for the upload
		os.Remove(f.Name())
		return f, nil
	})
	return &spooled{b: b, t: t, sp: sp}, nil
}

type spooled struct {
	b    *Backend
	t    storage.FileType
	sp   *storage.Spool
	done bool
}

func (s *spooled) Write(p []byte) (int, error) {
	n, err := s.sp.Write(p)
	if err != nil {
		return n, fmt.Errorf("write %s spool file: %w", s.t, err)
	}
	return n, nil
}

func (s *spooled) Commit(ctx context.Context, name string) error {
	defer s.Abort()
	h := storage.Handle{Type: s.t, Name: name}
	n := s.sp.Size()
	body := func() (io.ReadCloser, error) {
		return io.NopCloser(io.NewSectionReader(s.sp, 0, n)), nil
	}
	return s.b.put(ctx, h, body, n)
}

func (s *spooled) Abort() {
	if s.done {
		return
	}
	s.done = true
	s.sp.Close()
}
