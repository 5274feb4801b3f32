package s3

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/s3/s3test"
	"github.com/floe-backup/floe/internal/storage/storagetest"
)

// stalledBody is an answer whose server sends nothing more: a read waits
// until the request is canceled, as a read of a stalled connection does.
type stalledBody struct {
	ctx context.Context
	r   io.ReadCloser
}

func (s *stalledBody) Read(p []byte) (int, error) {
	<-s.ctx.Done()
	return 0, s.ctx.Err()
}

func (s *stalledBody) Close() error { return s.r.Close() }

// An S3 server whose answers stall is given up on after the idle
// timeout (each attempt), never waited for forever; a read that resumes
// after a stalled attempt gets the whole object.
func TestStalledServer(t *testing.T) {
	defer func(u time.Duration) { backoffUnit = u }(backoffUnit)
	backoffUnit = time.Millisecond
	srv := s3test.Start(t)
	ft := newFaultTransport(t)
	b := backendWith(t, srv, Config{Transport: ft, IdleTimeout: 200 * time.Millisecond})
	ctx := context.Background()
	h := storage.Handle{Type: storage.Pack, Name: storagetest.Name("stall")}
	data := randomBytes(2, 1<<20)
	if err := b.Save(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	stalls := 0
	ft.fault = func(req *http.Request, resp *http.Response) (*http.Response, error) {
		if req.Method == http.MethodGet && resp.StatusCode/100 == 2 && stalls > 0 {
			stalls--
			resp.Body = &stalledBody{ctx: req.Context(), r: resp.Body}
		}
		return resp, nil
	}
	within := func(f func() error) error {
		errc := make(chan error, 1)
		go func() { errc <- f() }()
		select {
		case err := <-errc:
			return err
		case <-time.After(60 * time.Second):
			t.Fatal("the client waits for a stalled server")
			return nil
		}
	}
	stalls = 1
	if err := within(func() error {
		got, err := b.Load(ctx, h, 100, 1000)
		if err == nil && string(got) != string(data[100:1100]) {
			t.Errorf("resumed load: other bytes")
		}
		return err
	}); err != nil {
		t.Errorf("a load whose first answer stalled: %v", err)
	}
	stalls = 1000
	err := within(func() error { _, err := b.Load(ctx, h, 0, 0); return err })
	if err == nil || !strings.Contains(err.Error(), "sent nothing") {
		t.Errorf("a load whose every answer stalls: %v", err)
	}
}
