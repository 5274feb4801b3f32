package s3

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/minio/minio-go/v7"

	"github.com/floe-backup/floe/internal/storage"
)

// Markers are empty objects beside a repository's layout, under
// PREFIX/.floe-*: a floe server whose repositories are prefixes of a
// bucket keeps its upload journal there (docs/PROTOCOL.md "Who wrote
// what"), so that several servers in front of one bucket agree. What a
// marker records is in its key, so that one listing reads them all.
// List never returns them: no object type's directory starts with a dot.

// MarkerDir is the only top-level name markers may live under.
const MarkerDir = ".floe-uploads"

func checkMarker(rel string) error {
	if !strings.HasPrefix(rel, MarkerDir+"/") || strings.Contains(rel, "//") || strings.Contains(rel, "/../") || len(rel) > 900 {
		return fmt.Errorf("marker %q: not a key under %s/", rel, MarkerDir)
	}
	return nil
}

// PutMarker stores an empty object at PREFIX/rel (rel under MarkerDir/).
func (b *Backend) PutMarker(ctx context.Context, rel string) error {
	if err := checkMarker(rel); err != nil {
		return err
	}
	// minio-go retries the request itself
	if _, err := b.client.PutObject(ctx, b.cfg.Bucket, b.prefixed(rel), bytes.NewReader(nil), 0, minio.PutObjectOptions{}); err != nil {
		return fmt.Errorf("save marker %s: %w", rel, b.explain(err))
	}
	return nil
}

// ListMarkers calls fn with the key, relative to the repository's prefix,
// of every object under PREFIX/relPrefix (relPrefix under MarkerDir/), in
// key order.
func (b *Backend) ListMarkers(ctx context.Context, relPrefix string, fn func(rel string) error) error {
	if err := checkMarker(relPrefix); err != nil {
		return err
	}
	top := b.prefixed("")
	err := b.listKeys(ctx, b.prefixed(relPrefix), true, func(key string, _ int64) error {
		return fn(strings.TrimPrefix(key, top))
	})
	if err != nil {
		return fmt.Errorf("list markers %s: %w", relPrefix, err)
	}
	return nil
}

// CheckBucket tells whether cfg's bucket exists and answers with these
// credentials: floe serve --storage checks it before it serves.
func CheckBucket(ctx context.Context, cfg Config) error {
	b, err := newBackend(cfg)
	if err != nil {
		return err
	}
	defer b.Close()
	ok, err := b.client.BucketExists(ctx, cfg.Bucket)
	if isAccessDenied(err) {
		// credentials for the repositories' objects only: the first
		// request shows whether the bucket is there
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage %s: %w", b.loc, b.explain(err))
	}
	if !ok {
		return fmt.Errorf("storage %s: bucket %q does not exist: %w", b.loc, cfg.Bucket, storage.ErrNotExist)
	}
	return nil
}
