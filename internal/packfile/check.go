package packfile

import (
	"fmt"
	"io"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/ui"
)

// What a repository server needs to verify uploads without keys
// (docs/FORMAT.md "Packs", "Index files"): a server that tells clients it
// verifies uploads must refuse a pack with a blob that does not hash to
// its ID, and an index file with an entry whose bytes in the stored pack
// do not hash to its ID; otherwise clients would deduplicate against
// forged copies.

// CheckPack reads a whole pack of size bytes from r and returns an error
// unless it parses and every blob hashes to the ID its header gives.
func CheckPack(r io.ReaderAt, size int64) error {
	if size < 0 || size > 1<<40 {
		return fmt.Errorf("pack of %d bytes", size)
	}
	data := make([]byte, size)
	if _, err := r.ReadAt(data, 0); err != nil && !(err == io.EOF && size == 0) {
		return fmt.Errorf("read pack: %w", err)
	}
	_, bad, err := Verify(data)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s (first: %s blob %s)", ui.Count(len(bad), "blob does not hash to its ID", "blobs do not hash to their IDs"), bad[0].Type, bad[0].ID.Short())
	}
	return nil
}

// CheckIndex decodes an index file and checks every entry against the
// pack it names: load returns length bytes at offset of a stored pack. An
// entry whose bytes do not hash to its ID, or a pack that cannot be read,
// is an error. The signature is not checked (a server has no keys).
func CheckIndex(data []byte, load func(pack hash.ID, offset, length int64) ([]byte, error)) error {
	x, err := DecodeIndex(data)
	if err != nil {
		return err
	}
	for _, p := range x.Packs {
		for _, b := range p.Blobs {
			c, err := load(p.ID, int64(b.Offset), int64(b.Length))
			if err != nil {
				return fmt.Errorf("pack %s: %w", p.ID.Short(), err)
			}
			if BlobID(b.Type, c) != b.ID {
				return fmt.Errorf("pack %s: the %s blob %s it lists at offset %d does not hash to its ID", p.ID.Short(), b.Type, b.ID.Short(), b.Offset)
			}
		}
	}
	return nil
}
