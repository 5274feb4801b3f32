// Package mount serves the snapshots of a repository as a read-only FUSE
// file system (github.com/hanwen/go-fuse/v2), so that any tool (cat, cp -a,
// rsync, diff -r) can browse and copy backed-up files with their metadata.
//
// Layout of the mount point (times in the local time zone):
//
//	ids/<short id>/...                       each snapshot, with the full paths it backed up
//	hosts/<host>/<2006-01-02T15:04:05>/...   the same, by host and time
//	hosts/<host>/latest -> <time>            the host's newest snapshot
//	dates/<2006-01-02>/<host>-<15:04:05>/... the same, by day
//	latest -> ids/<short id>                 the newest snapshot
//
// Short IDs are the first 8 hex digits, longer where two snapshots share
// them; names that would collide get "-<short id>" appended. The set of
// snapshots is read at mount time.
//
// Files show their metadata as backed up: type (FIFOs, sockets and device
// nodes too), mode, owner, size, times, link count, symlink targets and
// extended attributes. Inode numbers are stable hashes of the path (names
// of a hard-linked file share one), and each of the views above numbers
// its inodes separately. The mount is read-only, nosuid and nodev.
//
// Trees are loaded when a directory is first looked into and kept in a
// bounded cache. A read maps its offset to content blobs by binary search
// over the blobs' offsets (computed once per file from the index), loads
// them through a bounded LRU cache of decrypted blobs, and on sequential
// access loads the next blobs ahead, so reading a file is linear in its
// size.
package mount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
)

// Defaults of Options.
const (
	DefaultCacheBytes = 64 << 20
	DefaultReadAhead  = 2

	treeCacheNodes = 256 << 10 // about 50 MiB of decoded nodes
)

// Options tune a mount.
type Options struct {
	// Filter selects the snapshots to show; empty shows all.
	Filter snapshot.Filter
	// CacheBytes bounds the cache of decrypted blobs (DefaultCacheBytes).
	CacheBytes int64
	// ReadAhead is how many blobs are loaded ahead of a sequential reader
	// (DefaultReadAhead); negative turns read-ahead off.
	ReadAhead int
	// AllowOther lets other users use the mount; the kernel then checks
	// the permissions as backed up (default_permissions). Users other
	// than root need user_allow_other in /etc/fuse.conf.
	AllowOther bool
	// Logf, if set, is told about read errors and damaged snapshots.
	Logf func(format string, args ...any)
	// Debug logs every FUSE request (through Logf's writer: stderr).
	Debug bool
}

// ErrNoFUSE means FUSE cannot be used here.
var ErrNoFUSE = errors.New("FUSE is not available")

// fusermount returns the path of fusermount3 (or the older fusermount).
func fusermount() (string, error) {
	for _, name := range []string{"fusermount3", "fusermount"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		if p := "/bin/" + name; isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: fusermount3 not found (install the fuse3 package, e.g. apt install fuse3)", ErrNoFUSE)
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// Available reports why FUSE cannot be used here, or nil.
func Available() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("%w: /dev/fuse: %v (load the fuse kernel module; in a container, pass the device /dev/fuse and allow mounting)", ErrNoFUSE, err)
	}
	_, err := fusermount()
	return err
}

// Check reports why dir cannot be mounted on (FUSE unavailable, no such
// directory), or nil.
func Check(dir string) error {
	if err := Available(); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("mount point %s does not exist: create the directory first", dir)
	case err != nil:
		return fmt.Errorf("mount point: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("mount point %s is not a directory", dir)
	}
	return nil
}

// Server is a mounted repository.
type Server struct {
	dir       string
	server    *fuse.Server
	cancel    context.CancelFunc
	f         *fsys
	snapshots int
	done      chan struct{}
	unmountMu sync.Mutex
}

// Mount mounts the snapshots of r (whose index must be loaded) on the
// existing directory dir and serves them until Unmount, or until someone
// else unmounts dir (then Done is closed).
func Mount(ctx context.Context, r *repo.Repository, dir string, opts Options) (*Server, error) {
	if err := Check(dir); err != nil {
		return nil, err
	}
	snaps, errs, err := snapshot.Select(ctx, r, nil, opts.Filter)
	if err != nil {
		return nil, err
	}
	for _, e := range errs {
		if opts.Logf != nil {
			opts.Logf("warning: %v (not shown)", e)
		}
	}
	if opts.CacheBytes <= 0 {
		opts.CacheBytes = DefaultCacheBytes
	}
	if opts.ReadAhead == 0 {
		opts.ReadAhead = DefaultReadAhead
	}
	// The cache must hold a blob being read and those read ahead of it.
	maxChunk := int64(r.ChunkerParams().Max)
	cacheBytes := max(opts.CacheBytes, int64(max(opts.ReadAhead, 0)+2)*maxChunk)

	fctx, cancel := context.WithCancel(context.Background())
	f := &fsys{
		r:         r,
		trees:     walk.NewCache(snapshot.NewReadAheadTrees(r), treeCacheNodes),
		blobs:     newBlobCache(fctx, r, cacheBytes, 2*max(opts.ReadAhead, 1)),
		readAhead: opts.ReadAhead,
		uid:       uint32(os.Getuid()),
		gid:       uint32(os.Getgid()),
		logf:      opts.Logf,
		errShown:  map[string]bool{},
		zeroIDs:   map[uint32]hash.ID{},
	}
	layout := buildLayout(snaps, time.Local)
	root := &virtDir{f: f, mtime: layout.mtime, nlink: 5}
	timeout := time.Hour // nothing in the mount ever changes
	mopts := []string{"ro", "nosuid", "nodev"}
	if opts.AllowOther {
		mopts = append(mopts, "default_permissions")
	}
	fopts := &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:     "floe:" + r.Backend().Location(),
			Name:       "floe",
			Options:    mopts,
			AllowOther: opts.AllowOther,
			MaxWrite:   1 << 20, // reads of up to 1 MiB
			Debug:      opts.Debug,
		},
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		NullPermissions: true, // mode 000 stays 000
		OnAdd: func(ctx context.Context) {
			f.materialize(ctx, &root.Inode, layout)
		},
	}
	server, err := fs.Mount(dir, root, fopts)
	if err != nil {
		cancel()
		msg := strings.TrimSpace(err.Error())
		if strings.Contains(msg, "fusermount") {
			// fusermount3 printed why on stderr
			msg += " (see fusermount3's message; mounting needs the fuse kernel module, a setuid-root fusermount3, and in a container CAP_SYS_ADMIN)"
		}
		return nil, fmt.Errorf("mount %s: %s", dir, msg)
	}
	s := &Server{dir: dir, server: server, cancel: cancel, f: f, snapshots: len(snaps), done: make(chan struct{})}
	go func() {
		server.Wait()
		cancel()
		close(s.done)
	}()
	return s, nil
}

// Dir returns the mount point.
func (s *Server) Dir() string { return s.dir }

// Snapshots returns the number of snapshots shown.
func (s *Server) Snapshots() int { return s.snapshots }

// Done is closed when the file system is no longer served: after Unmount,
// or when someone ran fusermount3 -u.
func (s *Server) Done() <-chan struct{} { return s.done }

// ErrBusy is wrapped by Unmount when the mount point is in use.
var ErrBusy = errors.New("mount point is busy")

// Unmount unmounts and waits until serving stops. If the mount point is
// busy (a shell's working directory, an open file), it fails with an error
// wrapping ErrBusy and the mount stays usable.
func (s *Server) Unmount() error {
	s.unmountMu.Lock()
	defer s.unmountMu.Unlock()
	select {
	case <-s.done:
		return nil
	default:
	}
	if err := s.server.Unmount(); err != nil {
		select {
		case <-s.done: // unmounted meanwhile
			return nil
		default:
		}
		msg := strings.TrimSpace(err.Error())
		if strings.Contains(msg, "busy") {
			return fmt.Errorf("unmount %s: %w (%s)", s.dir, ErrBusy, msg)
		}
		return fmt.Errorf("unmount %s: %s", s.dir, msg)
	}
	<-s.done
	return nil
}

// UnmountLazy detaches the mount point now (fusermount3 -u -z); the file
// system stays served for the processes that still use it until they
// leave, when Done is closed.
func (s *Server) UnmountLazy() error {
	bin, err := fusermount()
	if err != nil {
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-u", "-z", s.dir)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s -u -z %s: %v: %s", bin, s.dir, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// CacheStats returns the number of blobs loaded, the reads served from the
// blob cache, and the cache's size in bytes.
func (s *Server) CacheStats() (loads, hits uint64, size int64) { return s.f.blobs.stats() }
