package server

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
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
//
// It remembers the blobs of the packs it verified (up to
// maxRememberedBlobs entries, the oldest forgotten first): a client
// uploads an index file right after its packs, and an entry equal to one
// of a verified pack's header entries needs no second read and hash (a
// pack's name is the hash of its bytes, so what was verified under that
// name stays true). Other entries are read back from storage and hashed.
// Create it with NewFormatVerifier; it is safe for concurrent use.
type FormatVerifier struct {
	mu      sync.Mutex
	packs   map[hash.ID]map[packfile.Blob]bool
	order   []hash.ID // oldest first
	entries int
}

// maxRememberedBlobs bounds the memory of verified packs (~100 bytes an
// entry: about 13 MB; a 16 MiB pack of 1 MiB chunks has ~16 entries).
const maxRememberedBlobs = 1 << 17

// NewFormatVerifier returns the verifier of repository format v2.
func NewFormatVerifier() *FormatVerifier {
	return &FormatVerifier{packs: map[hash.ID]map[packfile.Blob]bool{}}
}

func (v *FormatVerifier) remember(pack hash.ID, blobs []packfile.Blob) {
	if len(blobs) > maxRememberedBlobs {
		return
	}
	set := make(map[packfile.Blob]bool, len(blobs))
	for _, b := range blobs {
		set[b] = true
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.packs[pack]; ok {
		return
	}
	for v.entries+len(set) > maxRememberedBlobs && len(v.order) > 0 {
		old := v.order[0]
		v.order = v.order[1:]
		v.entries -= len(v.packs[old])
		delete(v.packs, old)
	}
	v.packs[pack] = set
	v.order = append(v.order, pack)
	v.entries += len(set)
}

func (v *FormatVerifier) verified(pack hash.ID) func(packfile.Blob) bool {
	v.mu.Lock()
	set := v.packs[pack]
	v.mu.Unlock()
	if set == nil {
		return nil
	}
	return func(b packfile.Blob) bool { return set[b] }
}

// VerifyUpload implements UploadVerifier.
func (v *FormatVerifier) VerifyUpload(ctx context.Context, be storage.Backend, h storage.Handle, data io.ReaderAt, size int64) error {
	switch h.Type {
	case storage.Pack:
		blobs, bad, err := packfile.VerifyReader(data, size)
		if err != nil {
			return err
		}
		if len(bad) > 0 {
			return fmt.Errorf("bytes that do not hash to their IDs in %s (first: %s blob %s)", ui.Count(len(bad), "blob"), bad[0].Type, bad[0].ID.Short())
		}
		if id, err := hash.Parse(h.Name); err == nil {
			v.remember(id, blobs)
		}
		return nil
	case storage.Index:
		if size > packfile.MaxIndexLen {
			return fmt.Errorf("index file of %d bytes is more than the limit of %d bytes", size, packfile.MaxIndexLen)
		}
		buf := make([]byte, size)
		if _, err := data.ReadAt(buf, 0); err != nil && !(err == io.EOF && size == 0) {
			return fmt.Errorf("read index file: %w", err)
		}
		return packfile.CheckIndex(buf, func(pack hash.ID) (packfile.StoredPack, error) {
			// the pack must be stored in this repository, even if this
			// verifier saw it (in another repository, or removed since)
			ph := storage.Handle{Type: storage.Pack, Name: pack.String()}
			fi, err := be.Stat(ctx, ph)
			if err != nil {
				if storage.IsNotExist(err) {
					return packfile.StoredPack{}, fmt.Errorf("not stored on this server (upload packs before the index file that lists them)")
				}
				return packfile.StoredPack{}, err
			}
			return packfile.StoredPack{R: &backendReader{ctx: ctx, be: be, h: ph}, Size: fi.Size, Verified: v.verified(pack)}, nil
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

// VerifyPackBytes implements PackBytesVerifier: the pack's name and its
// blobs are hashed in one pass over data (packfile.VerifyAndSum).
func (v *FormatVerifier) VerifyPackBytes(h storage.Handle, data []byte) (hash.ID, error) {
	sum, blobs, bad, err := packfile.VerifyAndSum(data)
	if err != nil {
		return sum, err
	}
	if len(bad) > 0 {
		return sum, fmt.Errorf("bytes that do not hash to their IDs in %s (first: %s blob %s)", ui.Count(len(bad), "blob"), bad[0].Type, bad[0].ID.Short())
	}
	if sum.String() == h.Name {
		// only what was verified under its own name is remembered
		v.remember(sum, blobs)
	}
	return sum, nil
}
