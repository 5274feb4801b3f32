// Package backuptest makes snapshots for the tests of packages above
// backup. It is apart from testutil because backup's own tests use
// testutil, and a test helper that imports backup would make a cycle.
package backuptest

import (
	"context"
	"testing"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Backup runs a backup and fails the test on any error, files included.
func Backup(t testing.TB, r *repo.Repository, opts backup.Options) *snapshot.Record {
	t.Helper()
	res, err := backup.Run(context.Background(), r, opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) > 0 {
		t.Fatalf("backup errors: %v", res.Errors)
	}
	return &snapshot.Record{ID: res.ID, Snapshot: res.Snapshot}
}
