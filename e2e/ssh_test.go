//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// requireSSHD is set by scripts/test.sh, which installs openssh-server:
// there a test that cannot start sshd fails instead of skipping.
const requireSSHD = "FLOE_E2E_REQUIRE_SSHD"

// sshServer is a real sshd on a loopback port with its own host key,
// config and authorized_keys, for ssh:// locations.
type sshServer struct {
	e          *floeEnv
	dir        string
	port       string
	authKeys   string
	knownHosts string
}

// sshUnavailable skips the test, or fails it under scripts/test.sh.
func sshUnavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(requireSSHD) == "1" {
		t.Fatalf("%s (%s=1: scripts/test.sh installs openssh-server)", msg, requireSSHD)
	}
	t.Skipf("%s; install Debian's openssh-server and run as root to run this test", msg)
}

func (e *floeEnv) startSSHD() *sshServer {
	t := e.t
	t.Helper()
	sshd := ""
	for _, p := range []string{"/usr/sbin/sshd", "/sbin/sshd"} {
		if _, err := os.Stat(p); err == nil {
			sshd = p
		}
	}
	if sshd == "" {
		sshUnavailable(t, "no sshd (/usr/sbin/sshd)")
	}
	for _, tool := range []string{"ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			sshUnavailable(t, "no %s", tool)
		}
	}
	if os.Getuid() != 0 {
		sshUnavailable(t, "sshd must run as root for this test")
	}
	// privilege separation directory of Debian's sshd
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		sshUnavailable(t, "cannot make /run/sshd: %v", err)
	}
	s := &sshServer{e: e, dir: e.mkdir("sshd")}
	hostKey := filepath.Join(s.dir, "host_ed25519")
	s.keygen(hostKey)
	s.authKeys = filepath.Join(s.dir, "authorized_keys")
	if err := os.WriteFile(s.authKeys, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	_, s.port, _ = net.SplitHostPort(addr)
	cfg := filepath.Join(s.dir, "sshd_config")
	conf := fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
PidFile none
LogLevel ERROR
`, s.port, hostKey, s.authKeys)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		sshUnavailable(t, "start sshd: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("sshd said:\n%s", stderr.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case <-done:
			sshUnavailable(t, "sshd exited: %s", stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			sshUnavailable(t, "sshd does not listen on %s: %s", addr, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	pub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(pub))
	s.knownHosts = filepath.Join(s.dir, "known_hosts")
	line := fmt.Sprintf("[127.0.0.1]:%s %s %s\n", s.port, f[0], f[1])
	if err := os.WriteFile(s.knownHosts, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *sshServer) keygen(path string) {
	s.e.t.Helper()
	out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "floe-test", "-f", path).CombinedOutput()
	if err != nil {
		s.e.t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
}

// clientKey makes a key pair and, unless forced is empty, authorizes it
// with the forced command `floe serve --stdio ...forced`, as README shows.
func (s *sshServer) clientKey(name string, forced ...string) string {
	s.e.t.Helper()
	key := filepath.Join(s.dir, name)
	s.keygen(key)
	if len(forced) == 0 {
		return key
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		s.e.t.Fatal(err)
	}
	line := fmt.Sprintf("command=\"%s serve --stdio %s\",restrict %s", floeBin, strings.Join(forced, " "), pub)
	f, err := os.OpenFile(s.authKeys, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		s.e.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		s.e.t.Fatal(err)
	}
	return key
}

// sshCommand is --ssh-command for a client key: only this key, only
// this host key.
func (s *sshServer) sshCommand(key string) string {
	return fmt.Sprintf("ssh -F /dev/null -i %s -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes", key, s.knownHosts)
}

func (s *sshServer) url(path string) string {
	return "ssh://root@127.0.0.1:" + s.port + path
}

// run runs floe on the ssh:// repository at path with key.
func (s *sshServer) run(key, path string, args ...string) result {
	s.e.t.Helper()
	return s.e.run(append([]string{"-r", s.url(path), "--ssh-command", s.sshCommand(key)}, args...)...)
}

// ssh:// with forced commands in authorized_keys: an admin key creates the
// repository and restores byte-exact; a key whose forced command has
// --role backup backs up with a write-only key, and forget and prune are
// refused (exit 14) without touching the repository.
func TestServerSSH(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s := e.startSSHD()
	repoDir := e.path("srv", "web1")
	admin := s.clientKey("admin", "--root", repoDir, "--role", "admin", "--host", "admin")
	backup := s.clientKey("web1", "--root", repoDir, "--role", "backup", "--host", "web1")
	// the path the client asks for is ignored: the forced command decides
	path := "/srv/floe/web1"

	expectCode(t, s.run(admin, path, "--password-file", e.pwFile, "init"), 0)
	if _, err := os.Stat(filepath.Join(repoDir, "config")); err != nil {
		t.Fatalf("init over ssh made no repository in the forced command's --root: %v", err)
	}
	woKey := e.path("web1.key")
	expectCode(t, s.run(admin, path, "--password-file", e.pwFile, "key", "add", "--write-only", "--new-key-file", woKey), 0)
	registerKeyFile(t, woKey)

	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 20, 10000, 3)
	testutil.WriteRandom(t, filepath.Join(src, "big"), 2<<20, 4)
	expectCode(t, s.run(backup, path, "--key-file", woKey, "backup", src), 0)
	os.WriteFile(filepath.Join(src, "new"), []byte("a new file\n"), 0o644)
	r := s.run(backup, path, "--key-file", woKey, "backup", src)
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "parent snapshot") {
		t.Errorf("second backup over ssh found no parent:\n%s", r)
	}

	// the backup key, even with the full password, cannot remove
	before := treeState(t, filepath.Join(repoDir, "data"))
	for _, args := range [][]string{{"forget", "--keep-last", "1"}, {"prune"}} {
		r := s.run(backup, path, append([]string{"--password-file", e.pwFile}, args...)...)
		expectCode(t, r, 14)
		if !strings.Contains(r.stderr, "role backup, which may not") || !strings.Contains(r.stderr, "ssh key") {
			t.Errorf("floe %s with a backup ssh key: no clear refusal:\n%s", args[0], r)
		}
	}
	if after := treeState(t, filepath.Join(repoDir, "data")); after != before {
		t.Error("refused commands changed the repository")
	}
	// the admin key backs up too, with the full key and its own cache
	r = e.runWith(runOpts{env: []string{"FLOE_CACHE_DIR=" + e.path("cache-admin")}},
		"-r", s.url(path), "--ssh-command", s.sshCommand(admin), "--password-file", e.pwFile, "backup", src)
	expectCode(t, r, 0)
	type snapUp struct {
		snapshotOut
		Uploader struct{ Host, Credential string }
	}
	snaps := decodeJSON[struct{ Snapshots []snapUp }](t, s.run(admin, path, "--password-file", e.pwFile, "snapshots", "--json")).Snapshots
	if len(snaps) != 3 {
		t.Errorf("%d snapshots after the refused forget, want 3", len(snaps))
	}
	// who uploaded what: the forced command's --host, credential "ssh"
	for i, sn := range snaps {
		want := "web1"
		if i == 2 {
			want = "admin"
		}
		if sn.Uploader.Host != want || sn.Uploader.Credential != "ssh" {
			t.Errorf("snapshot %d uploaded by %+v, want %s over ssh", i, sn.Uploader, want)
		}
	}

	// the admin key restores byte-exact and checks; three connections
	dst := e.path("restored")
	expectCode(t, s.run(admin, path, "--password-file", e.pwFile, "--connections", "3", "restore", "latest:"+src, "--target", dst), 0)
	testutil.CompareTrees(t, src, dst)
	expectCode(t, s.run(admin, path, "--password-file", e.pwFile, "check", "--read-data"), 0)

	// the audit log names the ssh credential
	audit, err := os.ReadFile(filepath.Join(repoDir, ".floe-server", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(audit, []byte(`"host":"web1"`)) || !bytes.Contains(audit, []byte(`"remote":"127.0.0.1:`)) {
		t.Errorf("audit log does not name the ssh key's host and address:\n%.2000s", audit)
	}

	// a key sshd does not accept: a quick, clear failure, not retries
	stranger := s.clientKey("stranger")
	start := time.Now()
	r = s.run(stranger, path, "--password-file", e.pwFile, "snapshots")
	expectCode(t, r, 10)
	if !strings.Contains(r.stderr, "Permission denied") || time.Since(start) > 20*time.Second {
		t.Errorf("an unknown ssh key: unclear or slow failure (%v):\n%s", time.Since(start), r)
	}
}
