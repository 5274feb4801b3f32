//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/nbd/nbdtest"
	"github.com/floe-backup/floe/internal/testutil"
)

// startNBD runs `floe nbd` in the background until the test ends (or
// stop is called) and waits for its socket.
func (e *floeEnv) startNBD(sock string, args ...string) (stop func()) {
	e.t.Helper()
	stop, _ = e.runNBD(append([]string{"--listen", "unix:" + sock}, args...), func(*lockedBuffer) bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return stop
}

// nbdServed is what `floe --json nbd` says it serves.
type nbdServed struct {
	URI     string `json:"uri"`
	Exports []struct {
		Name string `json:"name"`
		URI  string `json:"uri"`
		Path string `json:"path"`
	} `json:"exports"`
}

// startNBDTCP runs `floe --json nbd` listening on a free TCP port of the
// loopback interface, and returns what it serves (the URIs, with the port
// it was given) once it takes connections.
func (e *floeEnv) startNBDTCP(args ...string) (stop func(), served nbdServed) {
	e.t.Helper()
	stop, _ = e.runNBD(append([]string{"--json", "--listen", "127.0.0.1:0"}, args...), func(out *lockedBuffer) bool {
		if json.Unmarshal(out.Bytes(), &served) != nil {
			return false
		}
		u, err := url.Parse(served.URI)
		if err != nil {
			e.t.Fatalf("floe nbd serves at %q: %v", served.URI, err)
		}
		c, err := net.Dial("tcp", u.Host)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return stop, served
}

// lockedBuffer is a bytes.Buffer that a running command writes to while
// the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}

func (b *lockedBuffer) String() string { return string(b.Bytes()) }

// runNBD runs `floe nbd args` in the background until the test ends (or
// stop is called), and waits until ready, given its standard output, says
// it serves.
func (e *floeEnv) runNBD(args []string, ready func(stdout *lockedBuffer) bool) (stop func(), stdout *lockedBuffer) {
	e.t.Helper()
	cmd := exec.Command(floeBin, append(append(e.repoArgs(), "nbd"), args...)...)
	cmd.Env = e.environ()
	var out, errOut lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stopped := false
	stop = func() {
		e.t.Helper()
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				e.t.Errorf("floe nbd exited %d after SIGINT:\n%s%s", code, out.String(), errOut.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
			e.t.Errorf("floe nbd did not end after SIGINT:\n%s%s", out.String(), errOut.String())
		}
	}
	e.t.Cleanup(stop)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if ready(&out) {
			return stop, &out
		}
		select {
		case <-exited:
			e.t.Fatalf("floe nbd exited: %d\n%s%s", cmd.ProcessState.ExitCode(), out.String(), errOut.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("floe nbd is not listening after 60 s:\n%s%s", out.String(), errOut.String())
		}
	}
}

func nbdRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func sameImage(t *testing.T, file, uri string) {
	t.Helper()
	if out := nbdRun(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", file, uri); !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare %s %s: %s", file, uri, out)
	}
}

// A disk image in a snapshot, served with `floe nbd`: qemu-img sees the
// same bytes, nbdinfo the holes, nbdcopy copies it over two connections;
// a writable export keeps its writes in the overlay, and the repository
// is unchanged (its files, check --read-data, a restore of the snapshot).
func TestNBD(t *testing.T) {
	nbdtest.NeedTools(t, "qemu-img", "qemu-io", "nbdinfo", "nbdcopy")
	e := newEnv(t)
	e.init()
	src := e.mkdir("vm")
	img := filepath.Join(src, "disk.img")
	const size = 64 << 20
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	rng := rand.New(rand.NewSource(5))
	data := [][2]int64{{0, 2 << 20}, {30 << 20, 31 << 20}, {size - 1<<20, size}}
	for _, d := range data {
		b := make([]byte, d[1]-d[0])
		rng.Read(b)
		f.WriteAt(b, d[0])
	}
	f.Close()
	b, _ := e.backup(src)

	sock, uri := nbdSocket(t)

	stop := e.startNBD(sock, "latest:"+img)
	sameImage(t, img, uri)
	// the default export (empty name) is the same
	sameImage(t, img, "nbd+unix://?socket="+sock)

	// holes are holes: nothing of the original's data is in one, and most
	// of the image is
	var holes int64
	sc := bufio.NewScanner(strings.NewReader(nbdRun(t, "nbdinfo", "--map", uri)))
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 3 {
			continue
		}
		off, _ := strconv.ParseInt(fl[0], 10, 64)
		n, _ := strconv.ParseInt(fl[1], 10, 64)
		if fl[2] != "3" {
			continue
		}
		holes += n
		for _, d := range data {
			if off < d[1] && d[0] < off+n {
				t.Errorf("hole %d+%d overlaps data %v", off, n, d)
			}
		}
	}
	if holes < size/2 {
		t.Errorf("nbdinfo --map shows %d bytes of holes in a %d-byte image that is mostly holes", holes, size)
	}

	out := e.path("copy.img")
	nbdRun(t, "nbdcopy", "--connections=2", uri, out)
	sameFile(t, img, out)
	// a read past the end is refused, and the server goes on
	if o, err := exec.Command("qemu-io", "-f", "raw", "-c", fmt.Sprintf("read %d 512", size), uri).CombinedOutput(); err == nil && !strings.Contains(string(o), "rror") {
		t.Errorf("read past the end: %s", o)
	}
	sameImage(t, img, uri)
	stop()

	// writable: writes land in the overlay only
	repoBefore := testutil.Manifest(t, e.repo)
	overlay := e.path("disk.overlay")
	stop = e.startNBD(sock, "latest:"+img, "--writable", "--overlay", overlay)
	nbdRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 40M 4k", uri)
	want, _ := os.ReadFile(img)
	copy(want, bytes.Repeat([]byte{0xab}, 1<<20))
	copy(want[40<<20:], bytes.Repeat([]byte{0xcd}, 4096))
	expected := e.path("expected.img")
	os.WriteFile(expected, want, 0o600)
	sameImage(t, expected, uri)
	stop()
	if _, err := os.Stat(overlay + ".map"); err != nil {
		t.Fatalf("no overlay map: %v", err)
	}
	// served again: the overlay's writes are back; read-only: the snapshot
	// as it was
	stop = e.startNBD(sock, "latest:"+img, "--writable", "--overlay", overlay)
	sameImage(t, expected, uri)
	stop()
	e.startNBD(sock, b.Snapshot+":"+img)
	sameImage(t, img, uri)
	// the repository is unchanged: the same files with the same bytes,
	// every blob of it still decrypts and verifies, and the snapshot
	// restores the image as it was backed up
	testutil.DiffManifest(t, repoBefore, e.repo)
	e.ok("check", "--read-data")
	restored := e.path("restored")
	e.ok("restore", b.Snapshot+":"+img, "--target", restored, "--verify")
	sameFile(t, img, filepath.Join(restored, filepath.Base(img)))
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Fatalf("%s and %s differ", a, b)
	}
}

func TestNBDBadArguments(t *testing.T) {
	e := newEnv(t)
	e.init()
	src := e.mkdir("d")
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o600)
	e.backup(src)
	expectCode(t, e.floe("nbd", "latest:"+src+"/f", "--writable"), 2)
	expectCode(t, e.floe("nbd", "latest:"+src+"/f", "--overlay", e.path("ov")), 2)
	expectCode(t, e.floe("nbd", "latest:"+src+"/f", "--tls-cert", e.path("c")), 2)
	r := e.floe("nbd", "latest:"+src, "--listen", "unix:"+e.path("s"))
	expectFail(t, r)
	if !strings.Contains(r.stderr, "only a regular file") {
		t.Fatalf("serving a directory: %s", r)
	}
	expectFail(t, e.floe("nbd", "latest:"+src+"/nosuch", "--listen", "unix:"+e.path("s")))
	// a write-only key cannot read what it would serve
	wo := e.path("wo.key")
	e.ok("key", "add", "--write-only", "--new-key-file", wo)
	r = e.run("-r", e.repo, "--key-file", wo, "nbd", "latest:"+src+"/f", "--listen", "unix:"+e.path("s"))
	expectCode(t, r, 12)
	// an overlay over a file that is not one is refused, and left alone
	other := e.path("precious")
	os.WriteFile(other, []byte("keep"), 0o600)
	r = e.floe("nbd", "latest:"+src+"/f", "--listen", "unix:"+e.path("s"), "--writable", "--overlay", other)
	expectFail(t, r)
	if got, _ := os.ReadFile(other); string(got) != "keep" {
		t.Fatal("the file given as overlay was changed")
	}
}

// A damaged pack under a served image: every blob is verified before it is
// served, so a copy of the image fails rather than handing out wrong
// bytes; a client reading it in pieces gets an I/O error for those of the
// damaged blob, the image's bytes for all others, with and without
// structured replies, twice (a failed load is not kept); and the server
// goes on and ends cleanly.
func TestNBDDamagedPack(t *testing.T) {
	nbdtest.NeedTools(t, "nbdcopy")
	py := nbdtest.Python(t)
	e := newEnv(t)
	e.init()
	src := e.mkdir("vm")
	img := filepath.Join(src, "disk.img")
	testutil.WriteRandom(t, img, 12<<20, 97)
	e.backup("--image", img)
	flip(t, largest(objects(t, filepath.Join(e.repo, "data"))))

	sock, uri := nbdSocket(t)
	stop := e.startNBD(sock, "latest:"+img)
	if o, err := exec.Command("nbdcopy", uri, e.path("copy.img")).CombinedOutput(); err == nil {
		t.Fatalf("nbdcopy of an image over a damaged pack succeeded:\n%s", o)
	}
	script := fmt.Sprintf(`
import errno, nbd
want = open(%q, "rb").read()
for structured in (True, False, True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(%q)
    ok = bad = 0
    for off in range(0, len(want), 256 << 10):
        try:
            got = h.pread(256 << 10, off)
        except nbd.Error as e:
            assert e.errnum == errno.EIO, e
            bad += 1
            continue
        if got != want[off:off + len(got)]:
            raise SystemExit("wrong bytes served at %%d" %% off)
        ok += 1
    h.shutdown()
    print(ok, bad)
`, img, uri)
	out := nbdRun(t, py, "-c", script)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var ok, bad int
		if _, err := fmt.Sscan(line, &ok, &bad); err != nil || ok == 0 || bad == 0 {
			t.Fatalf("want both good and failing reads in each pass, got:\n%s", out)
		}
	}
	stop()
}

// nbdSocket returns a Unix socket path for floe nbd, in a directory of its
// own under the system's temporary directory (socket paths are short),
// and the URI of the export disk.img on it.
func nbdSocket(t *testing.T) (sock, uri string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "floe-nbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock = filepath.Join(dir, "s")
	return sock, "nbd+unix:///disk.img?socket=" + sock
}

// sparseImage writes a sparse image of size bytes with random data in
// three places (the rest holes), different for each seed.
func sparseImage(t *testing.T, path string, size int64, seed uint64) {
	t.Helper()
	const n = 256 << 10
	testutil.WriteSparse(t, path, size, 10*seed, testutil.Region{Off: 0, Len: n},
		testutil.Region{Off: size / 2, Len: n}, testutil.Region{Off: size - n, Len: n})
}

// Several images, of two snapshots, served by one `floe nbd` over TCP:
// each under its own export name (--name in order, else the file's name),
// the first also as the default export, all listed by nbdinfo --list;
// writable with one overlay per export; names or overlays that clash are
// usage errors; the older `floe nbd SNAPSHOT PATH` still works.
func TestNBDSeveralExports(t *testing.T) {
	nbdtest.NeedTools(t, "qemu-img", "qemu-io", "nbdinfo", "nbdcopy")
	e := newEnv(t)
	e.init()
	vm, other := e.mkdir("vm"), e.mkdir("other")
	sys, data, sys2 := filepath.Join(vm, "sys.img"), filepath.Join(vm, "data.img"), filepath.Join(other, "sys.img")
	sparseImage(t, sys, 8<<20, 1)
	sparseImage(t, data, 6<<20, 2)
	sparseImage(t, sys2, 4<<20, 3)
	b1, _ := e.backup(vm)
	b2, _ := e.backup(other)
	s1, s2 := b1.Snapshot, b2.Snapshot

	stop, served := e.startNBDTCP(s1+":"+sys, s1+":"+data, s2+":"+sys2, "--name", "sys", "--name", "data")
	base := strings.TrimSuffix(served.URI, "sys")
	if !strings.HasPrefix(base, "nbd://127.0.0.1:") || len(served.Exports) != 3 {
		t.Fatalf("floe nbd --json: %+v", served)
	}
	for i, want := range []string{"sys", "data", "sys.img"} {
		if x := served.Exports[i]; x.Name != want || x.URI != base+want {
			t.Fatalf("export %d: %+v, want %s at %s", i, x, want, base+want)
		}
	}
	var list struct {
		Exports []struct {
			Name string `json:"export-name"`
			Size int64  `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(nbdRun(t, "nbdinfo", "--list", "--json", base)), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Exports) != 3 || list.Exports[0].Name != "sys" || list.Exports[1].Name != "data" || list.Exports[2].Name != "sys.img" ||
		list.Exports[0].Size != 8<<20 || list.Exports[1].Size != 6<<20 || list.Exports[2].Size != 4<<20 {
		t.Fatalf("nbdinfo --list: %+v", list)
	}
	sameImage(t, sys, base+"sys")
	copied := e.path("data.copy")
	nbdRun(t, "nbdcopy", base+"data", copied)
	sameFile(t, data, copied)
	sameImage(t, sys2, base+"sys.img")
	sameImage(t, sys, base) // the default export: the first
	stop()

	// clashes are usage errors, found before anything is served
	sock, _ := nbdSocket(t)
	for i, args := range [][]string{
		{s1 + ":" + sys, s2 + ":" + sys2},                               // both sys.img
		{s1 + ":" + sys, s1 + ":" + data, "--name", "x", "--name", "x"}, // one name twice
		{s1 + ":" + sys, s1 + ":" + data, "--name", "a", "--name", "b", "--name", "c"},
		{s1 + ":" + sys, s1 + ":" + data, "--name", "a", "--name", ""}, // only the first may be the empty name
		{s1 + ":" + sys, s1 + ":" + data, "--writable", "--overlay", e.path("o1")},
		{s1 + ":" + sys, s1 + ":" + data, "--writable", "--overlay", e.path("o1"), "--overlay", e.path("o1")},
		{s1 + ":" + sys, data}, // several exports need SNAPSHOT:PATH each
		{s1, sys, data},
	} {
		r := e.floe(append([]string{"nbd", "--listen", "unix:" + sock}, args...)...)
		expectCode(t, r, 2)
		if i == 0 && !strings.Contains(r.stderr, `two exports named "sys.img"`) {
			t.Fatalf("no clear error for two exports of one name:\n%s", r)
		}
	}
	if _, err := os.Stat(e.path("o1")); err == nil {
		t.Fatal("an overlay was made by a refused command")
	}

	// writable: each export's writes land in its own overlay
	ovSys, ovData := e.path("sys.overlay"), e.path("data.overlay")
	stop = e.startNBD(sock, s1+":"+sys, s1+":"+data, "--writable", "--overlay", ovSys, "--overlay", ovData)
	dataURI, sysURI := "nbd+unix:///data.img?socket="+sock, "nbd+unix:///sys.img?socket="+sock
	nbdRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0xcd 1M 64k", dataURI)
	want, _ := os.ReadFile(data)
	copy(want[1<<20:], bytes.Repeat([]byte{0xcd}, 64<<10))
	expected := e.path("data.expected")
	os.WriteFile(expected, want, 0o600)
	sameImage(t, expected, dataURI)
	sameImage(t, sys, sysURI)
	stop()
	if _, err := os.Stat(ovData + ".map"); err != nil {
		t.Fatalf("no overlay map for the written export: %v", err)
	}

	// the older spelling, SNAPSHOT PATH
	e.startNBD(sock, s1, data)
	sameImage(t, data, "nbd+unix://?socket="+sock)
	e.ok("check", "--read-data")
}
