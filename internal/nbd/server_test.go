package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"math/big"
	mrand "math/rand"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// memImage is an image in memory: data with holes (zeros) and an offset
// whose reads fail.
type memImage struct {
	data   []byte
	holes  [][2]int64 // sorted [start, end)
	failAt int64      // -1: none
}

func newMemImage(size int64, holes ...[2]int64) *memImage {
	m := &memImage{data: make([]byte, size), holes: holes, failAt: -1}
	rng := mrand.New(mrand.NewSource(1))
	rng.Read(m.data)
	for _, h := range holes {
		clear(m.data[h[0]:h[1]])
	}
	return m
}

func (m *memImage) Size() int64 { return int64(len(m.data)) }

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	if m.failAt >= off && m.failAt < off+int64(len(p)) {
		return 0, errTest
	}
	return copy(p, m.data[off:]), nil
}

func (m *memImage) Extents(off, length int64) ([]Extent, error) {
	end := min(off+length, m.Size())
	var out []Extent
	pos := off
	for _, h := range m.holes {
		if h[1] <= pos || h[0] >= end {
			continue
		}
		if h[0] > pos {
			out = append(out, Extent{Length: h[0] - pos})
			pos = h[0]
		}
		e := min(h[1], end)
		out = append(out, Extent{Length: e - pos, Hole: true})
		pos = e
	}
	if pos < end {
		out = append(out, Extent{Length: end - pos})
	}
	return out, nil
}

const testSize = 1 << 20

func testImage() *memImage {
	return newMemImage(testSize, [2]int64{64 << 10, 512 << 10}, [2]int64{testSize - 4096, testSize})
}

func TestReadStructuredAndSimple(t *testing.T) {
	img := testImage()
	s := &Server{Exports: []Export{{Name: "disk", Image: img}}}

	tc, done := dialPipe(t, s)
	tc.handshake("disk", true)
	if tc.size != testSize || tc.tf&tflagReadOnly == 0 || tc.tf&tflagCanMultiConn == 0 {
		t.Fatalf("size %d flags %#x", tc.size, tc.tf)
	}
	got, holes, errno := tc.read(0, testSize)
	if errno != 0 || !bytes.Equal(got, img.data) {
		t.Fatalf("structured read: errno %d, equal %v", errno, bytes.Equal(got, img.data))
	}
	if holes != 2 {
		t.Fatalf("%d hole chunks, want 2", holes)
	}
	got, _, errno = tc.read(100, 1000)
	if errno != 0 || !bytes.Equal(got, img.data[100:1100]) {
		t.Fatal("short read differs")
	}
	tc.disc(done)

	// Without structured replies: simple replies, and the default export.
	tc, done = dialPipe(t, s)
	tc.handshake("", false)
	tc.request(cmdRead, 0, 3, 4096, 8192, nil)
	ch := tc.reply(8192)
	if ch.typ != -1 || ch.errno != 0 || ch.handle != 3 || !bytes.Equal(ch.data, img.data[4096:4096+8192]) {
		t.Fatalf("simple read: %+v", ch.errno)
	}
	tc.disc(done)
}

func TestBlockStatus(t *testing.T) {
	s := &Server{Exports: []Export{{Name: "disk", Image: testImage()}}}
	tc, done := dialPipe(t, s)
	tc.handshake("disk", true)
	status := func(flags uint16, off uint64, n uint32) [][2]uint32 {
		tc.request(cmdBlockStatus, flags, 5, off, n, nil)
		ch := tc.reply(0)
		if ch.typ != replyTypeBlockStatus || ch.flags&replyFlagDone == 0 || binary.BigEndian.Uint32(ch.data) != metaBaseAllocationID {
			t.Fatalf("block status reply: type %d flags %d errno %d", ch.typ, ch.flags, ch.errno)
		}
		var d [][2]uint32
		for p := ch.data[4:]; len(p) >= 8; p = p[8:] {
			d = append(d, [2]uint32{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
		}
		return d
	}
	want := [][2]uint32{{64 << 10, 0}, {448 << 10, 3}, {testSize - 512<<10 - 4096, 0}, {4096, 3}}
	if got := status(0, 0, testSize); !equalPairs(got, want) {
		t.Fatalf("block status %v, want %v", got, want)
	}
	if got := status(cmdFlagReqOne, 70<<10, 1<<20-70<<10); !equalPairs(got, [][2]uint32{{442 << 10, 3}}) {
		t.Fatalf("block status REQ_ONE %v", got)
	}
	tc.disc(done)
}

func equalPairs(a, b [][2]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Bad requests get NBD errors and the connection goes on serving.
func TestRequestErrors(t *testing.T) {
	img := testImage()
	img.failAt = 4096 * 3
	s := &Server{Exports: []Export{{Name: "disk", Image: img}}}
	for _, structured := range []bool{true, false} {
		tc, done := dialPipe(t, s)
		tc.handshake("disk", structured)
		checks := []struct {
			name       string
			typ, flags uint16
			off        uint64
			length     uint32
			payload    []byte
			want       uint32
		}{
			{"read past the end", cmdRead, 0, testSize - 10, 11, nil, errInval},
			{"read at a huge offset", cmdRead, 0, 1<<64 - 5, 10, nil, errInval},
			{"read too large", cmdRead, 0, 0, MaxPayload + 1, nil, errOverflow},
			{"empty read", cmdRead, 0, 0, 0, nil, errInval},
			{"read with unknown flags", cmdRead, 1 << 9, 0, 10, nil, errInval},
			{"read failing in the image", cmdRead, 0, 0, 5 * 4096, nil, errIO},
			{"write to a read-only export", cmdWrite, 0, 0, 4, []byte("abcd"), errPerm},
			{"trim on a read-only export", cmdTrim, 0, 0, 4096, nil, errPerm},
			{"zeroes on a read-only export", cmdWriteZeroes, 0, 0, 4096, nil, errPerm},
			{"unknown command", 42, 0, 0, 0, nil, errInval},
			{"cache (not offered)", cmdCache, 0, 0, 4096, nil, errInval},
		}
		if !structured {
			checks = append(checks, struct {
				name       string
				typ, flags uint16
				off        uint64
				length     uint32
				payload    []byte
				want       uint32
			}{"block status without a context", cmdBlockStatus, 0, 0, 4096, nil, errInval})
		} else {
			checks = append(checks, struct {
				name       string
				typ, flags uint16
				off        uint64
				length     uint32
				payload    []byte
				want       uint32
			}{"block status past the end", cmdBlockStatus, 0, testSize, 1, nil, errInval})
		}
		for _, c := range checks {
			if got := tc.simple(c.typ, c.flags, c.off, c.length, c.payload); got != c.want {
				t.Errorf("structured=%v %s: errno %d, want %d", structured, c.name, got, c.want)
			}
		}
		// still served
		if structured {
			got, _, errno := tc.read(8*4096, 4096)
			if errno != 0 || !bytes.Equal(got, img.data[8*4096:9*4096]) {
				t.Fatalf("read after errors: errno %d", errno)
			}
		} else if errno := tc.simple(cmdFlush, 0, 0, 0, nil); errno != 0 {
			t.Fatalf("flush after errors: %d", errno)
		}
		tc.disc(done)
	}
}

// What breaks the byte stream ends the connection, nothing else.
func TestDisconnects(t *testing.T) {
	s := &Server{Exports: []Export{{Name: "disk", Image: testImage()}}}
	expectEnd := func(tc *testClient, done chan error, wantErr bool) {
		t.Helper()
		select {
		case err := <-done:
			if (err != nil) != wantErr {
				t.Fatalf("server returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("server did not end the connection")
		}
		if _, err := tc.c.Read(make([]byte, 1)); err == nil {
			t.Fatal("connection still open")
		}
	}

	tc, done := dialPipe(t, s)
	tc.handshake("disk", true)
	go tc.c.Write([]byte("GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"))
	expectEnd(tc, done, true)

	tc, done = dialPipe(t, s)
	tc.handshake("disk", true)
	go tc.request(cmdWrite, 0, 1, 0, MaxPayload+1, nil)
	expectEnd(tc, done, true)

	tc, done = dialPipe(t, s)
	tc.greet()
	go tc.c.Write(optBytes(optList, make([]byte, maxOptionLen+1)))
	expectEnd(tc, done, true)

	tc, done = dialPipe(t, s)
	tc.greet()
	go tc.c.Write(optBytes(optExportName, []byte("nosuch")))
	expectEnd(tc, done, true)

	tc, done = dialPipe(t, s)
	var b [18]byte
	tc.full(b[:])
	go tc.write(binary.BigEndian.AppendUint32(nil, 1<<7))
	expectEnd(tc, done, true)

	tc, done = dialPipe(t, s)
	tc.greet()
	if r := tc.option(optAbort, nil); r[0].typ != repAck {
		t.Fatalf("abort: %#x", r[0].typ)
	}
	expectEnd(tc, done, false)
}

func TestOptions(t *testing.T) {
	s := &Server{Exports: []Export{{Name: "a", Description: "first", Image: testImage()}, {Name: "b", Image: newMemImage(8192)}}}
	tc, done := dialPipe(t, s)
	tc.greet()
	r := tc.option(optList, nil)
	if len(r) != 3 || r[0].typ != repServer || string(r[0].data[4:5]) != "a" || string(r[1].data[4:]) != "b" || r[2].typ != repAck {
		t.Fatalf("list: %+v", r)
	}
	errs := []struct {
		name string
		opt  uint32
		data []byte
		want uint32
	}{
		{"unknown option", 200, []byte("x"), repErrUnsup},
		{"extended headers", optExtendedHeaders, nil, repErrUnsup},
		{"list with data", optList, []byte("x"), repErrInvalid},
		{"info on an unknown export", optInfo, goData("c"), repErrUnknown},
		{"info with a bad count", optInfo, append(goData("a"), 0, 1), repErrInvalid},
		{"info with a name longer than the data", optInfo, []byte{0, 0, 1, 0, 0, 0}, repErrInvalid},
		{"go on an unknown export", optGo, goData("c"), repErrUnknown},
		{"starttls without TLS", optStartTLS, nil, repErrPolicy},
		{"meta context before structured replies", optSetMetaContext, metaData("a", metaBaseAllocation), repErrInvalid},
		{"structured reply with data", optStructuredReply, []byte{1}, repErrInvalid},
	}
	for _, e := range errs {
		if r := tc.option(e.opt, e.data); r[len(r)-1].typ != e.want {
			t.Errorf("%s: reply %#x, want %#x", e.name, r[len(r)-1].typ, e.want)
		}
	}
	tc.option(optStructuredReply, nil)
	for _, e := range []struct {
		name string
		opt  uint32
		data []byte
		want int // base:allocation replies
	}{
		{"list all", optListMetaContext, metaData("a"), 1},
		{"list base:", optListMetaContext, metaData("a", "base:"), 1},
		{"list other", optListMetaContext, metaData("a", "qemu:dirty-bitmap:x"), 0},
		{"set other", optSetMetaContext, metaData("a", "qemu:dirty-bitmap:x"), 0},
		{"set base:allocation", optSetMetaContext, metaData("a", "x-foo:bar", metaBaseAllocation), 1},
	} {
		r := tc.option(e.opt, e.data)
		if len(r) != e.want+1 || r[len(r)-1].typ != repAck || e.want == 1 && string(r[0].data[4:]) != metaBaseAllocation {
			t.Errorf("%s: %+v", e.name, r)
		}
	}
	if r := tc.option(optListMetaContext, append(metaData("a", "base:"), 1)); r[0].typ != repErrInvalid {
		t.Errorf("meta query with trailing bytes: %#x", r[0].typ)
	}
	r = tc.option(optInfo, goData("a", infoName, infoDescription))
	var sawName, sawDesc, sawExport bool
	for _, x := range r {
		if x.typ == repInfo {
			switch binary.BigEndian.Uint16(x.data) {
			case infoName:
				sawName = string(x.data[2:]) == "a"
			case infoDescription:
				sawDesc = string(x.data[2:]) == "first"
			case infoExport:
				sawExport = binary.BigEndian.Uint64(x.data[2:]) == testSize
			}
		}
	}
	if !sawName || !sawDesc || !sawExport {
		t.Fatalf("info: %+v", r)
	}
	// The empty name is the default export, the first of several: "a".
	r = tc.option(optInfo, goData("", infoName))
	sawName, sawExport = false, false
	for _, x := range r {
		if x.typ == repInfo {
			switch binary.BigEndian.Uint16(x.data) {
			case infoName:
				sawName = string(x.data[2:]) == "a"
			case infoExport:
				sawExport = binary.BigEndian.Uint64(x.data[2:]) == testSize
			}
		}
	}
	if !sawName || !sawExport || r[len(r)-1].typ != repAck {
		t.Fatalf("info on the default export of two: %+v", r)
	}
	// Selected for "a", then GO to "b": the context does not carry over.
	tc.goExport("b")
	if errno := tc.simple(cmdBlockStatus, 0, 0, 4096, nil); errno != errInval {
		t.Fatalf("block status on another export than the context's: %d", errno)
	}
	tc.disc(done)

	// NBD_OPT_EXPORT_NAME: the old way in, without zeroes.
	tc, done = dialPipe(t, s)
	tc.greet()
	tc.write(optBytes(optExportName, []byte("b")))
	var b [10]byte
	tc.full(b[:])
	if binary.BigEndian.Uint64(b[:]) != 8192 {
		t.Fatalf("export name: size %d", binary.BigEndian.Uint64(b[:]))
	}
	tc.disc(done)

	// ... and with the empty name, the first export.
	tc, done = dialPipe(t, s)
	tc.greet()
	tc.write(optBytes(optExportName, nil))
	tc.full(b[:])
	if binary.BigEndian.Uint64(b[:]) != testSize {
		t.Fatalf("default export name: size %d, want the first export's %d", binary.BigEndian.Uint64(b[:]), testSize)
	}
	tc.disc(done)
}

func selfSigned(t testing.TB) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestTLS(t *testing.T) {
	img := testImage()
	cert := selfSigned(t)
	s := &Server{Exports: []Export{{Name: "disk", Image: img}}, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool.AddCert(leaf)

	tc, done := dialPipe(t, s)
	tc.greet()
	if r := tc.option(optGo, goData("disk")); r[0].typ != repErrTLSReqd {
		t.Fatalf("GO before TLS: %#x", r[0].typ)
	}
	if r := tc.option(optList, nil); r[0].typ != repErrTLSReqd {
		t.Fatalf("LIST before TLS: %#x", r[0].typ)
	}
	if err := tc.startTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"}); err != nil {
		t.Fatal(err)
	}
	if r := tc.option(optStartTLS, nil); r[0].typ != repErrInvalid {
		t.Fatalf("second STARTTLS: %#x", r[0].typ)
	}
	tc.option(optStructuredReply, nil)
	tc.goExport("disk")
	got, _, errno := tc.read(0, testSize)
	if errno != 0 || !bytes.Equal(got, img.data) {
		t.Fatal("read over TLS differs")
	}
	tc.disc(done)

	// EXPORT_NAME in the clear cannot be refused with an error: the
	// connection ends.
	tc, done = dialPipe(t, s)
	tc.greet()
	tc.write(optBytes(optExportName, []byte("disk")))
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("export name before TLS accepted")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("hang")
	}
}

func TestServeShutdown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{Exports: []Export{{Name: "disk", Image: testImage()}}}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, l) }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Read(make([]byte, 18)); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

func TestListen(t *testing.T) {
	dir, err := os.MkdirTemp("", "nbdl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	l, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(sock); st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v", st.Mode())
	}
	if got := URI(l, "disk", false); got != "nbd+unix:///disk?socket="+sock {
		t.Fatal(got)
	}
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Fatalf("second listen: %v", err)
	}
	l.Close()
	// a plain file is never removed
	file := filepath.Join(dir, "f")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := Listen("unix:" + file); err == nil {
		t.Fatal("listen over a file")
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatal(err)
	}
	l, err = Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if got := URI(l, "d", true); !strings.HasPrefix(got, "nbds://127.0.0.1:") || !strings.HasSuffix(got, "/d") {
		t.Fatal(got)
	}
}

// sliceImage is a memImage that hands out its memory (SliceReader) in
// pieces of at most piece bytes, counting what is still held.
type sliceImage struct {
	*memImage
	piece int64
	mu    sync.Mutex
	held  int
	calls int
}

func (s *sliceImage) ReadSlices(off, length int64) ([][]byte, func(), error) {
	s.mu.Lock()
	s.held++
	s.calls++
	s.mu.Unlock()
	release := func() {
		s.mu.Lock()
		s.held--
		s.mu.Unlock()
	}
	if s.failAt >= off && s.failAt < off+length {
		return nil, release, errTest
	}
	var data [][]byte
	for length > 0 {
		n := min(length, s.piece-off%s.piece)
		data = append(data, s.data[off:off+n])
		off, length = off+n, length-n
	}
	return data, release, nil
}

// An image that hands out its memory is served from it, in simple and in
// structured replies, small and large (one writev of many pieces), and
// every piece is given back, also after a failed read.
func TestReadSlices(t *testing.T) {
	img := &sliceImage{memImage: testImage(), piece: 100 << 10}
	img.failAt = 4096 * 3
	s := &Server{Exports: []Export{{Name: "disk", Image: img}}}
	tc, done := dialPipe(t, s)
	tc.handshake("disk", true)
	for _, r := range [][2]uint64{{5 * 4096, testSize - 5*4096}, {600 << 10, 1000}, {600 << 10, 300 << 10}} {
		got, _, errno := tc.read(r[0], uint32(r[1]))
		if errno != 0 || !bytes.Equal(got, img.data[r[0]:r[0]+r[1]]) {
			t.Fatalf("structured read %v: errno %d", r, errno)
		}
	}
	if errno := tc.simple(cmdRead, 0, 0, 5*4096, nil); errno != errIO {
		t.Fatalf("failing read: errno %d, want %d", errno, errIO)
	}
	tc.disc(done)

	tc, done = dialPipe(t, s)
	tc.handshake("disk", false)
	for i, r := range [][2]int{{4096 * 4, 8192}, {64 << 10, 700 << 10}} {
		tc.request(cmdRead, 0, uint64(i), uint64(r[0]), uint32(r[1]), nil)
		if ch := tc.reply(r[1]); ch.errno != 0 || !bytes.Equal(ch.data, img.data[r[0]:r[0]+r[1]]) {
			t.Fatalf("simple read %v: errno %d", r, ch.errno)
		}
	}
	tc.request(cmdRead, 0, 9, 0, 5*4096, nil)
	if ch := tc.reply(0); ch.errno != errIO {
		t.Fatalf("failing simple read: errno %d", ch.errno)
	}
	tc.disc(done)
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.calls < 6 || img.held != 0 {
		t.Fatalf("%d ReadSlices calls, %d not released", img.calls, img.held)
	}
}

// TestUnixSendBuffer: on a unix socket the server queues more of its
// replies than the default send buffer holds (about 416 KiB), so that a
// client busy with its disk finds them waiting: with a read of 4 MiB
// asked for and none of it read yet, at least 1 MiB is queued.
func TestUnixSendBuffer(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/core/wmem_max")
	if err != nil {
		t.Skip("no /proc/sys/net/core/wmem_max")
	}
	if max, _ := strconv.Atoi(strings.TrimSpace(string(b))); max < 2<<20 {
		t.Skipf("net.core.wmem_max is %d: the kernel caps the buffer below what this test needs", max)
	}
	sock := filepath.Join(t.TempDir(), "s")
	l, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &Server{Exports: []Export{{Name: "disk", Image: newMemImage(8 << 20)}}}
	go s.Serve(ctx, l)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	tc := &testClient{t: t, c: c, r: bufio.NewReader(c)}
	tc.handshake("disk", false)
	tc.request(cmdRead, 0, 1, 0, 4<<20, nil)
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	queued := 0
	for deadline := time.Now().Add(10 * time.Second); queued < 1<<20 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		raw.Control(func(fd uintptr) { queued, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if err != nil {
			t.Fatal(err)
		}
	}
	if queued < 1<<20 {
		t.Fatalf("%d bytes of the reply queued on the socket, want at least 1 MiB", queued)
	}
	if ch := tc.reply(4 << 20); ch.errno != 0 || !bytes.Equal(ch.data, s.Exports[0].Image.(*memImage).data[:4<<20]) {
		t.Fatalf("reply: errno %d, %d bytes", ch.errno, len(ch.data))
	}
}
