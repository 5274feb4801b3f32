package server

import (
	"context"
	"fmt"
	"io"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
)

// FormatVerifier is the UploadVerifier of repository format v2
// (docs/FORMAT.md "Packs", "Index files"), built on internal/packfile,
// which holds no keys: every blob of an uploaded pack must hash to the ID
// its header gives (streamed: memory is bounded by the header, not by the
// pack), and every entry of an uploaded index file must name bytes of a
// pack already stored that hash to the entry's ID. Clients upload packs
// before the index files that list them (internal/repo does), so an
// entry of a pack that does not exist is refused: otherwise a pack with
// other bytes at that offset could be uploaded later.
//
// With it, clients trust the index entries this server holds for
// deduplication without reading them back (storage.UploadVerifier). What
// it cannot check, holding no keys: signatures (only holders of the
// authority's public key can, and clients do), snapshot records, keys, gc
// marks, and that a blob's plaintext is what its key says.
type FormatVerifier struct{}

// VerifyUpload implements UploadVerifier.
func (FormatVerifier) VerifyUpload(ctx context.Context, be storage.Backend, h storage.Handle, data io.ReaderAt, size int64) error {
	switch h.Type {
	case storage.Pack:
		return packfile.CheckPack(data, size)
	case storage.Index:
		buf := make([]byte, size)
		if _, err := data.ReadAt(buf, 0); err != nil && !(err == io.EOF && size == 0) {
			return fmt.Errorf("read index file: %w", err)
		}
		return packfile.CheckIndex(buf, func(pack hash.ID) (io.ReaderAt, int64, error) {
			ph := storage.Handle{Type: storage.Pack, Name: pack.String()}
			fi, err := be.Stat(ctx, ph)
			if err != nil {
				if storage.IsNotExist(err) {
					return nil, 0, fmt.Errorf("not stored on this server (upload packs before the index file that lists them)")
				}
				return nil, 0, err
			}
			return &backendReader{ctx: ctx, be: be, h: ph}, fi.Size, nil
		})
	}
	return nil
}

// backendReader reads a stored object through ranged loads.
type backendReader struct {
	ctx context.Context
	be  storage.Backend
	h   storage.Handle
}

func (r *backendReader) ReadAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b, err := r.be.Load(r.ctx, r.h, off, int64(len(p)))
	n := copy(p, b)
	if err == nil && n < len(p) {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
