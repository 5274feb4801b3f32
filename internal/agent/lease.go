package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/fleet"
)

// Leaser grants the right to run: the agent takes a lease before each run
// and releases it after. Without a server, LocalLeases lets one run at a
// time use a repository on this host; a floe server will grant leases
// across the fleet (how many hosts back up to it at once).
type Leaser interface {
	// Lease waits for a lease for a run of job (or ctx's end) and returns
	// the function that releases it.
	Lease(ctx context.Context, job *Job, task fleet.Task) (release func(), err error)
}

// LocalLeases are locks on files in Dir, one per repository, so that one
// run at a time uses a repository: runs of the daemon and `floe agent run`
// alike, in this process or another. The same job is never run twice at
// once either, since both runs would use its repository.
type LocalLeases struct {
	Dir string
	// Poll is how often a waiting run tries again (default 200ms).
	Poll time.Duration
	// Waiting, if set, is called once when a run has to wait.
	Waiting func(job *Job)
}

func (l *LocalLeases) Lease(ctx context.Context, job *Job, task fleet.Task) (func(), error) {
	if err := os.MkdirAll(l.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	sum := sha256.Sum256([]byte(job.Repository))
	path := filepath.Join(l.Dir, "repository-"+hex.EncodeToString(sum[:8])+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	poll := l.Poll
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	for waited := false; ; waited = true {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if err != unix.EWOULDBLOCK && err != unix.EINTR {
			f.Close()
			return nil, fmt.Errorf("lease %s: %w", path, err)
		}
		if !waited && l.Waiting != nil {
			l.Waiting(job)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(poll):
		}
	}
	return func() { f.Close() }, nil // closing releases the lock
}

// lockDaemon makes sure one daemon at a time uses a state directory.
func lockDaemon(stateDir string) (unlock func(), err error) {
	path := filepath.Join(stateDir, "agent.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, fmt.Errorf("another floe agent runs with the state directory %s", stateDir)
		}
		return nil, fmt.Errorf("agent lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
