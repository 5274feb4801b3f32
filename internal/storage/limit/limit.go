// Package limit caps the bandwidth of a storage.Backend: a token bucket
// for the bytes saved (upload) and one for the bytes loaded (download).
// One Limiter can be shared by several backends, so that a command that
// talks to two repositories (copy) stays within one limit in all.
package limit

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/floe-backup/floe/internal/storage"
)

// Limiter is a token bucket of bytes per second, safe for concurrent use:
// golang.org/x/time/rate's, with floe's policy around it. It starts empty
// and holds at most a quarter second of credit, so a transfer after a
// pause bursts little. A request larger than the bucket is paid in
// bucket-sized parts, one after the other, so the average rate never
// exceeds the limit however large the objects are (rate refuses a single
// request above its burst).
type Limiter struct {
	lim   *rate.Limiter
	burst int
	// passed counts the bytes let through, part by part as they are paid
	// for: a progress line shows data moving while a transfer of a
	// whole range or pack waits (Passed).
	passed atomic.Int64
}

// NewLimiter returns a limiter of bytesPerSecond, or nil (no limit) for
// bytesPerSecond <= 0. A nil *Limiter never waits.
func NewLimiter(bytesPerSecond int64) *Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	burst := int(min(max(bytesPerSecond/4, 1), math.MaxInt32))
	lim := rate.NewLimiter(rate.Limit(bytesPerSecond), burst)
	lim.AllowN(time.Now(), burst) // start empty
	return &Limiter{lim: lim, burst: burst}
}

// Rate returns the limit in bytes per second (0 for no limit).
func (l *Limiter) Rate() int64 {
	if l == nil {
		return 0
	}
	return int64(l.lim.Limit())
}

// Passed returns how many bytes the limiter let through so far (0 for a
// nil Limiter). It grows by at most a quarter second's worth at a time,
// so it moves while a large object is still being paid for: a restore
// that loads a 4 MiB range at 1 MiB/s shows bytes arriving rather than
// none for four seconds.
func (l *Limiter) Passed() int64 {
	if l == nil {
		return 0
	}
	return l.passed.Load()
}

// Wait blocks until n bytes may pass, or ctx ends (then its error is
// returned and the part not yet paid for is given back).
func (l *Limiter) Wait(ctx context.Context, n int) error {
	if l == nil || n <= 0 {
		return ctx.Err()
	}
	for n > 0 {
		part := min(n, l.burst)
		if err := l.lim.WaitN(ctx, part); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			// rate also refuses a wait that would outlast the
			// context's deadline; report it as the deadline
			return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
		}
		l.passed.Add(int64(part))
		n -= part
	}
	return ctx.Err()
}

// Backend is a storage.Backend whose Save waits for the upload limiter
// (before sending, for the size of the object) and whose Load waits for
// the download limiter (before reading a range of known length, else
// after reading, for the bytes read). Stat, List and Remove move little
// and are not limited.
type Backend struct {
	be       storage.Backend
	upload   *Limiter
	download *Limiter
}

// Wrap returns be limited by upload and download (either may be nil). With
// both nil it returns be itself. When be can stream saves
// (storage.StreamSaver), so can the result, and streamed objects wait for
// the upload limiter too: a limit does not make packs be held in memory.
// Other capabilities (storage.TempFiles, ...) are found beneath with
// storage.As.
func Wrap(be storage.Backend, upload, download *Limiter) storage.Backend {
	if upload == nil && download == nil {
		return be
	}
	b := &Backend{be: be, upload: upload, download: download}
	if ss, ok := storage.As[storage.StreamSaver](be); ok {
		return &streamBackend{Backend: b, ss: ss}
	}
	return b
}

// streamBackend is a Backend whose inner backend streams saves. It is a
// type of its own so that a limited backend claims StreamSaver only when
// the backend beneath has it.
type streamBackend struct {
	*Backend
	ss storage.StreamSaver
}

var _ storage.StreamSaver = (*streamBackend)(nil)

// SaveStream implements storage.StreamSaver. A streamed object is paid
// for at Commit, before it becomes visible, for every byte written: the
// mirror of Save, which pays before it sends (either way the average rate
// is the limit, in bursts of at most one object). Paying per Write instead
// would stall the writer, the repository's pack being filled, so reading
// and compressing the next pack would not overlap the wait (its commit runs
// in the repository's uploader).
func (b *streamBackend) SaveStream(ctx context.Context, t storage.FileType) (storage.PendingObject, error) {
	p, err := b.ss.SaveStream(ctx, t)
	if err != nil {
		return nil, err
	}
	return &limitedPending{PendingObject: p, t: t, upload: b.upload}, nil
}

type limitedPending struct {
	storage.PendingObject
	t       storage.FileType
	upload  *Limiter
	written int
}

func (p *limitedPending) Write(data []byte) (int, error) {
	n, err := p.PendingObject.Write(data)
	p.written += n
	return n, err
}

func (p *limitedPending) Commit(ctx context.Context, name string) error {
	if err := p.upload.Wait(ctx, p.written); err != nil {
		p.PendingObject.Abort()
		return fmt.Errorf("save %s: %w", storage.Handle{Type: p.t, Name: name}, err)
	}
	return p.PendingObject.Commit(ctx, name)
}

var _ storage.Backend = (*Backend)(nil)

// Unwrap returns the backend without limits (storage.Unwrapper).
func (b *Backend) Unwrap() storage.Backend { return b.be }

// Location implements storage.Backend.
func (b *Backend) Location() string { return b.be.Location() }

// Save implements storage.Backend.
func (b *Backend) Save(ctx context.Context, h storage.Handle, data []byte) error {
	if err := b.upload.Wait(ctx, len(data)); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	return b.be.Save(ctx, h, data)
}

// maxWaitBefore bounds the length Load pays for before reading, so that a
// bogus range fails at once instead of after a long wait.
const maxWaitBefore = 256 << 20

// Load implements storage.Backend.
func (b *Backend) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	if length > 0 && length <= maxWaitBefore {
		if err := b.download.Wait(ctx, int(length)); err != nil {
			return nil, fmt.Errorf("load %s: %w", h, err)
		}
		return b.be.Load(ctx, h, offset, length)
	}
	data, err := b.be.Load(ctx, h, offset, length)
	if err != nil {
		return nil, err
	}
	if err := b.download.Wait(ctx, len(data)); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	return data, nil
}

// LoadWhole implements storage.WholeLoader, so that storage.LoadAll
// through a limited backend pays for what it loads (it would otherwise
// find the capability of the backend beneath and bypass the limit).
func (b *Backend) LoadWhole(ctx context.Context, h storage.Handle, limit int64) ([]byte, error) {
	data, err := storage.LoadAll(ctx, b.be, h, limit)
	if err != nil {
		return nil, err
	}
	if err := b.download.Wait(ctx, len(data)); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	return data, nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, h storage.Handle) (storage.FileInfo, error) {
	return b.be.Stat(ctx, h)
}

// List implements storage.Backend.
func (b *Backend) List(ctx context.Context, t storage.FileType, fn func(storage.FileInfo) error) error {
	return b.be.List(ctx, t, fn)
}

// Remove implements storage.Backend.
func (b *Backend) Remove(ctx context.Context, h storage.Handle) error { return b.be.Remove(ctx, h) }

// Close implements storage.Backend.
func (b *Backend) Close() error { return b.be.Close() }
