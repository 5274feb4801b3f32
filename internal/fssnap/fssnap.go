//go:build linux

// Package fssnap gives a backup a frozen view of the file systems it reads:
// for each path it makes a read-only snapshot of the btrfs subvolume or the
// LVM logical volume the path lives on, and says where in the snapshot to
// read the path (backup.Options.SourceRoot). Remove deletes the snapshots
// again; it must run however the backup ends.
//
// Every snapshot is named with Prefix, so that one left behind by a killed
// run can be recognized: `lvs` shows LVs named floe-snap-*, and btrfs
// snapshots are directories .floe-snap-* at the root of their subvolume
// (`btrfs subvolume list`). Create warns about such leftovers; it does not
// remove them, as another backup may be using them.
//
// The tools are run as commands: btrfs (Debian package btrfs-progs), lvs,
// lvcreate, lvremove (lvm2), mount and umount (mount). Only root may make
// snapshots.
package fssnap

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/floe-backup/floe/internal/pathmatch"

	"golang.org/x/sys/unix"
)

// Kind is a kind of file system snapshot.
type Kind string

// The kinds of snapshots.
const (
	Btrfs Kind = "btrfs"
	LVM   Kind = "lvm"
)

// Prefix starts the name of every snapshot floe makes.
const Prefix = "floe-snap-"

// ParseKind checks the name of a kind.
func ParseKind(s string) (Kind, error) {
	switch Kind(s) {
	case Btrfs, LVM:
		return Kind(s), nil
	}
	return "", fmt.Errorf("unknown file system snapshot kind %q: use lvm or btrfs", s)
}

// Options for Create.
type Options struct {
	Kind Kind
	// Size is the size of LVM snapshots (the room for blocks that change
	// while the backup runs): empty for 10% of the origin volume, a size
	// such as 2G (lvcreate -L), or a percentage such as 20% of the origin
	// or 50%FREE of the volume group's free space (lvcreate -l). Snapshots
	// of thin volumes need no size unless one is given.
	Size string
	// Warn receives notes: snapshots left behind by earlier runs, file
	// systems mounted below a path that its snapshot does not hold.
	Warn func(msg string)

	sys *system // nil: this machine
}

// tools lists the commands each kind runs, with their Debian packages.
var tools = map[Kind][][2]string{
	Btrfs: {{"btrfs", "btrfs-progs"}},
	LVM:   {{"lvs", "lvm2"}, {"lvcreate", "lvm2"}, {"lvremove", "lvm2"}, {"mount", "mount"}, {"umount", "mount"}},
}

// Preflight checks what Create needs before anything is done: a known kind,
// a valid size, root, and the tools. Create checks it too.
func Preflight(opts Options) error {
	sys := opts.sys
	if sys == nil {
		sys = realSystem()
	}
	return sys.preflight(opts)
}

func (sys *system) preflight(opts Options) error {
	if _, err := ParseKind(string(opts.Kind)); err != nil {
		return err
	}
	if opts.Kind == LVM {
		if _, err := sizeArgs(opts.Size); err != nil {
			return err
		}
	} else if opts.Size != "" {
		return errors.New("a snapshot size is for LVM snapshots; btrfs snapshots need no size")
	}
	if sys.euid() != 0 {
		return fmt.Errorf("%s snapshots %w: only root can make and mount them", opts.Kind, ErrNeedsRoot)
	}
	for _, t := range tools[opts.Kind] {
		if _, err := sys.lookPath(t[0]); err != nil {
			return fmt.Errorf("%s snapshots need the command %s, which is not installed: install the Debian package %s", opts.Kind, t[0], t[1])
		}
	}
	return nil
}

// Set is the snapshots of one backup.
type Set struct {
	kind    Kind
	sys     *system
	sources map[string]string
	snaps   []*snap // in the order made
	byKey   map[string]*snap
	// nested are the places below snapshotted paths that their snapshots
	// do not hold: other file systems, other btrfs subvolumes
	nested []boundary
}

// boundary is a directory where another file system or subvolume starts.
type boundary struct{ path, what string }

// snap is one snapshot and what has been done for it so far, so that
// Remove undoes exactly that.
type snap struct {
	kind Kind
	of   string // what was snapshotted: a subvolume's path, or vg/lv
	// btrfs
	path string // the snapshot subvolume
	// LVM
	vg, lv, name string // the snapshot is vg/name
	thin         bool
	dev          string // the snapshot's device
	dir          string // mount point
	mounted      bool
	// both
	created bool
	removed bool
	root    string // where the snapshot's file system root is visible
}

// Create makes a snapshot of the file system of each path (absolute) and
// returns where to read each. On error, whatever it made is removed again.
// Cancelling ctx stops between steps; a command already started finishes
// (a snapshot half made is harder to clean up than one made).
func Create(ctx context.Context, paths []string, opts Options) (set *Set, err error) {
	sys := opts.sys
	if sys == nil {
		sys = realSystem()
	}
	if err := sys.preflight(opts); err != nil {
		return nil, err
	}
	warn := opts.Warn
	if warn == nil {
		warn = func(string) {}
	}
	mounts, err := sys.mountinfo()
	if err != nil {
		return nil, err
	}
	s := &Set{kind: opts.Kind, sys: sys, sources: map[string]string{}, byKey: map[string]*snap{}}
	defer func() {
		if err != nil {
			if rerr := s.Remove(context.WithoutCancel(ctx)); rerr != nil {
				err = fmt.Errorf("%w\n%v", err, rerr)
			}
			set = nil
		}
	}()
	warned := map[string]bool{}
	var given []string
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("path %s is not absolute", p)
		}
		p = filepath.Clean(p)
		given = append(given, p)
		if _, ok := s.sources[p]; ok {
			continue
		}
		if rdev, ok := sys.blockDev(p); ok {
			// a block device (backup --image): its own snapshot
			if opts.Kind != LVM {
				return nil, fmt.Errorf("path %s is a block device: a %s snapshot holds files, not devices; use --fs-snapshot lvm for a logical volume", p, opts.Kind)
			}
			src, err := s.lvmDevice(ctx, p, rdev, opts.Size, warn, warned)
			if err != nil {
				return nil, err
			}
			s.sources[p] = src
			continue
		}
		real, isDir, err := sys.resolve(p)
		if err != nil {
			return nil, fmt.Errorf("path %s: %w", p, err)
		}
		m, ok := FindMount(mounts, real)
		if !ok {
			return nil, fmt.Errorf("path %s: no mount found for %s in /proc/self/mountinfo", p, real)
		}
		var src string
		switch opts.Kind {
		case Btrfs:
			src, err = s.btrfs(ctx, p, real, isDir, m, warn, warned)
		case LVM:
			src, err = s.lvm(ctx, p, real, m, opts.Size, warn, warned)
		}
		if err != nil {
			return nil, err
		}
		s.sources[p] = src
	}
	for _, m := range mounts {
		if strings.HasPrefix(m.Source, "/dev/") {
			s.nested = append(s.nested, boundary{m.Point, fmt.Sprintf("another file system (%s on %s)", m.FSType, m.Source)})
		}
	}
	for _, note := range notSnapshotted(s.nested, given, s.sources, opts.Kind) {
		warn(note)
	}
	return s, nil
}

// notSnapshotted names the file systems and subvolumes below a path given
// that no snapshot covers: the snapshot of the path does not hold them, so
// they are saved as empty directories.
func notSnapshotted(nested []boundary, given []string, sources map[string]string, kind Kind) []string {
	var notes []string
	seen := map[string]bool{}
	paths := append([]string(nil), given...)
	sort.Strings(paths)
	for _, p := range paths {
		for _, b := range nested {
			if b.path == p || !pathmatch.Within(b.path, p) || seen[b.path] {
				continue
			}
			// covered: read from a snapshot of its own (given as a path,
			// or the root of a file system of a path given)
			if _, covered := sources[b.path]; !covered {
				seen[b.path] = true
				notes = append(notes, fmt.Sprintf("note: %s is %s; the %s snapshot of %s does not hold it, so it is saved as an empty directory: give it as a path of its own to back it up", b.path, b.what, kind, p))
			}
		}
	}
	return notes
}

// Sources maps each path given to Create, and the root of each file system
// or subvolume snapshotted, to where to read it (the second lets a path
// hold another's file system: backing up / and /home, /home is read from
// its own snapshot).
func (s *Set) Sources() map[string]string {
	out := make(map[string]string, len(s.sources))
	for k, v := range s.sources {
		out[k] = v
	}
	return out
}

// Describe lists the snapshots, one line each.
func (s *Set) Describe() []string {
	var out []string
	for _, sn := range s.snaps {
		switch sn.kind {
		case Btrfs:
			out = append(out, fmt.Sprintf("btrfs snapshot %s of %s", sn.path, sn.of))
		case LVM:
			if !sn.mounted {
				out = append(out, fmt.Sprintf("LVM snapshot %s/%s of %s, read as the device %s", sn.vg, sn.name, sn.of, sn.dev))
				continue
			}
			out = append(out, fmt.Sprintf("LVM snapshot %s/%s of %s, mounted at %s", sn.vg, sn.name, sn.of, sn.dir))
		}
	}
	return out
}

// ErrNeedsRoot is wrapped by Preflight's error when floe does not run as
// root.
var ErrNeedsRoot = errors.New("need root")

// ErrOverflowed is wrapped by Check's error about an LVM snapshot that ran
// out of room: it needs a larger size.
var ErrOverflowed = errors.New("overflowed")

// Check reports a snapshot that became unusable while the backup read it:
// an LVM snapshot whose room for changed blocks ran out is invalidated by
// the kernel, and what was read from it after that is missing.
func (s *Set) Check(ctx context.Context) error {
	if s == nil {
		return nil
	}
	var errs []error
	for _, sn := range s.snaps {
		if sn.kind != LVM || !sn.created || sn.removed || sn.thin {
			continue
		}
		out, err := s.sys.run(ctx, "lvs", "--noheadings", "-o", "lv_attr,snap_percent", sn.vg+"/"+sn.name)
		if err != nil {
			continue
		}
		f := strings.Fields(out)
		if len(f) > 0 && len(f[0]) >= 5 && f[0][4] == 'I' {
			errs = append(errs, fmt.Errorf("the LVM snapshot %s/%s of %s %w while the backup read it: files read after that are missing from the backup", sn.vg, sn.name, sn.of, ErrOverflowed))
		}
	}
	return errors.Join(errs...)
}

// Remove unmounts and deletes every snapshot of the set, in reverse order;
// it goes on after an error and says how to finish by hand. Calling it again
// does nothing more. Give it a context that is not cancelled (the backup's
// may be, after an interrupt).
func (s *Set) Remove(ctx context.Context) error {
	if s == nil {
		return nil
	}
	var errs []error
	for i := len(s.snaps) - 1; i >= 0; i-- {
		sn := s.snaps[i]
		if sn.removed {
			continue
		}
		var err error
		switch sn.kind {
		case Btrfs:
			err = s.removeBtrfs(ctx, sn)
		case LVM:
			err = s.removeLVM(ctx, sn)
		}
		if err != nil {
			errs = append(errs, err)
		} else {
			sn.removed = true
		}
	}
	return errors.Join(errs...)
}

// retry runs fn up to n times while it fails: a file system just used (or
// udev probing a new device) can be busy for a moment.
func (sys *system) retry(n int, fn func() error) error {
	var err error
	for i := 0; i < n; i++ {
		if err = fn(); err == nil {
			return nil
		}
		if i < n-1 {
			sys.sleep(time.Duration(i+1) * 200 * time.Millisecond)
		}
	}
	return err
}

// system is what the package uses of the machine, replaced in tests.
type system struct {
	run       func(ctx context.Context, name string, args ...string) (string, error)
	lookPath  func(name string) (string, error)
	euid      func() int
	mountinfo func() ([]Mount, error)
	sysfs     string // normally /sys
	// stat is lstat: device, inode, whether a directory
	stat func(path string) (dev, ino uint64, isDir bool, err error)
	// blockDev reports whether path (symlinks followed) is a block
	// device, and its number
	blockDev   func(path string) (rdev uint64, ok bool)
	resolve    func(path string) (real string, isDir bool, err error)
	mkdirTemp  func() (string, error)
	removeDir  func(path string) error
	glob       func(pattern string) ([]string, error)
	exists     func(path string) bool
	random     func() string
	sleep      func(time.Duration)
	waitDevice time.Duration
}

func realSystem() *system {
	sys := &system{
		lookPath: findTool,
		euid:     os.Geteuid,
		mountinfo: func() ([]Mount, error) {
			f, err := os.Open("/proc/self/mountinfo")
			if err != nil {
				return nil, fmt.Errorf("list mounts: %w", err)
			}
			defer f.Close()
			return ParseMountinfo(f)
		},
		sysfs: "/sys",
		stat: func(path string) (uint64, uint64, bool, error) {
			var st unix.Stat_t
			if err := unix.Lstat(path, &st); err != nil {
				return 0, 0, false, &os.PathError{Op: "lstat", Path: path, Err: err}
			}
			return st.Dev, st.Ino, st.Mode&unix.S_IFMT == unix.S_IFDIR, nil
		},
		blockDev: func(path string) (uint64, bool) {
			var st unix.Stat_t
			if unix.Stat(path, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
				return 0, false
			}
			return st.Rdev, true
		},
		resolve:    resolve,
		mkdirTemp:  func() (string, error) { return os.MkdirTemp("", Prefix) },
		removeDir:  os.Remove,
		glob:       filepath.Glob,
		exists:     func(p string) bool { _, err := os.Stat(p); return err == nil },
		random:     randomName,
		sleep:      time.Sleep,
		waitDevice: 10 * time.Second,
	}
	sys.run = sys.execRun
	return sys
}

// resolve resolves the symlinks of p's parent directories (not of p itself:
// backup saves a symlink as a symlink).
func resolve(p string) (string, bool, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return "", false, err
	}
	if p == "/" {
		return p, true, nil
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return "", false, err
	}
	return filepath.Join(dir, filepath.Base(p)), fi.IsDir(), nil
}

func randomName() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// findTool looks a command up in PATH, then in the sbin directories that a
// PATH of a non-login root shell may lack.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found", name)
}

// execRun runs a command and returns its standard output; its error holds
// the command line and its standard error. The command is not killed when
// ctx is cancelled, and it runs in its own process group so that a Ctrl-C
// at the terminal reaches floe, which then cleans up, but not lvcreate in
// the middle of its work.
func (sys *system) execRun(ctx context.Context, name string, args ...string) (string, error) {
	path, err := sys.lookPath(name)
	if err != nil {
		return "", err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return stdout.String(), fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}
