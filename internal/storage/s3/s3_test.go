package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/s3/s3test"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

// randomBytes returns n pseudo-random bytes from seed.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newTestBackend(t *testing.T, srv *s3test.Server, prefix string) *Backend {
	t.Helper()
	cfg := Config{Endpoint: srv.Endpoint, Bucket: srv.NewBucket(t), Prefix: prefix, Creds: srv.Creds(), Lookup: LookupPath}
	b, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	srv := s3test.Start(t)
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		return newTestBackend(t, srv, "")
	})
}

func TestConformancePrefix(t *testing.T) {
	srv := s3test.Start(t)
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		return newTestBackend(t, srv, "some/prefix")
	})
}

// backendWith makes a backend on a new bucket of srv with cfg's tuning.
func backendWith(t *testing.T, srv *s3test.Server, cfg Config) *Backend {
	t.Helper()
	cfg.Endpoint, cfg.Creds = srv.Endpoint, srv.Creds()
	if cfg.Bucket == "" {
		cfg.Bucket = srv.NewBucket(t)
	}
	if cfg.Lookup == LookupAuto {
		cfg.Lookup = LookupPath
	}
	b, err := Create(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// incomplete returns the keys of the bucket's incomplete multipart uploads.
func incomplete(t *testing.T, b *Backend) []string {
	t.Helper()
	res, err := b.core.ListMultipartUploads(context.Background(), b.cfg.Bucket, "", "", "", "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, u := range res.Uploads {
		keys = append(keys, u.Key)
	}
	return keys
}

func streamSave(t *testing.T, b *Backend, h storage.Handle, data []byte) error {
	t.Helper()
	p, err := b.SaveStream(context.Background(), h.Type)
	if err != nil {
		t.Fatal(err)
	}
	// in uneven pieces, like sealed blobs
	for off := 0; off < len(data); {
		n := min(len(data)-off, 1+off%300000)
		if _, err := p.Write(data[off : off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	return p.Commit(context.Background(), h.Name)
}

// TestStream saves objects through SaveStream, in one PUT and in parts,
// and checks that a streamed object never overwrites one already there
// (the condition is on CompleteMultipartUpload too) and leaves no upload
// behind.
func TestStream(t *testing.T) {
	srv := s3test.Start(t)
	b := backendWith(t, srv, Config{PartSize: minPartSize})
	ctx := context.Background()
	for i, size := range []int{0, 1000, minPartSize, 2*minPartSize + 12345} {
		h := storage.Handle{Type: storage.Pack, Name: storagetest.Name(fmt.Sprint("stream", i))}
		data := randomBytes(uint64(i), size)
		if err := streamSave(t, b, h, data); err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		got, err := b.Load(ctx, h, 0, 0)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: load %d bytes, %v", size, len(got), err)
		}
		// again, other bytes: refused, the object unchanged
		if err := streamSave(t, b, h, randomBytes(99, size)); !errors.Is(err, storage.ErrExist) {
			t.Errorf("%d bytes: streamed over an existing object: %v, want ErrExist", size, err)
		}
		if got, _ := b.Load(ctx, h, 0, 0); !bytes.Equal(got, data) {
			t.Errorf("%d bytes: a refused stream changed the object", size)
		}
		// in-memory Save of a multipart size too
		if err := b.Save(ctx, h, data); !errors.Is(err, storage.ErrExist) {
			t.Errorf("%d bytes: Save over an existing object: %v, want ErrExist", size, err)
		}
	}
	big := storage.Handle{Type: storage.Index, Name: storagetest.Name("big save")}
	data := randomBytes(7, 3*minPartSize+1)
	if err := b.Save(ctx, big, data); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Load(ctx, big, minPartSize-10, minPartSize+20); err != nil || !bytes.Equal(got, data[minPartSize-10:2*minPartSize+10]) {
		t.Errorf("range across parts: %d bytes, %v", len(got), err)
	}
	if keys := incomplete(t, b); len(keys) != 0 {
		t.Errorf("incomplete uploads left: %v", keys)
	}

	// Abort, and a bad name: nothing stored
	p, err := b.SaveStream(ctx, storage.Pack)
	if err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("never committed"))
	p.Abort()
	p.Abort()
	if err := p.Commit(ctx, storagetest.Name("aborted")); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	p, _ = b.SaveStream(ctx, storage.Pack)
	p.Write([]byte("x"))
	if err := p.Commit(ctx, "../config"); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("Commit with a bad name: %v", err)
	}
	if _, err := b.SaveStream(ctx, storage.Config); !errors.Is(err, storage.ErrInvalid) {
		t.Errorf("SaveStream(Config): %v", err)
	}
	n := 0
	b.List(ctx, storage.Pack, func(storage.FileInfo) error { n++; return nil })
	if n != 4 {
		t.Errorf("%d packs listed, want the 4 committed", n)
	}
}

// faultTransport breaks requests on purpose.
type faultTransport struct {
	base http.RoundTripper
	// intercept, if it returns a response, answers instead of the server
	intercept func(req *http.Request) *http.Response
	// fault, if it returns a response or an error, replaces the answer
	fault func(req *http.Request, resp *http.Response) (*http.Response, error)
	mu    sync.Mutex
	count map[string]int // requests per method
}

func (f *faultTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	f.mu.Lock()
	if f.count == nil {
		f.count = map[string]int{}
	}
	f.count[req.Method]++
	f.mu.Unlock()
	if f.intercept != nil {
		if resp := f.intercept(req); resp != nil {
			if req.Body != nil {
				req.Body.Close()
			}
			return resp, nil
		}
	}
	resp, err := f.base.RoundTrip(req)
	if err != nil || f.fault == nil {
		return resp, err
	}
	return f.fault(req, resp)
}

func newFaultTransport(t *testing.T) *faultTransport {
	tr, err := minio.DefaultTransport(false)
	if err != nil {
		t.Fatal(err)
	}
	return &faultTransport{base: tr}
}

// brokenBody ends with a connection reset after n bytes.
type brokenBody struct {
	r io.ReadCloser
	n int
}

func (b *brokenBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, syscall.ECONNRESET
	}
	if len(p) > b.n {
		p = p[:b.n]
	}
	k, err := b.r.Read(p)
	b.n -= k
	return k, err
}

func (b *brokenBody) Close() error { return b.r.Close() }

// TestResume: GET and list bodies that break off are resumed, and the
// result is whole and has each name once.
func TestResume(t *testing.T) {
	defer func(u time.Duration) { backoffUnit = u }(backoffUnit)
	backoffUnit = time.Millisecond
	srv := s3test.Start(t)
	ft := newFaultTransport(t)
	b := backendWith(t, srv, Config{Transport: ft})
	ctx := context.Background()
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("resume")}
	data := randomBytes(1, 3<<20)
	if err := b.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range 30 {
		name := storagetest.Name(fmt.Sprint("list", i))
		names = append(names, name)
		if err := b.Save(ctx, storage.Handle{Type: storage.Snapshot, Name: name}, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var breaks atomic.Int32
	ft.fault = func(req *http.Request, resp *http.Response) (*http.Response, error) {
		if req.Method == http.MethodGet && resp.StatusCode/100 == 2 && breaks.Add(1) <= 3 {
			resp.Body = &brokenBody{r: resp.Body, n: 1000}
		}
		return resp, nil
	}
	got, err := b.Load(ctx, h, 0, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Load through broken bodies: %d bytes, %v", len(got), err)
	}
	breaks.Store(0)
	got, err = b.Load(ctx, h, 12345, 1<<20)
	if err != nil || !bytes.Equal(got, data[12345:12345+1<<20]) {
		t.Fatalf("Load of a range through broken bodies: %d bytes, %v", len(got), err)
	}
	breaks.Store(0)
	// listing bodies broken after 1000 bytes (a few names each)
	seen := map[string]int{}
	if err := b.List(ctx, storage.Snapshot, func(fi storage.FileInfo) error { seen[fi.Name]++; return nil }); err != nil {
		t.Fatalf("List through broken bodies: %v", err)
	}
	for _, n := range names {
		if seen[n] != 1 {
			t.Errorf("List reported %s %d times", n, seen[n])
		}
	}
	if breaks.Load() < 2 {
		t.Errorf("only %d bodies were broken: the test did not test", breaks.Load())
	}
	// a body that keeps breaking: an error, not a hang or a short result
	breaks.Store(-1000)
	if got, err := b.Load(ctx, h, 0, 0); err == nil {
		t.Errorf("Load through always-broken bodies: %d bytes, no error", len(got))
	}
}

// TestOpenStream: a whole object, a range, and from an offset to the end.
func TestOpenStream(t *testing.T) {
	srv := s3test.Start(t)
	b := newTestBackend(t, srv, "")
	ctx := context.Background()
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("stream")}
	data := randomBytes(3, 100000)
	if err := b.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ off, n int64 }{{0, 0}, {0, 100000}, {5000, 7000}, {99999, 0}, {12345, 0}} {
		body, err := b.OpenStream(ctx, h, c.off, c.n)
		if err != nil {
			t.Fatalf("OpenStream %d+%d: %v", c.off, c.n, err)
		}
		got, err := io.ReadAll(body)
		body.Close()
		end := int64(len(data))
		if c.n > 0 {
			end = c.off + c.n
		}
		if err != nil || !bytes.Equal(got, data[c.off:end]) {
			t.Fatalf("OpenStream %d+%d: %d bytes, %v", c.off, c.n, len(got), err)
		}
	}
	if _, err := b.OpenStream(ctx, storage.Handle{Type: storage.Pack, Name: storagetest.Name("none")}, 0, 0); !errors.Is(err, storage.ErrNotExist) {
		t.Fatalf("OpenStream of a missing object: %v", err)
	}
	if _, err := b.OpenStream(ctx, h, -1, 0); err == nil {
		t.Fatal("OpenStream at a negative offset: no error")
	}
}

// TestInterruptedUpload: a multipart upload that fails leaves nothing: no
// object under the name, no incomplete upload.
func TestInterruptedUpload(t *testing.T) {
	srv := s3test.Start(t)
	ft := newFaultTransport(t)
	b := backendWith(t, srv, Config{Transport: ft, PartSize: minPartSize})
	ft.fault = func(req *http.Request, resp *http.Response) (*http.Response, error) {
		if req.Method == http.MethodPut && req.URL.Query().Get("partNumber") == "2" {
			resp.Body.Close()
			return nil, errors.New("injected: connection lost")
		}
		return resp, nil
	}
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("interrupted")}
	if err := streamSave(t, b, h, randomBytes(2, 3*minPartSize)); err == nil {
		t.Fatal("upload with a failing part succeeded")
	}
	if _, err := b.Stat(context.Background(), h); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Stat after a failed upload: %v, want ErrNotExist", err)
	}
	if keys := incomplete(t, b); len(keys) != 0 {
		t.Errorf("incomplete uploads left: %v", keys)
	}
}

// TestNoConditionalWrites: a server that answers If-None-Match with 501
// still gets no overwrite from a lone writer (Save asks first).
func TestNoConditionalWrites(t *testing.T) {
	srv := s3test.Start(t)
	ft := newFaultTransport(t)
	b := backendWith(t, srv, Config{Transport: ft})
	ft.intercept = func(req *http.Request) *http.Response {
		if req.Header.Get("If-None-Match") != "" {
			body := `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>`
			return &http.Response{StatusCode: http.StatusNotImplemented, Status: "501 Not Implemented",
				Header: http.Header{"Content-Type": {"application/xml"}}, Body: io.NopCloser(strings.NewReader(body)),
				ContentLength: int64(len(body)), Request: req, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
		}
		return nil
	}
	ctx := context.Background()
	h := storage.Handle{Type: storage.Key, Name: storagetest.Name("k")}
	if err := b.Save(ctx, h, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if !b.noConditional.Load() {
		t.Fatal("the 501 answer was not noticed")
	}
	if err := b.Save(ctx, h, []byte("second")); !errors.Is(err, storage.ErrExist) {
		t.Errorf("Save over an existing object: %v, want ErrExist", err)
	}
	if got, _ := b.Load(ctx, h, 0, 0); string(got) != "first" {
		t.Errorf("object is %q", got)
	}
}

// TestListSkipsStrays: keys that are not objects of the layout are not
// listed.
func TestListSkipsStrays(t *testing.T) {
	srv := s3test.Start(t)
	b := backendWith(t, srv, Config{Prefix: "repo"})
	ctx := context.Background()
	good := storagetest.Name("good")
	if err := b.Save(ctx, storage.Handle{Type: storage.Pack, Name: good}, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if err := b.Save(ctx, storage.Handle{Type: storage.Key, Name: good}, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	other := storagetest.Name("other")
	strays := []string{
		"repo/data/" + other, // not in its subdirectory
		"repo/data/00/" + other,
		"repo/data/" + other[:2] + "/x/" + other,
		"repo/data/" + other[:2] + "/" + other + ".tmp",
		"repo/keys/sub/" + other,
		"repo/keys/.tmp-" + other[:59],
		"repo/keys/" + strings.ToUpper(other),
		"repo/keysx/" + other,
		"repox/keys/" + other,
		"keys/" + other,
	}
	for _, k := range strays {
		if _, err := b.client.PutObject(ctx, b.cfg.Bucket, k, strings.NewReader("stray"), 5, minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, ft := range []storage.FileType{storage.Pack, storage.Key} {
		var got []string
		if err := b.List(ctx, ft, func(fi storage.FileInfo) error { got = append(got, fi.Name); return nil }); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0] != good {
			t.Errorf("List %s: %q, want only %s", ft, got, good)
		}
	}
}

// A listing whose sizes are negative (a hostile or broken server) lists
// nothing of them; the other entries are listed with their sizes.
func TestListSkipsNegativeSizes(t *testing.T) {
	srv := s3test.Start(t)
	ft := newFaultTransport(t)
	b := backendWith(t, srv, Config{Transport: ft})
	ctx := context.Background()
	keep, bad := storagetest.Name("keep"), storagetest.Name("negative")
	for _, n := range []string{keep, bad} {
		if err := b.Save(ctx, storage.Handle{Type: storage.Key, Name: n}, []byte("12345")); err != nil {
			t.Fatal(err)
		}
	}
	// the listing's <Key>…bad</Key> entry gets <Size>-5</Size>
	entry := regexp.MustCompile(`(<Key>[^<]*` + bad + `</Key>(?:[^<]|<[^S/]|</[^C])*?<Size>)5(</Size>)`)
	ft.fault = func(req *http.Request, resp *http.Response) (*http.Response, error) {
		if req.Method != http.MethodGet || req.URL.Query().Get("list-type") != "2" || resp.StatusCode != http.StatusOK {
			return resp, nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		changed := entry.ReplaceAll(body, []byte("${1}-5${2}"))
		if bytes.Equal(changed, body) {
			t.Errorf("the listing has no size to change:\n%s", body)
		}
		resp.Body = io.NopCloser(bytes.NewReader(changed))
		resp.ContentLength = int64(len(changed))
		resp.Header.Del("Content-Length")
		return resp, nil
	}
	var got []storage.FileInfo
	if err := b.List(ctx, storage.Key, func(fi storage.FileInfo) error { got = append(got, fi); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != keep || got[0].Size != 5 {
		t.Errorf("List: %+v, want only %s of 5 bytes", got, keep)
	}
}

// TestLeftovers: an upload abandoned by a killed writer is reported by
// LeftoverTempFiles once old, and aborted by RemoveTempFiles.
func TestLeftovers(t *testing.T) {
	srv := s3test.Start(t)
	b := backendWith(t, srv, Config{Prefix: "p"})
	ctx := context.Background()
	key := "p/data/ab/" + strings.Repeat("ab", 32)
	id, err := b.core.NewMultipartUpload(ctx, b.cfg.Bucket, key, minio.PutObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	part := randomBytes(1, 1000)
	if _, err := b.core.PutObjectPart(ctx, b.cfg.Bucket, key, id, 1, bytes.NewReader(part), 1000, minio.PutObjectPartOptions{}); err != nil {
		t.Fatal(err)
	}
	// another repository's upload in the same bucket is not ours
	if _, err := b.core.NewMultipartUpload(ctx, b.cfg.Bucket, "other/data/ab/x", minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if l, err := b.LeftoverTempFiles(); err != nil || len(l) != 0 {
		t.Errorf("a fresh upload is reported as left over: %q, %v", l, err)
	}
	l, err := b.leftovers(time.Now().Add(time.Minute))
	if err != nil || len(l) != 1 || !strings.Contains(l[0], key) {
		t.Errorf("leftovers: %q, %v", l, err)
	}
	if n, size, err := b.RemoveTempFiles(time.Hour); n != 0 || err != nil {
		t.Errorf("RemoveTempFiles(1h) aborted %d (%d bytes), %v: the upload is younger", n, size, err)
	}
	time.Sleep(1100 * time.Millisecond)
	n, size, err := b.RemoveTempFiles(time.Second)
	if n != 1 || size != 1000 || err != nil {
		t.Errorf("RemoveTempFiles: %d, %d bytes, %v; want 1, 1000", n, size, err)
	}
	if keys := incomplete(t, b); len(keys) != 1 || keys[0] != "other/data/ab/x" {
		t.Errorf("uploads left: %q, want only the other repository's", keys)
	}
}

// TestVirtualHost: with virtual-host addressing, requests name the bucket
// in the host (BUCKET.s3.floe.test, dialed to the test server), and the
// backend works as with path style.
func TestVirtualHost(t *testing.T) {
	const domain = "s3.floe.test"
	srv := s3test.StartWith(t, s3test.Options{VirtualDomain: domain})
	bucket := srv.NewBucket(t)
	tr, err := minio.DefaultTransport(false)
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, srv.Endpoint) // every host is the test server
	}
	ft := &faultTransport{base: tr}
	var mu sync.Mutex
	hosts := map[string]bool{}
	ft.fault = func(req *http.Request, resp *http.Response) (*http.Response, error) {
		mu.Lock()
		hosts[req.Host] = true
		mu.Unlock()
		if strings.HasPrefix(req.URL.Path, "/"+bucket) {
			t.Errorf("virtual-host request with the bucket in the path: %s %s", req.Method, req.URL)
		}
		return resp, nil
	}
	_, port, _ := net.SplitHostPort(srv.Endpoint)
	b, err := Create(context.Background(), Config{Endpoint: domain + ":" + port, Bucket: bucket, Prefix: "vh",
		Creds: srv.Creds(), Lookup: LookupVirtualHost, Transport: ft})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	h := storage.Handle{Type: storage.Snapshot, Name: storagetest.Name("vh")}
	if err := b.Save(ctx, h, []byte("virtual")); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Load(ctx, h, 1, 3); err != nil || string(got) != "irt" {
		t.Errorf("Load: %q, %v", got, err)
	}
	n := 0
	if err := b.List(ctx, storage.Snapshot, func(storage.FileInfo) error { n++; return nil }); err != nil || n != 1 {
		t.Errorf("List: %d, %v", n, err)
	}
	if err := b.Remove(ctx, h); err != nil {
		t.Error(err)
	}
	// the object is where path style finds it too
	if err := b.Save(ctx, h, []byte("again")); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Client().StatObject(ctx, bucket, "vh/snapshots/"+h.Name, minio.StatObjectOptions{}); err != nil {
		t.Errorf("path-style stat of the object: %v", err)
	}
	if !hosts[bucket+"."+domain+":"+port] {
		t.Errorf("no request went to %s.%s: hosts %v", bucket, domain, hosts)
	}
}

// TestLostAnswer: a write that was stored but whose answer was lost is
// retried by minio-go; the retry's 412 is recognized as our own write
// (the token), not reported as ErrExist.
func TestLostAnswer(t *testing.T) {
	srv := s3test.Start(t)
	ft := newFaultTransport(t)
	b := backendWith(t, srv, Config{Transport: ft, PartSize: minPartSize})
	var lost atomic.Int32
	ft.fault = func(req *http.Request, resp *http.Response) (*http.Response, error) {
		q := req.URL.Query()
		write := req.Method == http.MethodPut && q.Get("partNumber") == "" ||
			req.Method == http.MethodPost && q.Get("uploadId") != ""
		if write && lost.Add(1) == 1 && resp.StatusCode == http.StatusOK {
			resp.Body.Close()
			return nil, errors.New("injected: connection reset after the request was served")
		}
		return resp, nil
	}
	ctx := context.Background()
	for i, size := range []int{1000, 2*minPartSize + 1} {
		lost.Store(0)
		h := storage.Handle{Type: storage.Pack, Name: storagetest.Name(fmt.Sprint("lost", i))}
		data := randomBytes(uint64(i), size)
		if err := b.Save(ctx, h, data); err != nil {
			t.Errorf("%d bytes: Save whose first answer was lost: %v", size, err)
		}
		if lost.Load() < 2 {
			t.Errorf("%d bytes: the write was not retried (%d answers)", size, lost.Load())
		}
		if got, err := b.Load(ctx, h, 0, 0); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%d bytes: Load: %d bytes, %v", size, len(got), err)
		}
		// another write of the name is still refused
		if err := b.Save(ctx, h, data); !errors.Is(err, storage.ErrExist) {
			t.Errorf("%d bytes: a second Save: %v, want ErrExist", size, err)
		}
	}
}

// TestRetry5xx: answers 500 and 503 (throttling) are retried for every
// kind of request, bodies included (they are seekable), so a save, load,
// list, stat and remove each get through a few failures.
func TestRetry5xx(t *testing.T) {
	srv := s3test.Start(t)
	ft := newFaultTransport(t)
	b := backendWith(t, srv, Config{Transport: ft, PartSize: minPartSize})
	var failed atomic.Int32
	ft.intercept = func(req *http.Request) *http.Response {
		if failed.Add(1)%3 == 0 {
			return nil // every third request gets through
		}
		code, status := http.StatusServiceUnavailable, "SlowDown"
		if failed.Load()%2 == 0 {
			code, status = http.StatusInternalServerError, "InternalError"
		}
		body := `<?xml version="1.0" encoding="UTF-8"?><Error><Code>` + status + `</Code><Message>injected</Message></Error>`
		return &http.Response{StatusCode: code, Status: fmt.Sprint(code), Header: http.Header{"Content-Type": {"application/xml"}},
			Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Request: req,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	}
	ctx := context.Background()
	for i, size := range []int{100, 2*minPartSize + 3} {
		h := storage.Handle{Type: storage.Pack, Name: storagetest.Name(fmt.Sprint("5xx", i))}
		data := randomBytes(uint64(i), size)
		if err := b.Save(ctx, h, data); err != nil {
			t.Fatalf("Save through 5xx answers: %v", err)
		}
		if got, err := b.Load(ctx, h, 1, int64(size-1)); err != nil || !bytes.Equal(got, data[1:]) {
			t.Fatalf("Load through 5xx answers: %d bytes, %v", len(got), err)
		}
		if fi, err := b.Stat(ctx, h); err != nil || fi.Size != int64(size) {
			t.Fatalf("Stat through 5xx answers: %+v, %v", fi, err)
		}
	}
	n := 0
	if err := b.List(ctx, storage.Pack, func(storage.FileInfo) error { n++; return nil }); err != nil || n != 2 {
		t.Fatalf("List through 5xx answers: %d, %v", n, err)
	}
	if err := b.Remove(ctx, storage.Handle{Type: storage.Pack, Name: storagetest.Name("5xx0")}); err != nil {
		t.Fatalf("Remove through 5xx answers: %v", err)
	}
	if failed.Load() < 20 {
		t.Errorf("only %d requests: the faults were not met", failed.Load())
	}
}

// corruptTransport flips a byte of every PUT body while on is set: a
// payload damaged on its way.
type corruptTransport struct {
	base http.RoundTripper
	on   atomic.Bool
}

func (c *corruptTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPut && req.Body != nil && c.on.Load() {
		req = req.Clone(req.Context())
		req.Body = &flipBody{r: req.Body, at: 100}
	}
	return c.base.RoundTrip(req)
}

type flipBody struct {
	r   io.ReadCloser
	at  int // offset of the byte to flip, counted down
	pos int
}

func (f *flipBody) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.at >= f.pos && f.at < f.pos+n {
		p[f.at-f.pos] ^= 0x40
	}
	f.pos += n
	return n, err
}

func (f *flipBody) Close() error { return f.r.Close() }

// TestDamagedPayload: a PUT whose payload is damaged on its way is refused
// by the server and nothing is stored, both while the payload is signed
// (the first PUT) and once it goes unsigned with its CRC32C (after the
// server answered with the checksum it was sent).
func TestDamagedPayload(t *testing.T) {
	srv := s3test.Start(t)
	tr, err := minio.DefaultTransport(false)
	if err != nil {
		t.Fatal(err)
	}
	ct := &corruptTransport{base: tr}
	b := backendWith(t, srv, Config{Transport: ct})
	ctx := context.Background()
	data := randomBytes(7, 300<<10)
	h := func(i byte) storage.Handle {
		return storage.Handle{Type: storage.Pack, Name: strings.Repeat(fmt.Sprintf("%02x", i), 32)}
	}
	refused := func(what string, hd storage.Handle, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: a damaged payload was stored", what)
		}
		if _, serr := b.Stat(ctx, hd); !storage.IsNotExist(serr) {
			t.Fatalf("%s: refused (%v), but Stat says %v", what, err, serr)
		}
	}

	// signed (the server has not shown yet that it checks the CRC32C)
	ct.on.Store(true)
	refused("signed payload", h(1), b.Save(ctx, h(1), data))
	if b.checksums.Load() {
		t.Fatal("a refused PUT turned the signature off")
	}

	ct.on.Store(false)
	if err := b.Save(ctx, h(2), data); err != nil {
		t.Fatal(err)
	}
	if !b.checksums.Load() {
		t.Fatal("versitygw answered without the CRC32C it was sent: the payload stays signed")
	}

	// unsigned: the CRC32C alone makes the server refuse, in a Save and
	// in a streamed pack
	ct.on.Store(true)
	refused("unsigned payload", h(3), b.Save(ctx, h(3), data))
	p, err := b.SaveStream(ctx, storage.Pack)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(data); i += 1000 {
		if _, err := p.Write(data[i:min(i+1000, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	refused("unsigned streamed payload", h(4), p.Commit(ctx, h(4).Name))

	ct.on.Store(false)
	for _, i := range []byte{2, 3} {
		if i == 3 {
			if err := b.Save(ctx, h(3), data); err != nil {
				t.Fatal(err)
			}
		}
		got, err := b.Load(ctx, h(i), 0, 0)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("load %d: %d bytes, %v", i, len(got), err)
		}
	}
}
