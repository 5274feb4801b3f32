package repo

// Resolving ID prefixes of stored objects, blobs and key records (what a
// user types to name one), and their sizes.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// ResolvePrefix returns the ID of the object of type t (index, data,
// snapshots, gc) whose name starts with prefix. A missing object wraps
// storage.ErrNotExist.
func (r *Repository) ResolvePrefix(ctx context.Context, t storage.FileType, prefix string) (hash.ID, error) {
	if err := checkHexPrefix(prefix); err != nil {
		return hash.ID{}, err
	}
	return r.resolveName(ctx, t, prefix)
}

// resolveName returns the ID of the object of type t whose name starts
// with prefix.
func (r *Repository) resolveName(ctx context.Context, t storage.FileType, prefix string) (hash.ID, error) {
	ids, err := r.ListIDs(ctx, t)
	if err != nil {
		return hash.ID{}, err
	}
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = id.String()
	}
	sort.Strings(names)
	name, err := uniquePrefix(names, prefix, objectWhat(t))
	if err != nil {
		return hash.ID{}, err
	}
	return hash.Parse(name)
}

func objectWhat(t storage.FileType) string {
	switch t {
	case storage.Pack:
		return "pack"
	case storage.Index:
		return "index file"
	case storage.Snapshot:
		return "snapshot"
	case storage.Key:
		return "key"
	case storage.GCMark:
		return "gc mark"
	}
	return string(t)
}

func checkHexPrefix(prefix string) error {
	if prefix == "" {
		return errors.New("empty ID")
	}
	if len(prefix) > 2*hash.Size || strings.ContainsFunc(prefix, func(c rune) bool { return !strings.ContainsRune("0123456789abcdef", c) }) {
		return fmt.Errorf("%q is not an ID or a prefix of one (lower-case hex)", prefix)
	}
	return nil
}

// ResolveBlobPrefix returns the blob in the index whose ID starts with
// prefix. Types lists the blob types to consider (none: all). A missing
// blob wraps ErrBlobNotFound.
func (x *Index) ResolveBlobPrefix(prefix string, types ...BlobType) (BlobHandle, error) {
	if err := checkHexPrefix(prefix); err != nil {
		return BlobHandle{}, err
	}
	nb := (len(prefix) + 1) / 2
	x.mu.RLock()
	defer x.mu.RUnlock()
	var (
		match BlobHandle
		n     int
	)
	x.blobs.each(func(h BlobHandle, _ indexEntry) {
		if len(types) > 0 && !containsType(types, h.Type) {
			return
		}
		if strings.HasPrefix(hex.EncodeToString(h.ID[:nb]), prefix) {
			match = h
			n++
		}
	})
	switch n {
	case 0:
		return BlobHandle{}, fmt.Errorf("no blob with ID %q: %w", prefix, ErrBlobNotFound)
	case 1:
		return match, nil
	default:
		return BlobHandle{}, fmt.Errorf("blob ID prefix %q is ambiguous (%d matches); give more digits", prefix, n)
	}
}

func containsType(types []BlobType, t BlobType) bool {
	for _, x := range types {
		if x == t {
			return true
		}
	}
	return false
}

// LoadKeyRecord returns the ID and record of the key whose ID starts with
// prefix. The record holds only sealed secrets; it is safe to show.
func (r *Repository) LoadKeyRecord(ctx context.Context, prefix string) (string, *KeyRecord, error) {
	if err := checkHexPrefix(prefix); err != nil {
		return "", nil, err
	}
	ids, err := listKeyIDs(ctx, r.be)
	if err != nil {
		return "", nil, fmt.Errorf("list keys: %w", err)
	}
	id, err := uniquePrefix(ids, prefix, "key")
	if err != nil {
		return "", nil, err
	}
	rec, err := loadKeyRecord(ctx, r.be, id)
	if err != nil {
		return id, nil, err
	}
	return id, rec, nil
}

// PackSize returns the stored size of a pack.
func (r *Repository) PackSize(ctx context.Context, id hash.ID) (int64, error) {
	fi, err := r.be.Stat(ctx, storage.Handle{Type: storage.Pack, Name: id.String()})
	if err != nil {
		return 0, fmt.Errorf("pack %s: %w", id.Short(), err)
	}
	return fi.Size, nil
}
