package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/storage/remote"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

func newMemRepos(names ...string) *memRepos {
	m := &memRepos{repos: map[string]*countingBackend{}}
	for _, n := range names {
		m.repos[n] = &countingBackend{Backend: mem.New(), calls: &m.calls}
	}
	return m
}

func nameOf(data []byte) string {
	sum := blake3.Sum256(data)
	return fmt.Sprintf("%x", sum[:])
}

// The suite over HTTP against in-memory repositories (any storage.Backend
// can be served), through a token holding all three roles combined.
func TestConformanceMemCombinedRoles(t *testing.T) {
	var n atomic.Int64
	repos := &memRepos{repos: map[string]*countingBackend{}}
	for i := range 40 {
		repos.repos[fmt.Sprint("m", i)] = &countingBackend{Backend: mem.New(), calls: &repos.calls}
	}
	s := startServer(t, repos, server.Options{AllowAnyName: true})
	storagetest.TestBackend(t, func(t *testing.T) storage.Backend {
		name := fmt.Sprint("m", n.Add(1)-1)
		return s.client(t, name, s.token(t, name, "backup,restore,admin"))
	})
}

// Every role against every operation and type over real HTTP: what a role
// may not do is refused with ErrForbidden (storage.ErrDenied) and never
// reaches storage.
func TestRoles(t *testing.T) {
	ctx := context.Background()
	repos := newMemRepos("fleet")
	s := startServer(t, repos, server.Options{})
	obj := []byte("object")
	name := nameOf(obj)
	for _, ft := range append([]storage.FileType{storage.Config}, storage.AllTypes...) {
		h := storage.Handle{Type: ft, Name: name}
		if ft == storage.Config {
			h.Name = ""
		}
		repos.repos["fleet"].Set(h, obj)
	}
	for _, role := range []string{"backup", "restore", "admin", "backup,restore"} {
		r, _ := server.ParseRoles(role)
		b := s.client(t, "fleet", s.token(t, "fleet", role))
		for _, ft := range append([]storage.FileType{storage.Config}, storage.AllTypes...) {
			h := storage.Handle{Type: ft, Name: name}
			if ft == storage.Config {
				h.Name = ""
			}
			newObj := []byte("new " + string(ft) + role)
			nh := storage.Handle{Type: ft, Name: nameOf(newObj)}
			if ft == storage.Config {
				nh = h
			}
			ops := []struct {
				op  server.Op
				run func() error
			}{
				{server.OpLoad, func() error { _, err := b.Load(ctx, h, 0, 0); return err }},
				{server.OpStat, func() error { _, err := b.Stat(ctx, h); return err }},
				{server.OpList, func() error {
					if ft == storage.Config {
						return errSkip
					}
					return b.List(ctx, ft, func(storage.FileInfo) error { return nil })
				}},
				{server.OpSave, func() error {
					err := b.Save(ctx, nh, newObj)
					if ft == storage.Config && errors.Is(err, storage.ErrExist) {
						return nil // allowed, but there is a config already
					}
					return err
				}},
				{server.OpRemove, func() error {
					if ft == storage.Config {
						return errSkip // tested by the conformance suite
					}
					return b.Remove(ctx, nh)
				}},
			}
			for _, o := range ops {
				before := repos.calls.Load()
				err := o.run()
				if err == errSkip {
					continue
				}
				allowed := r.Allows(o.op, ft)
				switch {
				case allowed && err != nil:
					t.Errorf("role %s %s %s: %v", role, o.op, ft, err)
				case !allowed && !errors.Is(err, remote.ErrForbidden):
					t.Errorf("role %s %s %s: %v, want ErrForbidden", role, o.op, ft, err)
				case !allowed && !errors.Is(err, storage.ErrDenied):
					t.Errorf("role %s %s %s: %v does not wrap storage.ErrDenied", role, o.op, ft, err)
				case !allowed && repos.calls.Load() != before:
					t.Errorf("role %s %s %s: refused, but storage was touched", role, o.op, ft)
				}
			}
		}
	}
	// the matrix itself: backup never reads packs or snapshots or removes
	bk, _ := server.ParseRoles("backup")
	for _, bad := range []struct {
		op server.Op
		t  storage.FileType
	}{{server.OpLoad, storage.Pack}, {server.OpLoad, storage.Snapshot}, {server.OpRemove, storage.Pack},
		{server.OpSave, storage.GCMark}, {server.OpSave, storage.Config}, {server.OpSave, storage.Key}, {server.OpCreate, ""}} {
		if bk.Allows(bad.op, bad.t) {
			t.Errorf("backup may %s %s", bad.op, bad.t)
		}
	}
	rs, _ := server.ParseRoles("restore")
	for _, op := range []server.Op{server.OpSave, server.OpRemove, server.OpCreate} {
		if rs.Allows(op, storage.Pack) {
			t.Errorf("restore may %s", op)
		}
	}
}

var errSkip = errors.New("skip")

// rejectEvil is an UploadVerifier that refuses uploads holding "evil",
// and records what it saw.
type rejectEvil struct{ seen atomic.Int64 }

func (v *rejectEvil) VerifyUpload(ctx context.Context, _ storage.Backend, h storage.Handle, data io.ReaderAt, size int64) error {
	v.seen.Add(1)
	buf := make([]byte, size)
	if _, err := data.ReadAt(buf, 0); err != nil && !(err == io.EOF && size == 0) {
		return err
	}
	if nameOf(buf) != h.Name {
		return fmt.Errorf("verifier got other bytes than were uploaded")
	}
	if bytes.Contains(buf, []byte("evil")) {
		return errors.New("evil content")
	}
	return nil
}

// Names must be the BLAKE3-256 of the bytes; identical re-uploads are
// ErrExist for the storage contract (and succeed on a retry); the upload
// verifier hook sees the bytes and can refuse them; refused uploads leave
// nothing.
func TestNameCheckAndVerifier(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	repos, err := server.NewRootDir(root)
	if err != nil {
		t.Fatal(err)
	}
	v := &rejectEvil{}
	s := startServer(t, repos, server.Options{Verifier: v, SpoolDir: t.TempDir()})
	tok := s.token(t, "fleet", "admin")
	b, err := remote.Create(ctx, s.url+"/fleet", remote.Options{Token: tok, Fingerprint: s.fp, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 100, 3 << 20} { // memory and spooled paths
		data := bytes.Repeat([]byte("x"), size)
		h := storage.Handle{Type: storage.Pack, Name: nameOf(data)}
		if err := b.Save(ctx, h, data); err != nil {
			t.Fatalf("good upload of %d bytes: %v", size, err)
		}
		if err := b.Save(ctx, h, data); !errors.Is(err, storage.ErrExist) {
			t.Errorf("identical re-upload: %v, want ErrExist", err)
		}
		evil := append(bytes.Repeat([]byte("y"), size), "evil"...)
		eh := storage.Handle{Type: storage.Pack, Name: nameOf(evil)}
		if err := b.Save(ctx, eh, evil); !errors.Is(err, remote.ErrRejected) || !strings.Contains(err.Error(), "evil content") {
			t.Errorf("evil upload of %d bytes: %v, want ErrRejected", size, err)
		}
		wrong := storage.Handle{Type: storage.Pack, Name: nameOf([]byte("other"))}
		if err := b.Save(ctx, wrong, data); !errors.Is(err, remote.ErrRejected) || !strings.Contains(err.Error(), "BLAKE3") {
			t.Errorf("mismatched name: %v, want ErrRejected", err)
		}
		for _, bad := range []storage.Handle{eh, wrong} {
			if _, err := b.Stat(ctx, bad); !errors.Is(err, storage.ErrNotExist) {
				t.Errorf("refused upload %s is there: %v", bad, err)
			}
		}
	}
	if v.seen.Load() == 0 {
		t.Error("the verifier was never called")
	}
	if !b.VerifiesUploads() {
		t.Error("a server with a verifier does not say so")
	}
	// streamed (spooled) saves, as packs are written
	ps, err := b.SaveStream(ctx, storage.Pack)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("stream"), 1<<18)
	for i := 0; i < len(data); i += 4096 {
		ps.Write(data[i:min(i+4096, len(data))])
	}
	if err := ps.Commit(ctx, nameOf(data)); err != nil {
		t.Fatalf("streamed save: %v", err)
	}
	got, err := b.Load(ctx, storage.Handle{Type: storage.Pack, Name: nameOf(data)}, 0, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("streamed save loads back %d bytes, %v", len(got), err)
	}
}

// flaky fails requests before passing them to the server.
type flaky struct {
	h        http.Handler
	fail503  atomic.Int64 // answer 503 to this many requests
	dropResp atomic.Int64 // serve, then drop the answer, this many times
	requests atomic.Int64
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	if f.fail503.Add(-1) >= 0 {
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	if f.dropResp.Add(-1) >= 0 {
		f.h.ServeHTTP(discard{}, r)
		panic(http.ErrAbortHandler) // the connection breaks after the work was done
	}
	f.h.ServeHTTP(w, r)
}

type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(p []byte) (int, error) { return len(p), nil }
func (discard) WriteHeader(int)             {}

// Idempotent requests are retried on 5xx and broken connections; a save
// whose answer was lost succeeds on the retry (identical object); a
// refusal is not retried.
func TestRetries(t *testing.T) {
	ctx := context.Background()
	repos := newMemRepos("fleet")
	s := startServer(t, repos, server.Options{})
	f := &flaky{h: s.srv.Config.Handler}
	s.srv.Config.Handler = f
	tok := s.token(t, "fleet", "admin")
	b, err := remote.New(s.url+"/fleet", remote.Options{Token: tok, Fingerprint: s.fp, Retries: 4, RetryDelay: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, storage.Handle{Type: storage.Config}); !errors.Is(err, storage.ErrNotExist) {
		t.Fatal(err)
	}
	if b.VerifiesUploads() {
		t.Error("a server without a verifier claims to verify uploads")
	}
	data := []byte("retried")
	h := storage.Handle{Type: storage.Snapshot, Name: nameOf(data)}
	f.fail503.Store(2)
	if err := b.Save(ctx, h, data); err != nil {
		t.Fatalf("save after two 503s: %v", err)
	}
	data2 := []byte("answer lost")
	h2 := storage.Handle{Type: storage.Snapshot, Name: nameOf(data2)}
	f.dropResp.Store(1)
	if err := b.Save(ctx, h2, data2); err != nil {
		t.Fatalf("save whose answer was lost: %v", err)
	}
	f.dropResp.Store(1)
	if err := b.Remove(ctx, h2); err != nil {
		t.Fatalf("remove whose answer was lost: %v", err)
	}
	f.fail503.Store(3)
	if got, err := b.Load(ctx, h, 0, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("load after 503s: %q %v", got, err)
	}
	f.fail503.Store(100)
	if _, err := b.Stat(ctx, h); err == nil || !strings.Contains(err.Error(), "gave up after 5 attempts") {
		t.Errorf("endless 503: %v", err)
	}
	f.fail503.Store(0)
	bad, _ := remote.New(s.url+"/fleet", remote.Options{Token: "floe_0000000000000000_nope", Fingerprint: s.fp, Retries: 4, RetryDelay: 1})
	before := f.requests.Load()
	if _, err := bad.Stat(ctx, h); !errors.Is(err, remote.ErrUnauthorized) {
		t.Errorf("bad token: %v", err)
	}
	if n := f.requests.Load() - before; n != 1 {
		t.Errorf("a 401 was retried: %d requests", n)
	}
}

// A credential has at most MaxUploadsPerToken uploads in progress; more
// are answered 429 (which clients retry).
func TestUploadCap(t *testing.T) {
	repos := newMemRepos("fleet")
	s := startServer(t, repos, server.Options{MaxUploadsPerToken: 1})
	tok := s.token(t, "fleet", "backup")
	c := s.srv.Client()
	data := bytes.Repeat([]byte("z"), 1<<20)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PUT", s.url+"/fleet/data/"+nameOf(data), pr)
	req.ContentLength = int64(len(data))
	req.Header.Set("Authorization", "Bearer "+tok)
	done := make(chan int)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			t.Error(err)
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	pw.Write(data[:1000])
	id := strings.Split(tok, "_")[1]
	for s.h.UploadsInProgress(id) == 0 {
		time.Sleep(time.Millisecond) // until the first upload holds its slot
	}
	other := []byte("second")
	req2, _ := http.NewRequest("PUT", s.url+"/fleet/data/"+nameOf(other), bytes.NewReader(other))
	req2.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.Do(req2)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("second concurrent upload: %d, want 429 with Retry-After", resp.StatusCode)
	}
	pw.Write(data[1000:])
	pw.Close()
	if code := <-done; code != http.StatusCreated {
		t.Errorf("first upload: %d", code)
	}
}
