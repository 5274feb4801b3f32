// Package local stores a repository in a directory of the local file system,
// laid out as docs/FORMAT.md "Layout" describes:
//
//	config
//	keys/<id>
//	data/<first 2 hex>/<id>
//	index/<id>
//	snapshots/<id>
//	gc/<id>
//
// Objects are written atomically and never overwritten: to a temporary file
// ".tmp-<random>" in the final directory, fsynced, moved into place with a
// no-replace rename (or a hard link), then the directory is fsynced.
// Directories are created mode 0700 and files 0600.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/floe-backup/floe/internal/storage"
)

// TempPrefix starts the name of every temporary file.
const TempPrefix = ".tmp-"

// TempMaxAge is the age after which LeftoverTempFiles reports a temporary file.
// No Save takes that long, so an older one was left by a crash.
const TempMaxAge = time.Hour

const (
	dirMode    = 0o700
	configName = "config"
)

// Backend is a repository in a local directory. It is safe for concurrent
// use, also by several processes.
type Backend struct {
	dir string // absolute

	// write writes data to the temporary file; tests replace it to inject
	// errors such as ENOSPC.
	write func(f *os.File, data []byte) error
	// direct: objects written and large ranges read around the page
	// cache (SetDirectIO)
	direct bool
}

var _ storage.Backend = (*Backend)(nil)

// Create makes the directory layout of a new repository in dir (creating dir
// if needed) and returns its backend. It fails with a wrapped
// storage.ErrExist if dir already holds a config. The caller then saves the
// config; until it does, Open refuses the directory.
func Create(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("create repository at %s: %w", dir, err)
	}
	if _, err := os.Lstat(filepath.Join(abs, configName)); err == nil {
		return nil, existError(fmt.Sprintf("a repository exists at %s already (it has a config file): give a new directory", dir))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("create repository at %s: %w", dir, err)
	}
	dirs := []string{abs}
	for _, t := range storage.AllTypes {
		dirs = append(dirs, filepath.Join(abs, string(t)))
	}
	for i := 0; i < 256; i++ {
		dirs = append(dirs, filepath.Join(abs, string(storage.Pack), fmt.Sprintf("%02x", i)))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, dirMode); err != nil {
			return nil, fmt.Errorf("create repository at %s: %w", dir, diskErr(err))
		}
	}
	for _, d := range []string{filepath.Join(abs, string(storage.Pack)), abs} {
		if err := syncDir(d); err != nil {
			return nil, fmt.Errorf("create repository at %s: %w", dir, err)
		}
	}
	_ = syncDir(filepath.Dir(abs)) // best effort: the parent may not be readable
	return &Backend{dir: abs}, nil
}

// existError is a storage.ErrExist that says only its message.
type existError string

func (e existError) Error() string        { return string(e) }
func (e existError) Is(target error) bool { return target == storage.ErrExist }

// Open returns the backend of the existing repository in dir. If dir or its
// config file is missing, the error ("no repository at DIR") wraps
// storage.ErrNotExist.
func Open(dir string) (*Backend, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open repository at %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, storage.NotExist(fmt.Sprintf("no repository at %s: the directory does not exist", dir))
	case err != nil:
		return nil, fmt.Errorf("open repository at %s: %w", dir, err)
	case !fi.IsDir():
		return nil, storage.NotExist(fmt.Sprintf("no repository at %s: it is not a directory", dir))
	}
	fi, err = os.Stat(filepath.Join(abs, configName))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, storage.NotExist(fmt.Sprintf("no repository at %s: the directory has no config file", dir))
	case err != nil:
		return nil, fmt.Errorf("open repository at %s: %w", dir, err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("open repository at %s: config is not a regular file", dir)
	}
	return &Backend{dir: abs}, nil
}

// Location returns the repository's absolute path.
func (b *Backend) Location() string { return b.dir }

// path returns the file of a validated handle.
func (b *Backend) path(h storage.Handle) string {
	switch h.Type {
	case storage.Config:
		return filepath.Join(b.dir, configName)
	case storage.Pack:
		return filepath.Join(b.dir, string(storage.Pack), h.Name[:2], h.Name)
	default:
		return filepath.Join(b.dir, string(h.Type), h.Name)
	}
}

// Save implements storage.Backend.
func (b *Backend) Save(ctx context.Context, h storage.Handle, data []byte) error {
	if err := h.Validate(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	if err := b.save(ctx, h, data); err != nil {
		return fmt.Errorf("save %s: %w", h, err)
	}
	return nil
}

func (b *Backend) save(ctx context.Context, h storage.Handle, data []byte) (err error) {
	final := b.path(h)
	dir := filepath.Dir(final)
	f, err := os.CreateTemp(dir, TempPrefix+"*")
	if errors.Is(err, fs.ErrNotExist) && h.Type != storage.Config {
		// A type directory may be missing, e.g. after a copy that skips
		// empty directories. The repository directory itself must exist.
		if _, serr := os.Stat(b.dir); serr == nil {
			if merr := os.MkdirAll(dir, dirMode); merr != nil {
				return diskErr(merr)
			}
			f, err = os.CreateTemp(dir, TempPrefix+"*")
		}
	}
	if err != nil {
		return diskErr(err)
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				_ = f.Close()
			}
			_ = os.Remove(tmp)
		}
	}()
	write := b.write
	if write == nil {
		write = b.writeData
	}
	if err := write(f, data); err != nil {
		return diskErr(err)
	}
	if err := f.Sync(); err != nil {
		return diskErr(err)
	}
	closed = true
	if err := f.Close(); err != nil {
		return diskErr(err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := renameNoReplace(tmp, final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return storage.ErrExist
		}
		return diskErr(err)
	}
	// The object is complete under its final name; make the name durable.
	if err := syncDir(dir); err != nil {
		return err
	}
	return nil
}

// writeData writes data to the new file f: directly with SetDirectIO
// where it can, else through the page cache.
func (b *Backend) writeData(f *os.File, data []byte) error {
	if b.direct {
		if done, err := writeDirect(f, data); done {
			return err
		}
	}
	return writeAll(f, data)
}

func writeAll(f *os.File, data []byte) error {
	_, err := f.Write(data)
	return err
}

// diskErr names a full disk or exceeded quota plainly; the cause stays
// wrapped (errors.Is(err, syscall.ENOSPC) holds).
func diskErr(err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return fmt.Errorf("disk full: %w", err)
	case errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("disk quota exceeded: %w", err)
	}
	return err
}

// syncDir fsyncs a directory so that names created or removed in it persist.
// File systems that cannot sync directories are tolerated.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil &&
		!errors.Is(err, syscall.EINVAL) && !errors.Is(err, errors.ErrUnsupported) &&
		!errors.Is(err, syscall.ENOTSUP) {
		return fmt.Errorf("sync directory: %w", diskErr(err))
	}
	return nil
}

// openRegular opens a regular file for reading without blocking on FIFOs or
// devices that a hostile repository might hold.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s is not a regular file (%s)", path, fi.Mode().Type())
	}
	return f, fi, nil
}

// notExist turns a missing file into storage.ErrNotExist.
func notExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return storage.ErrNotExist
	}
	return err
}

// Load implements storage.Backend. A range is read with ReadAt, never the
// whole file.
func (b *Backend) Load(ctx context.Context, h storage.Handle, offset, length int64) ([]byte, error) {
	if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	f, fi, err := openRegular(b.path(h))
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", h, notExist(err))
	}
	defer f.Close()
	n, err := storage.CheckRange(offset, length, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, offset); err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("file shrank while reading: %w", io.ErrUnexpectedEOF)
		}
		return nil, fmt.Errorf("load %s: %w", h, err)
	}
	return buf, nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, h storage.Handle) (storage.FileInfo, error) {
	if err := h.Validate(); err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, err)
	}
	fi, err := os.Stat(b.path(h))
	if err != nil {
		return storage.FileInfo{}, fmt.Errorf("stat %s: %w", h, notExist(err))
	}
	if !fi.Mode().IsRegular() {
		return storage.FileInfo{}, fmt.Errorf("stat %s: not a regular file (%s)", h, fi.Mode().Type())
	}
	return storage.FileInfo{Name: h.Name, Size: fi.Size()}, nil
}

// isPrefixDir reports whether name is a data/ subdirectory name (2 hex).
func isPrefixDir(name string) bool {
	return len(name) == 2 && storage.Handle{Type: storage.Pack, Name: name + strings.Repeat("0", storage.NameLen-2)}.Validate() == nil
}

// List implements storage.Backend. It skips temporary files, names that are
// not valid object names and packs in the wrong data/ subdirectory. A missing
// type directory lists nothing.
func (b *Backend) List(ctx context.Context, t storage.FileType, fn func(storage.FileInfo) error) error {
	if err := storage.ValidateListType(t); err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", t, err)
	}
	top := filepath.Join(b.dir, string(t))
	dirs := []string{top}
	if t == storage.Pack {
		entries, err := os.ReadDir(top)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("list %s: %w", t, err)
		}
		dirs = dirs[:0]
		for _, e := range entries {
			if e.IsDir() && isPrefixDir(e.Name()) {
				dirs = append(dirs, filepath.Join(top, e.Name()))
			}
		}
	}
	for _, d := range dirs {
		if err := b.listDir(ctx, t, d, fn); err != nil {
			return fmt.Errorf("list %s: %w", t, err)
		}
	}
	return nil
}

func (b *Backend) listDir(ctx context.Context, t storage.FileType, dir string, fn func(storage.FileInfo) error) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := e.Name()
		if strings.HasPrefix(name, TempPrefix) || (storage.Handle{Type: t, Name: name}).Validate() != nil {
			continue
		}
		if t == storage.Pack && name[:2] != filepath.Base(dir) {
			continue
		}
		var fi os.FileInfo
		if e.Type()&fs.ModeSymlink != 0 {
			fi, err = os.Stat(filepath.Join(dir, name))
		} else {
			fi, err = e.Info()
		}
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		if err := fn(storage.FileInfo{Name: name, Size: fi.Size()}); err != nil {
			return err
		}
	}
	return nil
}

// Remove implements storage.Backend.
func (b *Backend) Remove(ctx context.Context, h storage.Handle) error {
	if err := h.Validate(); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	p := b.path(h)
	fi, err := os.Lstat(p)
	if err != nil {
		return fmt.Errorf("remove %s: %w", h, notExist(err))
	}
	if fi.IsDir() {
		return fmt.Errorf("remove %s: is a directory", h)
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("remove %s: %w", h, notExist(err))
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("remove %s: %w", h, err)
	}
	return nil
}

// Close implements storage.Backend; it holds no resources.
func (b *Backend) Close() error { return nil }

// LeftoverTempFiles returns the paths of temporary files older than
// TempMaxAge anywhere in the repository layout: what a crashed Save left.
// `check` reports them; they are safe to delete.
func (b *Backend) LeftoverTempFiles() ([]string, error) {
	return b.tempFilesOlderThan(TempMaxAge)
}

// RemoveTempFiles deletes temporary files older than age: what writers
// that were killed left (a streamed pack is a temporary file until it is
// complete). prune calls it with its grace period, so that a file a running
// writer is still filling is never removed. It returns how many files and
// bytes it removed.
func (b *Backend) RemoveTempFiles(age time.Duration) (int, int64, error) {
	paths, err := b.tempFilesOlderThan(age)
	n, size := 0, int64(0)
	for _, p := range paths {
		fi, serr := os.Lstat(p)
		if serr != nil || !fi.Mode().IsRegular() {
			continue
		}
		if rerr := os.Remove(p); rerr == nil {
			n++
			size += fi.Size()
		} else if err == nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = fmt.Errorf("remove temporary file: %w", rerr)
		}
	}
	return n, size, err
}

func (b *Backend) tempFilesOlderThan(age time.Duration) ([]string, error) {
	dirs := []string{b.dir}
	for _, t := range storage.AllTypes {
		dirs = append(dirs, filepath.Join(b.dir, string(t)))
	}
	pack := filepath.Join(b.dir, string(storage.Pack))
	entries, err := os.ReadDir(pack)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("find leftover temporary files: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() && isPrefixDir(e.Name()) {
			dirs = append(dirs, filepath.Join(pack, e.Name()))
		}
	}
	cutoff := time.Now().Add(-age)
	var old []string
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return old, fmt.Errorf("find leftover temporary files: %w", err)
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), TempPrefix) {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return old, fmt.Errorf("find leftover temporary files: %w", err)
			}
			if fi.ModTime().Before(cutoff) {
				old = append(old, filepath.Join(d, e.Name()))
			}
		}
	}
	return old, nil
}
