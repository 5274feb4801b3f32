package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/nbd/nbdtest"
)

// Tests with the real clients of Debian: see nbdtest.

type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// serveUnix serves s on a Unix socket until the test ends.
func serveUnix(t *testing.T, s *Server) (string, *countingListener) {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbd") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: l}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s.Logf = t.Logf
	go func() { s.Serve(ctx, cl); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		os.RemoveAll(dir)
	})
	return sock, cl
}

func uri(name, sock string) string { return "nbd+unix:///" + name + "?socket=" + sock }

// The test image: 64 MiB, sparse, data in a few places (extents in
// 4 KiB units, so the file system maps them exactly).
var imageData = [][2]int64{
	{0, 1 << 20},
	{10 << 20, 12 << 20},
	{40<<20 + 4096, 40<<20 + 12288},
	{64<<20 - 65536, 64 << 20},
}

const imageSize = 64 << 20

func makeImage(t *testing.T, dir string) string { return makeImageSeed(t, dir, 7) }

func makeImageSeed(t *testing.T, dir string, seed int64) string {
	t.Helper()
	path := filepath.Join(dir, "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(imageSize); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(seed))
	for _, d := range imageData {
		b := make([]byte, d[1]-d[0])
		rng.Read(b)
		if _, err := f.WriteAt(b, d[0]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return path
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func fileExport(t *testing.T) (string, *FileImage) {
	t.Helper()
	path := makeImage(t, t.TempDir())
	img, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return path, img
}

func TestToolsQemuImgCompare(t *testing.T) {
	nbdtest.NeedTools(t, "qemu-img")
	path, img := fileExport(t)
	sock, _ := serveUnix(t, &Server{Exports: []Export{{Name: "disk", Image: img}}})
	out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", path, uri("disk", sock))
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	// and a differing image is told apart (the comparison can fail)
	other := filepath.Join(t.TempDir(), "other.img")
	b, _ := os.ReadFile(path)
	b[11<<20] ^= 1
	os.WriteFile(other, b, 0o600)
	cmd := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", other, uri("disk", sock))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "Content mismatch at offset 11534336") {
		t.Fatalf("qemu-img compare of a different image: %v %s", err, out)
	}
}

func TestToolsNbdinfoMap(t *testing.T) {
	nbdtest.NeedTools(t, "nbdinfo")
	_, img := fileExport(t)
	sock, _ := serveUnix(t, &Server{Exports: []Export{{Name: "disk", Image: img}}})
	out := run(t, "nbdinfo", "--map", uri("disk", sock))
	type ext struct {
		off, n int64
		typ    int
	}
	var got []ext
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 {
			continue
		}
		off, _ := strconv.ParseInt(f[0], 10, 64)
		n, _ := strconv.ParseInt(f[1], 10, 64)
		typ, _ := strconv.Atoi(f[2])
		got = append(got, ext{off, n, typ})
	}
	var want []ext
	var pos int64
	for _, d := range imageData {
		if d[0] > pos {
			want = append(want, ext{pos, d[0] - pos, 3}) // hole,zero
		}
		want = append(want, ext{d[0], d[1] - d[0], 0})
		pos = d[1]
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("nbdinfo --map:\n%s\nwant %v", out, want)
	}
	// the reference server maps the same file the same way
	if _, err := exec.LookPath("nbdkit"); err == nil {
		if ref := run(t, "nbdinfo", "--map", "--", "[", "nbdkit", "file", img.f.Name(), "]"); ref != out {
			t.Errorf("nbdinfo --map of nbdkit's file plugin:\n%s\nof ours:\n%s", ref, out)
		}
	} else if nbdtest.Required() {
		t.Error("missing nbdkit (Debian: nbdkit)")
	}
	info := run(t, "nbdinfo", uri("disk", sock))
	for _, w := range []string{"export-size: 67108864", "can_multi_conn: true", "is_read_only: true", "block_size_maximum: 33554432", "base:allocation"} {
		if !strings.Contains(info, w) {
			t.Errorf("nbdinfo lacks %q:\n%s", w, info)
		}
	}
}

func TestToolsNbdcopy(t *testing.T) {
	nbdtest.NeedTools(t, "nbdcopy", "cp")
	path, img := fileExport(t)
	sock, l := serveUnix(t, &Server{Exports: []Export{{Name: "disk", Image: img}}})
	dir := t.TempDir()
	for _, conns := range []int{1, 2} {
		before := l.n.Load()
		out := filepath.Join(dir, fmt.Sprintf("copy%d.img", conns))
		start := time.Now()
		run(t, "nbdcopy", "--connections="+strconv.Itoa(conns), uri("disk", sock), out)
		took := time.Since(start)
		if fileSum(t, out) != fileSum(t, path) {
			t.Fatalf("nbdcopy with %d connections: the copy differs", conns)
		}
		// nbdcopy opens one extra connection to learn the size
		if got := l.n.Load() - before; got < int32(conns) {
			t.Fatalf("nbdcopy --connections=%d used %d connections", conns, got)
		}
		var st syscall.Stat_t
		syscall.Stat(out, &st)
		if st.Blocks*512 > imageSize/2 {
			t.Errorf("the copy is not sparse (%d bytes allocated): holes were not skipped", st.Blocks*512)
		}
		t.Logf("nbdcopy, %d connection(s): %v", conns, took)
	}
	start := time.Now()
	run(t, "cp", "--sparse=always", path, filepath.Join(dir, "cp.img"))
	t.Logf("cp: %v", time.Since(start))
}

func TestToolsWritable(t *testing.T) {
	nbdtest.NeedTools(t, "qemu-io", "qemu-img")
	py := nbdtest.Python(t)
	path, img := fileExport(t)
	sum := fileSum(t, path)
	ovPath := filepath.Join(t.TempDir(), "overlay")
	ov, err := OpenOverlay(ovPath, img, "disk.img")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Exports: []Export{{Name: "disk", Image: ov}}}
	sock, _ := serveUnix(t, s)

	// what the export should read as afterwards
	want, _ := os.ReadFile(path)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "write -z 12M 64k", uri("disk", sock))
	copy(want, bytes.Repeat([]byte{0xab}, 1<<20))
	clear(want[12<<20 : 12<<20+65536])
	// an unaligned write with libnbd, read back on the same connection
	script := fmt.Sprintf(`
import nbd
h = nbd.NBD()
h.connect_uri(%q)
h.pwrite(b"\xcd" * 1000, 10485000)
assert h.pread(1000, 10485000) == b"\xcd" * 1000
h.flush()
h.shutdown()
`, uri("disk", sock))
	run(t, py, "-c", script)
	copy(want[10485000:], bytes.Repeat([]byte{0xcd}, 1000))

	expected := filepath.Join(t.TempDir(), "expected.img")
	os.WriteFile(expected, want, 0o600)
	if out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", expected, uri("disk", sock)); !strings.Contains(out, "identical") {
		t.Fatal(out)
	}
	if fileSum(t, path) != sum {
		t.Fatal("the source image changed")
	}
	if err := ov.Close(); err != nil {
		t.Fatal(err)
	}

	// The overlay keeps the writes for the next server.
	ov, err = OpenOverlay(ovPath, img, "disk.img")
	if err != nil {
		t.Fatal(err)
	}
	defer ov.Close()
	sock, _ = serveUnix(t, &Server{Exports: []Export{{Name: "disk", Image: ov}}})
	if out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", expected, uri("disk", sock)); !strings.Contains(out, "identical") {
		t.Fatal(out)
	}
}

// A malformed client, reads past the end and a failing image get errors;
// another client, connected all along, keeps being served.
func TestToolsBadClients(t *testing.T) {
	nbdtest.NeedTools(t, "qemu-img")
	py := nbdtest.Python(t)
	path, img := fileExport(t)
	bad := newMemImage(1<<20, [2]int64{0, 4096})
	bad.failAt = 512 << 10
	sock, _ := serveUnix(t, &Server{Exports: []Export{{Name: "disk", Image: img}, {Name: "bad", Image: bad}}})

	// a client of our own, in transmission before the others come
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	steady := &testClient{t: t, c: nc, r: bufio.NewReader(nc)}
	steady.handshake("disk", true)

	// raw bytes: the server hangs up on them
	for _, junk := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
		append(clientFlags(), bytes.Repeat([]byte{0xff}, 64)...),
		cat(clientFlags(), optBytes(optGo, goData("disk")), bytes.Repeat([]byte{0}, 28)),
	} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go c.Write(junk)
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("the server did not close a malformed client's connection: %v", err)
		}
		c.Close()
	}

	script := fmt.Sprintf(`
import errno, nbd
def check(uri, structured):
    h = nbd.NBD()
    h.set_strict_mode(0)  # let bad requests reach the server
    h.set_request_structured_replies(structured)
    h.connect_uri(uri)
    size = h.get_size()
    for off, n in ((size - 256, 512), (size, 1), (size + 4096, 4096)):
        try:
            h.pread(n, off)
            raise SystemExit("read past the end at %%d succeeded" %% off)
        except nbd.Error as e:
            assert e.errnum == errno.EINVAL, e
    assert len(h.pread(512, size - 512)) == 512
    h.shutdown()
for s in (True, False):
    check(%q, s)
    h = nbd.NBD()
    h.set_request_structured_replies(s)
    h.connect_uri(%q)
    try:
        h.pread(8192, 512 * 1024)
        raise SystemExit("failing read succeeded")
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
    assert h.pread(4096, 0) == bytes(4096)
    h.shutdown()
print("ok")
`, uri("disk", sock), uri("bad", sock))
	if out := run(t, py, "-c", script); !strings.Contains(out, "ok") {
		t.Fatal(out)
	}

	want, _ := os.ReadFile(path)
	got, _, errno := steady.read(10<<20, 1<<20)
	if errno != 0 || !bytes.Equal(got, want[10<<20:11<<20]) {
		t.Fatalf("the steady client was not served: errno %d", errno)
	}
	if out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", path, uri("disk", sock)); !strings.Contains(out, "identical") {
		t.Fatal(out)
	}
}

// TLS with libnbd (GnuTLS): STARTTLS, then reads over TLS; a client that
// does not upgrade is refused.
func TestToolsTLS(t *testing.T) {
	nbdtest.NeedTools(t, "nbdinfo", "qemu-img")
	path, img := fileExport(t)
	cert := selfSigned(t)
	sock, _ := serveUnix(t, &Server{Exports: []Export{{Name: "disk", Image: img}}, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}})
	dir := t.TempDir()
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	os.WriteFile(filepath.Join(dir, "ca-cert.pem"), pemCert, 0o600)
	tlsURI := "nbds+unix:///disk?socket=" + sock + "&tls-certificates=" + dir + "&tls-hostname=localhost"
	out := run(t, "nbdinfo", "--map", tlsURI)
	if !strings.Contains(out, "hole,zero") {
		t.Fatalf("nbdinfo --map over TLS: %s", out)
	}
	if out, err := exec.Command("nbdinfo", uri("disk", sock)).CombinedOutput(); err == nil {
		t.Fatalf("a client without TLS was served: %s", out)
	}
	// qemu reads it all over TLS too
	obj := "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir
	cmp := exec.Command("qemu-img", "compare", "--object", obj, "--image-opts",
		"driver=raw,file.driver=file,file.filename="+path,
		"driver=raw,file.driver=nbd,file.export=disk,file.server.type=unix,file.server.path="+sock+",file.tls-creds=tls0,file.tls-hostname=localhost")
	if out, err := cmp.CombinedOutput(); err != nil || !strings.Contains(string(out), "identical") {
		t.Fatalf("qemu-img compare over TLS: %v %s", err, out)
	}
}

// nbdcopy writes a whole image into a writable export over two
// connections (writes, zeroes, flush): the overlay then reads as that
// image, and the image under it is unchanged.
func TestToolsNbdcopyIntoOverlay(t *testing.T) {
	nbdtest.NeedTools(t, "nbdcopy", "qemu-img")
	path, img := fileExport(t)
	sum := fileSum(t, path)
	ov, err := OpenOverlay(filepath.Join(t.TempDir(), "overlay"), img, "disk.img")
	if err != nil {
		t.Fatal(err)
	}
	defer ov.Close()
	sock, l := serveUnix(t, &Server{Exports: []Export{{Name: "disk", Image: ov}}})
	other := makeImageSeed(t, t.TempDir(), 99)
	before := l.n.Load()
	run(t, "nbdcopy", "--connections=2", other, uri("disk", sock))
	if got := l.n.Load() - before; got < 2 {
		t.Fatalf("nbdcopy used %d connections", got)
	}
	if out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", other, uri("disk", sock)); !strings.Contains(out, "identical") {
		t.Fatal(out)
	}
	if fileSum(t, path) != sum {
		t.Fatal("the image under the overlay changed")
	}
}
