// Package s3test starts a real S3 server for tests: versitygw
// (github.com/versity/versitygw) with its posix backend, on a free loopback
// port, storing in a temporary directory, stopped when the test ends.
//
// scripts/test.sh installs the pinned versitygw (VersitygwVersion) with
// `go install` and sets FLOE_REQUIRE_S3=1; so does CI (CI=true). There a
// missing server fails the test with a message saying what to install;
// elsewhere (a developer's plain `go test`) the test is skipped with that
// message.
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// VersitygwVersion is the version scripts/test.sh installs.
const VersitygwVersion = "v1.8.0"

// Server is a running versitygw.
type Server struct {
	Endpoint  string // 127.0.0.1:port
	AccessKey string
	SecretKey string
	Dir       string // the posix root: one directory per bucket
	client    *minio.Client
}

// URL returns the floe location of bucket/prefix on the server.
func (s *Server) URL(bucket, prefix string) string {
	u := "s3:http://" + s.Endpoint + "/" + bucket
	if prefix != "" {
		u += "/" + prefix
	}
	return u
}

// Env returns the environment variables that give floe the server's
// credentials (and keep the AWS credential chain off the network).
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.SecretKey,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// Creds returns the server's credentials.
func (s *Server) Creds() *credentials.Credentials {
	return credentials.NewStaticV4(s.AccessKey, s.SecretKey, "")
}

// Client returns a client of the server (path-style).
func (s *Server) Client() *minio.Client { return s.client }

var bucketSeq atomic.Int64

// NewBucket makes a new, empty bucket and returns its name.
func (s *Server) NewBucket(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("floe-test-%d-%s", bucketSeq.Add(1), randomHex(4))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.client.MakeBucket(ctx, name, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("s3test: make bucket %s: %v", name, err)
	}
	return name
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Required reports whether a missing versitygw must fail the tests (under
// scripts/test.sh or in CI) rather than skip them.
func Required() bool {
	return os.Getenv("FLOE_REQUIRE_S3") == "1" || os.Getenv("CI") == "true"
}

// Binary finds versitygw: $FLOE_VERSITYGW, then $PATH, then the Go bin
// directory where `go install` puts it.
func Binary() (string, error) {
	if p := os.Getenv("FLOE_VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("FLOE_VERSITYGW=%s: %w", p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if d := os.Getenv("GOBIN"); d != "" {
		dirs = append(dirs, d)
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n") // GOBIN may be empty
		if len(lines) == 2 {
			if lines[0] != "" {
				dirs = append(dirs, lines[0])
			}
			for _, gp := range filepath.SplitList(lines[1]) {
				dirs = append(dirs, filepath.Join(gp, "bin"))
			}
		}
	}
	if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw not found (looked at $FLOE_VERSITYGW, $PATH, %s); install it with "+
		"`go install github.com/versity/versitygw/cmd/versitygw@%s` (scripts/test.sh does)",
		strings.Join(dirs, ", "), VersitygwVersion)
}

// Options tune Start.
type Options struct {
	// VirtualDomain, if set, makes the server take the bucket from the
	// host name too (virtual-host addressing: BUCKET.VirtualDomain).
	VirtualDomain string
}

// Start starts a server for the test; it is stopped at the test's end.
func Start(t testing.TB) *Server { return StartWith(t, Options{}) }

// StartWith starts a server with options.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		if Required() {
			t.Fatalf("s3test: %v", err)
		}
		t.Skipf("s3test: %v (set FLOE_REQUIRE_S3=1 to make this a failure)", err)
	}
	dir := t.TempDir()
	s := &Server{Dir: filepath.Join(dir, "root"), AccessKey: "floetest" + randomHex(4), SecretKey: "secret" + randomHex(16)}
	if err := os.Mkdir(s.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for try := 0; try < 3; try++ {
		if lastErr = s.start(t, bin, dir, o); lastErr == nil {
			return s
		}
	}
	t.Fatalf("s3test: %v", lastErr)
	return nil
}

func (s *Server) start(t testing.TB, bin, dir string, o Options) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.Endpoint = fmt.Sprintf("127.0.0.1:%d", port)
	logPath := filepath.Join(dir, fmt.Sprintf("versitygw-%d.log", port))
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	args := []string{"--port", s.Endpoint, "--quiet"}
	if o.VirtualDomain != "" {
		args = append(args, "--virtual-domain", o.VirtualDomain)
	}
	args = append(args, "posix", s.Dir)
	cmd := exec.Command(bin, args...)
	// Credentials through the environment, not the command line (ps).
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	client, err := minio.New(s.Endpoint, &minio.Options{Creds: s.Creds(), BucketLookup: minio.BucketLookupPath, MaxRetries: 1})
	if err != nil {
		stop()
		return err
	}
	s.client = client
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err = client.ListBuckets(ctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("versitygw exited at start: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("versitygw did not answer on %s within 20s: %v\n%s", s.Endpoint, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(stop)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
