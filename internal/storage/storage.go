// Package storage moves opaque bytes: save, load a range, stat, list, remove.
// It knows nothing of encryption or formats; every backend (local, s3, http,
// stdio) implements Backend and passes the conformance suite in storagetest.
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// FileType is the kind of object, which maps to a directory in the repository.
type FileType string

// The object kinds of docs/FORMAT.md.
const (
	Config   FileType = "config"
	Key      FileType = "keys"
	Pack     FileType = "data"
	Index    FileType = "index"
	Snapshot FileType = "snapshots"
	GCMark   FileType = "gc"
)

// AllTypes lists the types that hold many objects (all but Config).
var AllTypes = []FileType{Key, Pack, Index, Snapshot, GCMark}

// Handle names one object. Name is empty for Config.
type Handle struct {
	Type FileType
	Name string
}

// String returns "config" or "<type>/<name>". A name that is not valid is
// quoted, so that hostile names cannot garble messages.
func (h Handle) String() string {
	if h.Type == Config {
		if h.Name != "" {
			return "config/" + strconv.Quote(h.Name)
		}
		return "config"
	}
	typ := string(h.Type)
	if ValidateListType(h.Type) != nil {
		typ = strconv.Quote(typ)
	}
	if !validName(h.Name) {
		return typ + "/" + strconv.Quote(h.Name)
	}
	return typ + "/" + h.Name
}

// ErrInvalid is returned (wrapped) for a handle or file type that no object
// can have: an unknown type, a name that is not 64 lower-case hex digits, a
// Config handle with a name, or List of Config.
var ErrInvalid = errors.New("invalid object handle")

// NameLen is the length of every object name but Config's (an ID in hex).
const NameLen = 64

// validName reports whether name is 64 lower-case hex digits.
func validName(name string) bool {
	if len(name) != NameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Validate reports whether h can name an object: the Config handle has an
// empty name; every other type of AllTypes has a name of 64 lower-case hex
// digits. Every backend calls it before touching storage, so that no name can
// reach outside the repository. The error wraps ErrInvalid.
func (h Handle) Validate() error {
	switch h.Type {
	case Config:
		if h.Name != "" {
			return fmt.Errorf("%w: config has no name, got %q", ErrInvalid, h.Name)
		}
		return nil
	case Key, Pack, Index, Snapshot, GCMark:
		if !validName(h.Name) {
			return fmt.Errorf("%w: name %q of type %s is not %d lower-case hex digits",
				ErrInvalid, h.Name, h.Type, NameLen)
		}
		return nil
	default:
		return fmt.Errorf("%w: unknown type %q", ErrInvalid, string(h.Type))
	}
}

// ValidateListType reports whether List supports t: every type of AllTypes.
// List(Config) is not supported (there is one config; use Stat); the error
// wraps ErrInvalid.
func ValidateListType(t FileType) error {
	switch t {
	case Key, Pack, Index, Snapshot, GCMark:
		return nil
	case Config:
		return fmt.Errorf("%w: cannot list config (use Stat)", ErrInvalid)
	default:
		return fmt.Errorf("%w: unknown type %q", ErrInvalid, string(t))
	}
}

// ListEach hands the infos a backend gathered for List to fn, one by one,
// stopping at the first error of fn or when ctx ends; errors say which
// list failed, as List's must.
func ListEach(ctx context.Context, t FileType, infos []FileInfo, fn func(FileInfo) error) error {
	for _, fi := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %s: %w", t, err)
		}
		if err := fn(fi); err != nil {
			return fmt.Errorf("list %s: %w", t, err)
		}
	}
	return nil
}

// CheckRange validates a Load range against an object of the given size and
// returns the number of bytes to read. Negative offset or length is an
// ErrInvalid error; a range that ends past size wraps io.ErrUnexpectedEOF.
// Length 0 means from offset to the end (offset == size gives 0 bytes).
func CheckRange(offset, length, size int64) (int64, error) {
	if offset < 0 || length < 0 {
		return 0, fmt.Errorf("%w: negative range offset %d length %d", ErrInvalid, offset, length)
	}
	if offset > size {
		return 0, fmt.Errorf("offset %d past end of %d-byte object: %w", offset, size, io.ErrUnexpectedEOF)
	}
	if length == 0 {
		return size - offset, nil
	}
	if length > size-offset {
		return 0, fmt.Errorf("range %d+%d past end of %d-byte object: %w", offset, length, size, io.ErrUnexpectedEOF)
	}
	return length, nil
}

// FileInfo describes a stored object.
type FileInfo struct {
	Name string
	Size int64
}

// ErrNotExist is returned (wrapped) when an object does not exist.
var ErrNotExist = errors.New("object does not exist")

// NotExist returns an error that is ErrNotExist (errors.Is) but says only
// msg, for messages that explain the absence themselves ("no repository at
// /srv/backup: the directory does not exist") and would read badly with
// ": object does not exist" after them.
func NotExist(msg string) error { return notExistError(msg) }

type notExistError string

func (e notExistError) Error() string        { return string(e) }
func (e notExistError) Is(target error) bool { return target == ErrNotExist }

// ErrExist is returned (wrapped) by Save when the object already exists.
// Objects are immutable: a writer never overwrites.
var ErrExist = errors.New("object already exists")

// ErrDenied is returned (wrapped) when the storage refuses an operation to
// this client's credential (a floe server token whose role does not allow
// it, or an unknown token). It says nothing about the object: callers that
// skip damaged objects and go on must stop on it.
var ErrDenied = errors.New("access denied by the storage")

// Backend is the storage interface. Implementations must be safe for
// concurrent use.
type Backend interface {
	// Location describes the backend for messages (never with credentials).
	Location() string
	// Save stores data under h atomically: readers see all of it or nothing.
	// It fails with ErrExist if h exists.
	Save(ctx context.Context, h Handle, data []byte) error
	// Load returns length bytes at offset of h; length 0 means to the end.
	// Reading past the end is an error (io.ErrUnexpectedEOF wrapped);
	// negative values are ErrInvalid. See CheckRange.
	Load(ctx context.Context, h Handle, offset, length int64) ([]byte, error)
	// Stat returns the size of h.
	Stat(ctx context.Context, h Handle) (FileInfo, error)
	// List calls fn for every object of type t, in no particular order.
	// Only names that Validate accepts are reported (temporary files and
	// strays are skipped). fn may call the backend. An error from fn stops
	// List and is returned wrapped. List(Config) fails with ErrInvalid.
	List(ctx context.Context, t FileType, fn func(FileInfo) error) error
	// Remove deletes h. Removing a missing object returns ErrNotExist.
	Remove(ctx context.Context, h Handle) error
	// Close releases resources.
	Close() error
}

// Every method but Location and Close checks its handle with Handle.Validate
// (or ValidateListType) first and fails with a wrapped ErrInvalid. Errors name
// the operation and handle, e.g. "load data/ab12...: object does not exist".

// IsNotExist reports whether err says an object is missing.
func IsNotExist(err error) bool { return errors.Is(err, ErrNotExist) }

// ReadAll loads the whole object h. Backend errors already name the handle.
// It allocates whatever the object holds: use LoadAll for anything whose
// size the storage controls.
func ReadAll(ctx context.Context, b Backend, h Handle) ([]byte, error) {
	return b.Load(ctx, h, 0, 0)
}

// ErrTooLarge is returned (wrapped) by LoadAll for an object larger than the
// limit of its kind: no valid object is that large, and reading it could
// exhaust memory (a sparse file of 200 GB costs the storage nothing).
var ErrTooLarge = errors.New("object is too large")

// LoadAll loads the whole object h if it holds at most limit bytes. The
// size is checked with Stat before anything is read, and the read asks for
// exactly that many bytes, so neither a huge object nor one that grows
// between the two calls can make it allocate more than limit. The error for
// a larger object names h and the limit and wraps ErrTooLarge.
//
// A backend that is a WholeLoader loads it in one request instead.
func LoadAll(ctx context.Context, b Backend, h Handle, limit int64) ([]byte, error) {
	if wl, ok := As[WholeLoader](b); ok {
		return wl.LoadWhole(ctx, h, limit)
	}
	fi, err := b.Stat(ctx, h)
	if err != nil {
		return nil, err
	}
	if fi.Size > limit || fi.Size < 0 {
		return nil, TooLargeError(h, fi.Size, limit)
	}
	if fi.Size == 0 {
		// Load's length 0 means "to the end": never ask a backend that.
		return []byte{}, nil
	}
	data, err := b.Load(ctx, h, 0, fi.Size)
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != fi.Size {
		return nil, fmt.Errorf("load %s: got %d bytes, want %d: %w", h, len(data), fi.Size, io.ErrUnexpectedEOF)
	}
	return data, nil
}

// TooLargeError is LoadAll's error for an object h of size bytes, above
// limit.
func TooLargeError(h Handle, size, limit int64) error {
	return fmt.Errorf("load %s: %d bytes is more than the limit of %d bytes for %s: %w",
		h, size, limit, h.Type.describe(), ErrTooLarge)
}

// describe names the kind of object for messages.
func (t FileType) describe() string {
	switch t {
	case Config:
		return "the config"
	case Key:
		return "a key"
	case Pack:
		return "a pack"
	case Index:
		return "an index file"
	case Snapshot:
		return "a snapshot record"
	case GCMark:
		return "a gc mark"
	}
	return "an object of type " + strconv.Quote(string(t))
}
