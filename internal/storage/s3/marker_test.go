package s3

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/s3/s3test"
)

// Markers live beside the layout under the prefix, are listed in key
// order, are never part of a type's listing, and cannot be put outside
// MarkerDir.
func TestMarkers(t *testing.T) {
	srv := s3test.Start(t)
	ctx := context.Background()
	b := newTestBackend(t, srv, "fleet/web1")
	keys := []string{
		MarkerDir + "/snapshots/bb/00000000000000000002-x",
		MarkerDir + "/snapshots/aa/00000000000000000001-y",
		MarkerDir + "/data/cc/00000000000000000003-z",
	}
	for _, k := range keys {
		if err := b.PutMarker(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := b.ListMarkers(ctx, MarkerDir+"/snapshots/", func(rel string) error { got = append(got, rel); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{keys[1], keys[0]}; !slices.Equal(got, want) {
		t.Errorf("markers %q, want %q", got, want)
	}
	if _, err := srv.Client().StatObject(ctx, b.cfg.Bucket, "fleet/web1/"+keys[2], minio.StatObjectOptions{}); err != nil {
		t.Errorf("marker not under the prefix: %v", err)
	}
	for _, typ := range []storage.FileType{storage.Snapshot, storage.Pack, storage.Index} {
		if err := b.List(ctx, typ, func(fi storage.FileInfo) error {
			t.Errorf("List(%s) returned marker %s", typ, fi.Name)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []string{"snapshots/aa", MarkerDir, MarkerDir + "//x", MarkerDir + "/a/../../config", "../" + MarkerDir + "/x"} {
		if err := b.PutMarker(ctx, bad); err == nil {
			t.Errorf("PutMarker(%q): no error", bad)
		}
	}
	if err := CheckBucket(ctx, b.cfg); err != nil {
		t.Errorf("CheckBucket of an existing bucket: %v", err)
	}
	cfg := b.cfg
	cfg.Bucket = "no-such-bucket-floe"
	if err := CheckBucket(ctx, cfg); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("CheckBucket of a missing bucket: %v", err)
	}
}
