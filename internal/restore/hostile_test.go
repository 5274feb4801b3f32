package restore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// oneFileTree stores a tree of one file "f" holding content.
func oneFileTree(t *testing.T, r *repo.Repository, content []byte) hash.Ref {
	t.Helper()
	id := saveBlob(t, r, repo.DataBlob, content)
	enc, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: []*snapshot.Node{
		{Name: "f", Type: snapshot.TypeFile, Mode: 0o644, Size: uint64(len(content)), Content: []hash.Ref{id}, ChunkSizes: []uint32{uint32(len(content))}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return saveTree(t, r, enc)
}

// runBounded runs a restore that must not block: after 20 s it opens the
// FIFO at fifo from the other side, so that a restore stuck in open
// finishes, and fails the test.
func runBounded(t *testing.T, r *repo.Repository, tree hash.Ref, opts Options, fifo string) (*Result, error) {
	t.Helper()
	type out struct {
		res *Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := Run(context.Background(), r, tree, "", opts)
		done <- out{res, err}
	}()
	select {
	case o := <-done:
		return o.res, o.err
	case <-time.After(20 * time.Second):
		for _, flag := range []int{unix.O_RDONLY, unix.O_WRONLY} {
			if fd, err := unix.Open(fifo, flag|unix.O_NONBLOCK, 0); err == nil {
				defer unix.Close(fd)
			}
		}
		<-done
		t.Fatal("restore blocked on a FIFO")
	}
	return nil, nil
}

// What a case-insensitive directory makes of a snapshot's names "F"
// (a FIFO or device node) and "f" (a file): restore creates the FIFO,
// and the file's name then finds it. Restore must neither open the FIFO
// (it would wait forever for a reader, or for a writer when it reads a
// file back to resume) nor the device node (it would write to the
// device): it reports the file as not restored. The kernel here has no
// case-insensitive file system (no CONFIG_UNICODE), so the test hook
// puts the node there between the plan and the files.
func TestNoOpenOfWhatAppearsAtAFilesName(t *testing.T) {
	content := []byte("from the snapshot")
	r := newRepo(t)
	tree := oneFileTree(t, r, content)
	mkfifo := func(p string) error { return unix.Mkfifo(p, 0o600) }
	mknull := func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))) }
	for _, c := range []struct {
		name     string
		make     func(string) error
		existing []byte // a file "f" already in the target
		verify   bool
	}{
		{"fifo-in-fresh-dir", mkfifo, nil, false},
		{"fifo-resume", mkfifo, []byte("in the target....."), true},
		{"fifo-overwrite", mkfifo, []byte("shorter"), false},
		{"device-in-fresh-dir", mknull, nil, false},
		{"device-resume", mknull, []byte("in the target....."), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			target := t.TempDir()
			f := filepath.Join(target, "f")
			if c.existing != nil {
				if err := os.WriteFile(f, c.existing, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			made := false
			testHookAfterPlan = func(string) {
				os.Remove(f)
				if err := c.make(f); err != nil {
					t.Log(err)
					return
				}
				made = true
			}
			defer func() { testHookAfterPlan = nil }()
			res, err := runBounded(t, r, tree, Options{Target: target, Verify: c.verify}, f)
			if !made {
				t.Skip("cannot make the node (not root?)")
			}
			if err != nil {
				t.Fatal(err)
			}
			if !errorsHave(res.Errors, errCollision) {
				t.Errorf("want the file refused as a collision: %v", res.Errors)
			}
			if res.Files != 0 {
				t.Errorf("restored %d files", res.Files)
			}
			var st unix.Stat_t
			if err := unix.Lstat(f, &st); err != nil || st.Mode&unix.S_IFMT == unix.S_IFREG {
				t.Errorf("the node was replaced: %v, mode %o", err, st.Mode)
			}
		})
	}
}

func errorsHave(errs []error, target error) bool {
	for _, err := range errs {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}
