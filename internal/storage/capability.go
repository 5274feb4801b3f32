package storage

import (
	"context"
	"io"
	"time"
)

// Optional capabilities. A backend implements Backend and, where it can,
// some of the interfaces below; callers find them with As, never with an
// ad-hoc interface of their own, so that each capability is declared once
// and a wrapper (bandwidth limits, ...) does not hide it.
//
// Wrappers implement Unwrapper. A wrapper that changes how a capability
// behaves implements that capability itself (the limiter counts streamed
// bytes, so it implements StreamSaver); one that leaves a capability alone
// need not forward it: As finds it on the backend beneath.

// Unwrapper is implemented by backends that wrap another one, like
// errors.Unwrap for errors.
type Unwrapper interface {
	Unwrap() Backend
}

// As returns the first backend in be's chain of wrappers (be, then what
// Unwrap returns, and so on) that implements the capability T.
func As[T any](be Backend) (T, bool) {
	for be != nil {
		if c, ok := be.(T); ok {
			return c, true
		}
		u, ok := be.(Unwrapper)
		if !ok {
			break
		}
		be = u.Unwrap()
	}
	var zero T
	return zero, false
}

// PendingObject is an object being written piece by piece (StreamSaver).
type PendingObject interface {
	io.Writer
	// Commit makes the object durable under name, atomically and without
	// overwriting (ErrExist); the object is invisible until then.
	Commit(ctx context.Context, name string) error
	// Abort discards what was written. It is a no-op after Commit.
	Abort()
}

// StreamSaver is implemented by backends that can store an object written
// incrementally and named at the end, so that packs (named by the hash of
// their bytes) need not be held in memory while they fill.
type StreamSaver interface {
	SaveStream(ctx context.Context, t FileType) (PendingObject, error)
}

// TempFiles is implemented by backends that write objects through
// temporary files (the local backend), which a crash or kill can leave
// behind. check reports them; prune removes old ones.
type TempFiles interface {
	// LeftoverTempFiles lists the temporary files older than an hour (a
	// writer still filling one is younger), as paths for messages.
	LeftoverTempFiles() ([]string, error)
	// RemoveTempFiles deletes the temporary files older than age and
	// returns how many and their total size.
	RemoveTempFiles(age time.Duration) (n int, size int64, err error)
}

// WholeLoader is implemented by backends that load a whole object in one
// request and learn its size before reading its bytes (a floe server
// sends Content-Length first), so they can refuse one above a limit
// without allocating it: LoadAll then needs no Stat first, one round trip
// fewer for each key, index file and snapshot a command reads. The error
// for a larger object is TooLargeError's.
type WholeLoader interface {
	LoadWhole(ctx context.Context, h Handle, limit int64) ([]byte, error)
}

// ConnectionsHint is implemented by backends whose round trips are slow
// (object stores, the floe server), to raise how many loads and saves run
// at once by default. An explicit setting (--connections) still wins.
type ConnectionsHint interface {
	// Connections is how many requests the backend serves well at once.
	Connections() int
}

// ParallelSaver is implemented by backends that spread requests over
// several connections of their own (the floe server's client: TCP
// connections for https://, ssh processes for ssh://; --connections), so
// that several whole objects (packs) are best saved at once.
type ParallelSaver interface {
	// ParallelSaves is how many saves to run at once.
	ParallelSaves() int
}

// Connections returns how many loads and saves to run at once on the
// backends bes by default: def, or the largest hint of any of them if
// that is more.
func Connections(def int, bes ...Backend) int {
	n := def
	for _, be := range bes {
		if h, ok := As[ConnectionsHint](be); ok {
			n = max(n, h.Connections())
		}
	}
	return n
}

// UploadVerifier is implemented by backends that check every blob of an
// uploaded pack against its ID before storing it (the floe server will,
// with internal/packfile). Index entries read from such a backend are
// trusted for deduplication without a client-side check.
type UploadVerifier interface {
	VerifiesUploads() bool
}

// VerifiesUploads reports whether be, or a backend it wraps, verifies
// uploads.
func VerifiesUploads(be Backend) bool {
	v, ok := As[UploadVerifier](be)
	return ok && v.VerifiesUploads()
}

// Origin is who stored an object and when the storage received it, as the
// storage itself recorded it (not as the object claims).
type Origin struct {
	// Host is the host name of the credential that uploaded the object,
	// Credential its id (a floe server token id, or "ssh").
	Host       string
	Credential string
	// Received is when the storage received the object.
	Received time.Time
}

// Origins is implemented by backends that know who stored each object
// (the floe server's client: the server records every upload's
// credential).
type Origins interface {
	// Origins returns the origin of the objects of type t that have a
	// record; objects stored before records were kept have none.
	Origins(ctx context.Context, t FileType) (map[string]Origin, error)
}

// RangeOpener is implemented by backends that can open an object once and
// read ranges of it into the caller's buffers (the local backend): restore
// reads hundreds of blobs from one pack, and a file open, a stat and a fresh
// buffer for each of them were most of its system time.
//
// Callers look for it on the backend itself, not with As: a wrapper that
// meters or limits loads (limit.Backend) must not be bypassed, and it hides
// the capability simply by not implementing it.
type RangeOpener interface {
	OpenRange(ctx context.Context, h Handle) (ObjectReader, error)
}

// RangeStreamer is implemented by remote backends that read a range of an
// object as the body of one request, read as it arrives (s3, the floe
// server's client): a restore (repo.BlobLoader.LoadRange) then decodes
// each blob of a pack as soon as it is in and holds one at a time. The
// body ends in an error wrapping io.ErrUnexpectedEOF when the object ends
// before the range does.
//
// Callers look for it on the backend itself, as for RangeOpener: a limited
// backend (limit.Backend) does not stream its loads, so they go through
// its metered Load.
type RangeStreamer interface {
	OpenStream(ctx context.Context, h Handle, offset, length int64) (io.ReadCloser, error)
}

// WholeObjectPreferrer is implemented by a RangeStreamer that sends a
// whole object for less than a part of it (s3: versitygw answers a
// whole-object GET with sendfile, a ranged one through buffers), so that a
// range that starts near an object's beginning is asked for whole.
type WholeObjectPreferrer interface {
	WholeObjectsCheaper() bool
}

// ObjectReader reads ranges of one stored object.
type ObjectReader interface {
	// ReadAt fills p from offset off; a range past the end is an error
	// wrapping io.ErrUnexpectedEOF.
	ReadAt(p []byte, off int64) (int, error)
	Size() int64
	Close() error
}
