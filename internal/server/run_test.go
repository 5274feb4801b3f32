package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
)

// An upload that stops sending is cut off after the idle timeout and
// leaves nothing behind.
func TestStalledUpload(t *testing.T) {
	root, repos := fleetRoot(t)
	s := startServer(t, repos, server.Options{BodyIdleTimeout: 300 * time.Millisecond})
	tok := s.token(t, "fleet", "backup")
	data := bytes.Repeat([]byte("s"), 3<<20)
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("PUT", s.url+"/fleet/data/"+nameOf(data), pr)
	req.ContentLength = int64(len(data))
	req.Header.Set("Authorization", "Bearer "+tok)
	go pw.Write(data[:2<<20]) // then nothing more
	start := time.Now()
	resp, err := s.srv.Client().Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("stalled upload answered %d", resp.StatusCode)
		}
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("stalled upload cut off only after %v", d)
	}
	var left []string
	filepath.WalkDir(filepath.Join(root, "fleet"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) != 0 {
		t.Errorf("a stalled upload left %v", left)
	}
}

// Run stops on its context's end (SIGTERM in floe serve) gracefully: an
// upload in progress completes, then Run returns nil.
func TestGracefulShutdown(t *testing.T) {
	root, state := t.TempDir(), t.TempDir()
	repos, _ := server.NewRootDir(root)
	be, err := repos.Create(context.Background(), "fleet")
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Save(context.Background(), storage.Handle{Type: storage.Config}, []byte("config")); err != nil {
		t.Fatal(err)
	}
	tokens, _ := server.OpenTokenStore(state)
	tok, _, err := tokens.Add("fleet", "h", server.RoleBackup)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- server.Run(ctx, server.Config{Root: root, StateDir: state, Listen: "127.0.0.1:0",
			Ready: func(addr, fp string, created bool) { ready <- addr }})
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	data := bytes.Repeat([]byte("g"), 20<<20)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PUT", "https://"+addr+"/fleet/data/"+nameOf(data), pr)
	req.ContentLength = int64(len(data))
	req.Header.Set("Authorization", "Bearer "+tok)
	answer := make(chan int, 1)
	go func() {
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			answer <- 0
			return
		}
		resp.Body.Close()
		answer <- resp.StatusCode
	}()
	// More than the server's per-stream receive window (16 MiB, run.go):
	// this Write returns only once the handler is reading the body, so
	// the shutdown below meets a request in flight. (2.5 MiB, written when
	// the windows were 1 MiB, no longer was: on a loaded machine the
	// request could still be unread when the shutdown began, and was
	// refused with a GOAWAY.)
	pw.Write(data[:17<<20])
	cancel() // SIGTERM
	time.Sleep(200 * time.Millisecond)
	pw.Write(data[17<<20:])
	pw.Close()
	if code := <-answer; code != http.StatusCreated {
		t.Errorf("upload during shutdown: %d", code)
	}
	if err := <-done; err != nil {
		t.Errorf("Run after shutdown: %v", err)
	}
	if fi, err := be.Stat(context.Background(), storage.Handle{Type: storage.Pack, Name: nameOf(data)}); err != nil || fi.Size != int64(len(data)) {
		t.Errorf("the upload finished during shutdown is not stored: %v", err)
	}
	if _, err := client.Get("https://" + addr + "/fleet/config"); err == nil {
		t.Errorf("the server still answers after Run returned")
	}
}

// Opening a repository removes what uploads cut off by a crash left
// (temporary files older than an hour), and nothing younger.
func TestSweepLeftovers(t *testing.T) {
	root := t.TempDir()
	repos, _ := server.NewRootDir(root)
	be, err := repos.Create(context.Background(), "fleet")
	if err != nil {
		t.Fatal(err)
	}
	if err := be.Save(context.Background(), storage.Handle{Type: storage.Config}, []byte("config")); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(root, "fleet", "data", "ab", ".tmp-old")
	young := filepath.Join(root, "fleet", "data", ".tmp-young")
	for _, p := range []string{old, young} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ago := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, ago, ago)
	fresh, _ := server.NewRootDir(root) // a restarted server
	if _, err := fresh.Open(context.Background(), "fleet"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(old); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the old leftover was not removed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("a young temporary file (an upload in progress) was removed: %v", err)
	}
}

// A pack upload over HTTP/1.1 (how clients send packs) whose connection
// breaks mid-body leaves nothing in the repository, neither under its
// name nor as a temporary file, whether the server holds the upload in
// memory to verify it or streams it into the backend; the same upload
// sent whole afterwards is stored.
func TestUploadCutOffOverHTTP1(t *testing.T) {
	for _, c := range []struct {
		name string
		opts server.Options
	}{{"verified", server.Options{Verifier: server.NewFormatVerifier()}}, {"streamed", server.Options{}}} {
		t.Run(c.name, func(t *testing.T) {
			root, repos := fleetRoot(t)
			s := startServer(t, repos, c.opts)
			tok := s.token(t, "fleet", "backup")
			// a real pack (the verifier accepts it), of 3 MiB
			data, _ := buildPack(-1, bytes.Repeat([]byte("c"), 1<<20), bytes.Repeat([]byte("d"), 2<<20))
			path := "/fleet/data/" + nameOf(data)
			conn, err := tls.Dial("tcp", s.srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			if p := conn.ConnectionState().NegotiatedProtocol; p != "http/1.1" && p != "" {
				t.Fatalf("negotiated %q", p)
			}
			fmt.Fprintf(conn, "PUT %s HTTP/1.1\r\nHost: floe\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n", path, tok, len(data))
			if _, err := conn.Write(data[:2<<20]); err != nil {
				t.Fatal(err)
			}
			conn.Close()
			var left []string
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				left = left[:0]
				filepath.WalkDir(filepath.Join(root, "fleet"), func(p string, d fs.DirEntry, err error) error {
					if err == nil && !d.IsDir() {
						left = append(left, p)
					}
					return nil
				})
				if len(left) == 0 || time.Now().After(deadline) {
					break
				}
			}
			if len(left) != 0 {
				t.Fatalf("an upload cut off over HTTP/1.1 left %v", left)
			}
			// the upload slot is free and nothing claims the name
			req, _ := http.NewRequest("PUT", s.url+path, bytes.NewReader(data))
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := s.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("whole upload after the cut-off one: %d", resp.StatusCode)
			}
		})
	}
}

// fleetRoot returns a server root directory holding repository fleet.
func fleetRoot(t *testing.T) (string, *server.RootDir) {
	t.Helper()
	root := t.TempDir()
	repos, err := server.NewRootDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repos.Create(context.Background(), "fleet"); err != nil {
		t.Fatal(err)
	}
	return root, repos
}
