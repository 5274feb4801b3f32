package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/floe-backup/floe/internal/storage"
)

// What minio-go does not retry, and this file does: a response body that
// breaks off (connection reset, server gone) after the status line was
// read. minio-go's retries end when a request got an answer; reading the
// body is up to the caller. Load and List are idempotent, so they resume
// where the body broke off. And 409 ConditionalRequestConflict, AWS's answer
// to a conditional write that raced another write of the same key, which
// AWS documents as "retry".

// maxAttempts bounds the resumptions of one Load or List, on top of
// minio-go's 10 retries of each request.
const maxAttempts = 5

// backoffUnit is the first wait of backoff (tests shorten it).
var backoffUnit = 250 * time.Millisecond

// backoff waits before attempt (0-based): 250ms, 500ms, 1s, 2s, 4s.
func backoff(ctx context.Context, attempt int) error {
	d := backoffUnit << min(attempt, 4)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// transient reports whether an error is worth another attempt: not a
// cancellation, not an answer of the server that will not change (4xx).
func transient(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	r := minio.ToErrorResponse(err)
	if r.StatusCode != 0 {
		return r.StatusCode >= 500 || r.StatusCode == http.StatusTooManyRequests ||
			r.StatusCode == http.StatusRequestTimeout
	}
	// A broken connection or body (io.ErrUnexpectedEOF, ECONNRESET,
	// net.Error, a truncated XML listing): the request can be made again.
	return true
}

func isConflict(err error) bool {
	r := minio.ToErrorResponse(err)
	return r.StatusCode == http.StatusConflict && r.Code != "BucketAlreadyOwnedByYou" && r.Code != "BucketAlreadyExists"
}

// retryConflict runs a conditional write again while it conflicts with
// another write of the same key in flight.
func retryConflict(ctx context.Context, f func() error) error {
	for attempt := 0; ; attempt++ {
		err := f()
		if !isConflict(err) || attempt+1 >= maxAttempts {
			return err
		}
		if err := backoff(ctx, attempt); err != nil {
			return err
		}
	}
}

// getRange reads length bytes at offset of key (length 0: to the end) with
// ranged GETs, resuming after a body that broke off. A resumed GET asks
// for the same ETag, so the pieces are of one object. A range that starts
// past the end returns errRangeNotSatisfiable; one that ends past the end,
// io.ErrUnexpectedEOF.
func (b *Backend) getRange(ctx context.Context, key string, offset, length int64) ([]byte, error) {
	var buf []byte // allocated at the first answer, when the size is known
	var got int64
	etag := ""
	for attempt := 0; ; attempt++ {
		start := offset + got
		var opts minio.GetObjectOptions
		switch {
		case length > 0:
			if err := opts.SetRange(start, offset+length-1); err != nil {
				return nil, err
			}
		case start > 0:
			if err := opts.SetRange(start, 0); err != nil {
				return nil, err
			}
		}
		if etag != "" {
			if err := opts.SetMatchETag(etag); err != nil {
				return nil, err
			}
		}
		body, oi, hdr, err := b.core.GetObject(ctx, b.cfg.Bucket, key, opts)
		if err != nil {
			r := minio.ToErrorResponse(err)
			switch {
			case (r.StatusCode == http.StatusRequestedRangeNotSatisfiable || r.Code == "InvalidRange") && buf == nil:
				return nil, errRangeNotSatisfiable
			case etag != "" && (r.StatusCode == http.StatusPreconditionFailed || r.Code == "PreconditionFailed"):
				return nil, fmt.Errorf("object changed while it was read")
			case transient(ctx, err) && attempt+1 < maxAttempts:
				if err := backoff(ctx, attempt); err != nil {
					return nil, err
				}
				continue
			}
			return nil, b.explain(err)
		}
		n, total, err := responseRange(hdr, oi.Size, start)
		if err == nil && start > 0 && hdr.Get("Content-Range") == "" {
			// The server ignored the range and sends the whole object.
			_, err = io.CopyN(io.Discard, body, start)
		}
		if err != nil {
			body.Close()
			return nil, err
		}
		if buf == nil {
			want := total - offset
			if length > 0 {
				if length > want {
					body.Close()
					return nil, fmt.Errorf("range %d+%d past end of %d-byte object: %w", offset, length, total, io.ErrUnexpectedEOF)
				}
				want = length
			}
			buf = make([]byte, want)
		}
		etag = oi.ETag
		k, rerr := io.ReadFull(body, buf[got:got+min(n, int64(len(buf))-got)])
		body.Close()
		got += int64(k)
		if got == int64(len(buf)) {
			return buf, nil
		}
		if rerr == nil {
			rerr = fmt.Errorf("server sent %d of %d bytes", got, len(buf))
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if attempt+1 >= maxAttempts {
			return nil, fmt.Errorf("read (%d attempts): %w", attempt+1, rerr)
		}
		if err := backoff(ctx, attempt); err != nil {
			return nil, err
		}
	}
}

// responseRange returns how many bytes from start a GET answer holds and
// the object's size.
func responseRange(hdr http.Header, contentLength, start int64) (n, total int64, err error) {
	cr := hdr.Get("Content-Range")
	if cr == "" {
		// 200: the whole object
		if contentLength < start {
			return 0, 0, fmt.Errorf("object of %d bytes is shorter than offset %d: %w", contentLength, start, io.ErrUnexpectedEOF)
		}
		return contentLength - start, contentLength, nil
	}
	first, last, total, ok := parseContentRange(cr)
	if !ok || first != start {
		return 0, 0, fmt.Errorf("server answered range from %d with Content-Range %q", start, cr)
	}
	return last - first + 1, total, nil
}

// listKeys calls fn for every key under prefix (with its size), in key
// order; recursive lists below "/" too. A listing that breaks off resumes
// after the last key seen, so fn sees each key once.
func (b *Backend) listKeys(ctx context.Context, prefix string, recursive bool, fn func(key string, size int64) error) error {
	after := ""
	for attempt := 0; ; attempt++ {
		lctx, cancel := context.WithCancel(ctx)
		var ferr, lerr error
		for oi := range b.client.ListObjectsIter(lctx, b.cfg.Bucket, minio.ListObjectsOptions{
			Prefix: prefix, Recursive: recursive, StartAfter: after}) {
			if oi.Err != nil {
				lerr = oi.Err
				break
			}
			if strings.HasSuffix(oi.Key, "/") || oi.Key <= after {
				continue // a common prefix ("directory"), or seen before
			}
			after = oi.Key
			if ferr = fn(oi.Key, oi.Size); ferr != nil {
				break
			}
		}
		cancel()
		switch {
		case ferr != nil:
			return ferr
		case lerr == nil:
			return ctx.Err()
		case transient(ctx, lerr) && attempt+1 < maxAttempts:
			if err := backoff(ctx, attempt); err != nil {
				return err
			}
		default:
			return b.explain(lerr)
		}
	}
}

// WholeObjectsCheaper tells readers of ranges (repo.BlobLoader) that a
// whole object costs the server less than a part of it (OpenStream says
// why), so that a range near a pack's start is asked for as the whole pack.
func (b *Backend) WholeObjectsCheaper() bool { return true }

var (
	_ storage.RangeStreamer        = (*Backend)(nil)
	_ storage.WholeObjectPreferrer = (*Backend)(nil)
)

// OpenStream returns the bytes of h from offset to its end as one GET's
// body, read as it arrives: a restore that needs most of a pack reads it
// with one request, and holds a blob at a time rather than the range.
// From offset 0 it asks for the whole object, which a server can answer
// from the file without copying it (versitygw sends a whole object with
// sendfile, a ranged one through buffers: 3x its CPU on a restore). A body
// that breaks off is not resumed: the caller falls back to ranged loads.
//
// length 0 reads to the end; else the body holds at most length bytes.
func (b *Backend) OpenStream(ctx context.Context, h storage.Handle, offset, length int64) (io.ReadCloser, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("open %s: %w", h, err)
	}
	if offset < 0 || offset > maxObjectSize || length < 0 || length > maxObjectSize {
		return nil, fmt.Errorf("open %s: invalid range %d+%d", h, offset, length)
	}
	key := b.key(h)
	for attempt := 0; ; attempt++ {
		var opts minio.GetObjectOptions
		switch {
		case length > 0:
			if err := opts.SetRange(offset, offset+length-1); err != nil {
				return nil, fmt.Errorf("open %s: %w", h, err)
			}
		case offset > 0:
			if err := opts.SetRange(offset, 0); err != nil {
				return nil, fmt.Errorf("open %s: %w", h, err)
			}
		}
		body, oi, hdr, err := b.core.GetObject(ctx, b.cfg.Bucket, key, opts)
		if err != nil {
			if transient(ctx, err) && attempt+1 < maxAttempts {
				if err := backoff(ctx, attempt); err != nil {
					return nil, fmt.Errorf("open %s: %w", h, err)
				}
				continue
			}
			return nil, fmt.Errorf("open %s: %w", h, b.explain(err))
		}
		_, _, err = responseRange(hdr, oi.Size, offset)
		if err == nil && offset > 0 && hdr.Get("Content-Range") == "" {
			// The server ignored the range and sends the whole object.
			_, err = io.CopyN(io.Discard, body, offset)
		}
		if err != nil {
			body.Close()
			return nil, fmt.Errorf("open %s: %w", h, err)
		}
		return body, nil
	}
}
