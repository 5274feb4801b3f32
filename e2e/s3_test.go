//go:build linux

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/floe-backup/floe/internal/storage/s3/s3test"
	"github.com/floe-backup/floe/internal/testutil"
)

// newS3Env is a test world whose repository is a prefix of a new bucket on
// srv, with the server's credentials in every run's environment.
func newS3Env(t *testing.T, srv *s3test.Server) (*floeEnv, string) {
	t.Helper()
	e := newEnv(t)
	bucket := srv.NewBucket(t)
	e.repo = srv.URL(bucket, "hosts/web1")
	e.env = srv.Env()
	addSecret(srv.SecretKey)
	return e, bucket
}

// bucketBytes adds up the sizes of the objects under prefix.
func bucketBytes(t *testing.T, srv *s3test.Server, bucket, prefix string) (n int, size int64) {
	t.Helper()
	for oi := range srv.Client().ListObjectsIter(context.Background(), bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if oi.Err != nil {
			t.Fatal(oi.Err)
		}
		n++
		size += oi.Size
	}
	return n, size
}

// TestS3CLI runs the life of a repository in an S3 bucket through the CLI:
// init, two backups, a byte-exact restore, check --read-data, forget and
// prune (space comes back), an abandoned multipart upload that prune
// aborts, and bad credentials and locations.
func TestS3CLI(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	e, bucket := newS3Env(t, srv)
	e.init()
	// the objects are where docs/FORMAT.md puts them, under the prefix
	if _, err := srv.Client().StatObject(context.Background(), bucket, "hosts/web1/config", minio.StatObjectOptions{}); err != nil {
		t.Fatalf("no config object at hosts/web1/config: %v", err)
	}
	src := twoBackups(e)
	snaps := e.snapshots()
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots, want 2", len(snaps))
	}
	if n, _ := bucketBytes(t, srv, bucket, "hosts/web1/data/"); n == 0 {
		t.Fatal("no packs under hosts/web1/data/")
	}

	dst := e.path("restored")
	e.ok("restore", "--verify", "latest", "--target", dst)
	testutil.CompareTrees(t, src, filepath.Join(dst, src))
	first := e.path("restored-first")
	e.ok("restore", snaps[0].ID, "--target", first)
	if _, err := os.Stat(filepath.Join(first, src, "d1", "f100")); err != nil {
		t.Errorf("the first snapshot lost a file that the second one removed: %v", err)
	}
	e.ok("check", "--read-data")

	// An upload that a killed writer left: invisible, and prune aborts it.
	core := minio.Core{Client: srv.Client()}
	stale := "hosts/web1/data/ab/" + strings.Repeat("ab", 32)
	uploadID, err := core.NewMultipartUpload(context.Background(), bucket, stale, minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	part := testutil.RandomBytes(3, 1<<20)
	if _, err := core.PutObjectPart(context.Background(), bucket, stale, uploadID, 1,
		strings.NewReader(string(part)), int64(len(part)), minio.PutObjectPartOptions{}); err != nil {
		t.Fatal(err)
	}
	e.ok("check")

	// forget the second snapshot; two prunes (mark, then delete) give back
	// the space of the 2 MiB file that only it holds
	_, before := bucketBytes(t, srv, bucket, "hosts/web1/data/")
	e.ok("forget", snaps[1].ID)
	time.Sleep(1100 * time.Millisecond) // the upload is older than --grace 1s
	out := decodeJSON[struct {
		Sweep struct {
			TempFilesRemoved struct {
				Packs int   `json:"packs"`
				Bytes int64 `json:"bytes"`
			} `json:"temp_files_removed"`
		} `json:"sweep"`
	}](t, e.ok("prune", "--grace", "1s", "--max-unused", "0%", "--json"))
	if out.Sweep.TempFilesRemoved.Packs != 1 || out.Sweep.TempFilesRemoved.Bytes != 1<<20 {
		t.Errorf("prune removed %+v temporary uploads, want the one of 1 MiB", out.Sweep.TempFilesRemoved)
	}
	uploads, err := core.ListMultipartUploads(context.Background(), bucket, "hosts/web1/", "", "", "", 100)
	if err != nil || len(uploads.Uploads) != 0 {
		t.Errorf("incomplete uploads after prune: %+v, %v", uploads.Uploads, err)
	}
	time.Sleep(1100 * time.Millisecond)
	e.ok("prune", "--grace", "1s", "--max-unused", "0%")
	_, after := bucketBytes(t, srv, bucket, "hosts/web1/data/")
	if after >= before-(1<<20) {
		t.Errorf("packs: %d bytes before forget and prune, %d after: the 2 MiB only the second snapshot held were not reclaimed", before, after)
	}
	if s := e.snapshots(); len(s) != 1 || s[0].ID != snaps[0].ID {
		t.Errorf("snapshots after forget: %+v", s)
	}
	e.ok("check", "--read-data")
	// the snapshot left restores as it did before the prune
	dst2 := e.path("restored-after-prune")
	e.ok("restore", "latest", "--target", dst2)
	testutil.CompareTrees(t, first, dst2)

	// the wrong secret, no credentials at all: a clear error, no secret
	wrong := e.runWith(runOpts{env: []string{"AWS_SECRET_ACCESS_KEY=" + newSecret(t)}}, append(e.repoArgs(), "snapshots")...)
	expectFail(t, wrong)
	if !strings.Contains(wrong.stderr, "credentials") {
		t.Errorf("a wrong secret key: the error does not point at the credentials: %s", wrong)
	}
	none := e.runWith(runOpts{env: []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="}}, append(e.repoArgs(), "snapshots")...)
	expectFail(t, none)
	if !strings.Contains(none.stderr, "credentials") {
		t.Errorf("no credentials: the error does not point at the credentials: %s", none)
	}
	// credentials from ~/.aws/credentials (profile from AWS_PROFILE)
	awsDir := filepath.Join(e.home, ".aws")
	os.MkdirAll(awsDir, 0o700)
	if err := os.WriteFile(filepath.Join(awsDir, "credentials"), []byte("[backup]\naws_access_key_id = "+srv.AccessKey+
		"\naws_secret_access_key = "+srv.SecretKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile := e.runWith(runOpts{env: []string{"AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=", "AWS_PROFILE=backup"}},
		append(e.repoArgs(), "snapshots", "--json")...)
	expectCode(t, fromFile, 0)
	// forced path style works (the test server speaks both)
	expectCode(t, e.runWith(runOpts{env: []string{"FLOE_S3_PATH_STYLE=1"}}, append(e.repoArgs(), "snapshots")...), 0)

	// no repository there: exit 10; credentials in the location: refused
	// without being repeated
	expectCode(t, e.run("-r", srv.URL(bucket, "nothing-here"), "--password-file", e.pwFile, "snapshots"), 10)
	expectCode(t, e.run("-r", srv.URL("no-such-bucket-floe", ""), "--password-file", e.pwFile, "snapshots"), 10)
	leak := e.run("-r", "s3:http://"+srv.AccessKey+":"+srv.SecretKey+"@"+srv.Endpoint+"/"+bucket+"/hosts/web1",
		"--password-file", e.pwFile, "snapshots")
	expectFail(t, leak)
	if !strings.Contains(leak.stderr, "credentials do not belong") {
		t.Errorf("credentials in the location: %s", leak)
	}
	// a second init at the same place is refused
	expectFail(t, e.floe("init"))
}

// TestS3Copy copies the snapshots of a local repository to one in S3 and
// restores from there.
func TestS3Copy(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	e := newEnv(t)
	e.init()
	src := twoBackups(e)

	s3e, _ := newS3Env(t, srv)
	e.env = s3e.env // the copy command talks to both
	s3pw := e.path("s3-password")
	writeSecretFile(t, s3pw)
	expectCode(t, e.run("-r", s3e.repo, "--password-file", s3pw, "init"), 0)
	r := e.ok("copy", "--json", "--all", "--to", s3e.repo, "--to-password-file", s3pw, "--verify")
	out := decodeJSON[copyOut](t, r)
	if out.Copied != 2 || !out.Verified {
		t.Fatalf("copy to S3: %+v", out)
	}
	s3e.pwFile = s3pw
	s3snaps := s3e.snapshots()
	if len(s3snaps) != 2 {
		t.Fatalf("%d snapshots in the S3 repository, want 2", len(s3snaps))
	}
	dst := e.path("restored-from-s3")
	s3e.ok("restore", "latest", "--target", dst)
	testutil.CompareTrees(t, src, filepath.Join(dst, src))
	s3e.ok("check", "--read-data")
	// and back: again nothing to copy
	r = e.ok("copy", "--json", "--all", "--to", s3e.repo, "--to-password-file", s3pw)
	if out = decodeJSON[copyOut](t, r); out.Skipped != 2 || out.BlobsSent != 0 {
		t.Errorf("second copy: %+v", out)
	}
}

// TestS3KilledBackup kills backups to S3 at several points: the repository
// stays one that check passes (no half object under a final name), and
// the next backup completes and restores byte for byte.
func TestS3KilledBackup(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	e, _ := newS3Env(t, srv)
	e.init()
	src := e.mkdir("src")
	for i := range 5 {
		testutil.WriteRandom(t, filepath.Join(src, "f"+string(rune('a'+i))), 8<<20, uint64(i+40))
	}
	manifest := testutil.Manifest(t, src)
	killed := 0
	for _, delay := range []time.Duration{150 * time.Millisecond, 400 * time.Millisecond, 900 * time.Millisecond} {
		finished, took, _ := e.killAfter(delay, "backup", "--force", src)
		if finished {
			t.Logf("the backup finished in %v, before the kill", took)
			continue
		}
		killed++
		if r := e.floe("check"); r.code != 0 {
			t.Fatalf("check after a backup killed after %v: %s", delay, r)
		}
	}
	if killed == 0 {
		t.Log("no backup was killed: each finished before its kill")
	}
	b, _ := e.backup(src)
	e.restoreAndCompare("after killed backups", b.Snapshot, src, manifest, true)
	e.ok("check", "--read-data")
}

// TestS3StreamsPacks backs up a 256 MiB file to a local repository and to
// one in S3 and compares the peak RSS of the two processes: packs go to
// S3 through a spool file, never whole in memory, so the S3 backup needs
// no more memory than the local one (three 16 MiB packs held in memory
// would be 48 MiB more).
func TestS3StreamsPacks(t *testing.T) {
	srv := s3test.Start(t)
	e, _ := newS3Env(t, srv)
	src := e.mkdir("src")
	const size = 256 << 20
	testutil.WriteRandom(t, filepath.Join(src, "big"), size, 52)
	backup := func(repo string) result {
		t.Helper()
		global := []string{"-r", repo, "--password-file", e.pwFile}
		expectCode(t, e.run(append(global, "init")...), 0)
		r := e.run(append(global, "backup", "--json", src)...)
		expectCode(t, r, 0)
		if out := decodeJSON[backupOut](t, r); out.Summary.DataAdded < size {
			t.Fatalf("the backup added %d bytes, want the whole %d-byte file", out.Summary.DataAdded, size)
		}
		return r
	}
	local := backup(e.path("local-repo"))
	remote := backup(e.repo)
	t.Logf("peak RSS local %d MiB in %v, S3 %d MiB in %v", local.maxRSS>>20, local.wall.Round(time.Millisecond),
		remote.maxRSS>>20, remote.wall.Round(time.Millisecond))
	if local.maxRSS <= 0 || remote.maxRSS <= 0 {
		t.Fatalf("no peak RSS measured (%d, %d)", local.maxRSS, remote.maxRSS)
	}
	if remote.maxRSS > local.maxRSS+32<<20 {
		t.Errorf("the backup to S3 peaked at %d MiB, the local one at %d MiB: packs are held in memory",
			remote.maxRSS>>20, local.maxRSS>>20)
	}
}
