//go:build linux

package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/floe-backup/floe/internal/storage/s3/s3test"
	"github.com/floe-backup/floe/internal/testutil"
)

// Two `floe serve --storage` processes in front of one bucket, sharing a
// state directory (tokens, certificate): a host backs up through one and
// the other, an admin restores, lists and checks through either, and
// both agree on who uploaded what, because the upload records are marker
// objects in the bucket, not in either server. The client needs no S3
// credentials; the objects are where docs/FORMAT.md puts them, under
// PREFIX/REPO.
func TestServeOnS3(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	e := newEnv(t)
	bucket := srv.NewBucket(t)
	storage := srv.URL(bucket, "floe")
	addSecret(srv.SecretKey)
	state := e.mkdir("state")

	// the servers get the S3 credentials; the hosts do not
	serverEnv := e.env
	e.env = append(append([]string{}, e.env...), srv.Env()...)
	a := e.startStorageServer(storage, state, freePort(t))
	b := e.startStorageServer(storage, state, freePort(t))
	e.env = serverEnv
	if a.fingerprint != b.fingerprint {
		t.Fatalf("servers sharing a state directory show different certificates: %s, %s", a.fingerprint, b.fingerprint)
	}
	admin := a.token("fleet", "admin", "admin")
	web1 := a.token("fleet", "web1", "backup")
	expectCode(t, a.remote("fleet", admin, "--password-file", e.pwFile, "init"), 0)
	key := a.writeOnlyKey(admin, "wo.key")

	src := e.mkdir("src")
	testutil.WriteFile(t, filepath.Join(src, "a.txt"), []byte(strings.Repeat("floe on s3\n", 5000)))
	testutil.WriteFile(t, filepath.Join(src, "b.bin"), testutil.RandomBytes(7, 3<<20))
	expectCode(t, a.remote("fleet", web1, "--key-file", key, "--no-cache", "backup", src), 0)
	testutil.WriteFile(t, filepath.Join(src, "c.txt"), []byte("the second backup, through the other server\n"))
	expectCode(t, b.remote("fleet", web1, "--key-file", key, "--no-cache", "backup", src), 0)

	ctx := context.Background()
	if _, err := srv.Client().StatObject(ctx, bucket, "floe/fleet/config", minio.StatObjectOptions{}); err != nil {
		t.Errorf("no config object at floe/fleet/config: %v", err)
	}
	markers := 0
	for oi := range srv.Client().ListObjectsIter(ctx, bucket, minio.ListObjectsOptions{Prefix: "floe/fleet/.floe-uploads/snapshots/", Recursive: true}) {
		if oi.Err != nil {
			t.Fatal(oi.Err)
		}
		markers++
	}
	if markers != 2 {
		t.Errorf("%d upload records of snapshots in the bucket, want 2", markers)
	}

	// both servers know who uploaded each snapshot
	type snapUp struct {
		snapshotOut
		Uploader *struct{ Host, Credential string }
	}
	for name, s := range map[string]*floeServer{"a": a, "b": b} {
		snaps := decodeJSON[struct{ Snapshots []snapUp }](t, s.remote("fleet", admin, "--password-file", e.pwFile, "snapshots", "--json")).Snapshots
		if len(snaps) != 2 {
			t.Fatalf("server %s lists %d snapshots, want 2", name, len(snaps))
		}
		for _, sn := range snaps {
			if sn.Uploader == nil || sn.Uploader.Host != "web1" {
				t.Errorf("server %s: snapshot %.8s uploaded by %+v, want web1", name, sn.ID, sn.Uploader)
			}
		}
	}

	dst := e.path("restored")
	expectCode(t, b.remote("fleet", admin, "--password-file", e.pwFile, "restore", "latest", "--target", dst), 0)
	testutil.CompareTrees(t, src, filepath.Join(dst, src))
	expectCode(t, a.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data"), 0)

	// a backup token still may not read or delete, through either
	for _, s := range []*floeServer{a, b} {
		r := s.remote("fleet", web1, "--key-file", key, "forget", "--keep-last", "1")
		if r.code != 12 && r.code != 14 {
			t.Errorf("forget with a backup token and a write-only key: exit %d, want 12 or 14\n%s", r.code, r)
		}
	}

	// the usage report reads the bucket: run where the servers run
	e.env = append(append([]string{}, e.env...), srv.Env()...)
	r := e.run("serve", "usage", "--storage", storage, "--state-dir", state, "--json")
	e.env = serverEnv
	expectCode(t, r, 0)
	usage := decodeJSON[struct {
		Repositories []struct {
			Repo  string
			Bytes int64
		}
	}](t, r)
	if len(usage.Repositories) != 1 || usage.Repositories[0].Repo != "fleet" || usage.Repositories[0].Bytes < 3<<20 {
		t.Errorf("serve usage --storage: %s", r.stdout)
	}

	// a server that cannot reach its bucket says so at the start
	e.env = append(append([]string{}, e.env...), srv.Env()...)
	r = e.run("serve", "--storage", srv.URL("no-such-bucket-"+strings.ToLower(time.Now().Format("150405")), ""), "--state-dir", e.mkdir("state2"), "--listen", freePort(t))
	e.env = serverEnv
	if r.code == 0 || !strings.Contains(r.stderr, "does not exist") {
		t.Errorf("serve on a missing bucket: %s", r)
	}
}
