package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Image is what an export serves: a fixed-size range of bytes that can be
// read at any offset, and that knows which of its parts are holes (read as
// zeros) so clients can skip them. Implementations must be safe for
// concurrent use: requests of one or several connections run in parallel.
type Image interface {
	Size() int64
	// ReadAt reads len(p) bytes at off; off+len(p) never exceeds Size().
	ReadAt(p []byte, off int64) (int, error)
	// Extents describes [off, off+length) as consecutive data and hole
	// extents, in order, starting at off. It may describe less than asked
	// (at least one extent) or more; the server clips and fills the rest
	// as data.
	Extents(off, length int64) ([]Extent, error)
}

// SliceReader is implemented by images that hold their data in memory
// (a snapshot's cache of decrypted blobs). ReadSlices returns the bytes of
// [off, off+length) (within Size()) as slices of the image's own memory,
// in order, which the caller only reads, until it calls release (exactly
// once, also after an error). The server writes a reply from them with
// one writev instead of copying them into a buffer of its own first.
type SliceReader interface {
	ReadSlices(off, length int64) (data [][]byte, release func(), err error)
}

// Extent is a run of an image: data, or a hole that reads as zeros.
type Extent struct {
	Length int64
	Hole   bool
}

// Writer is implemented by images that accept writes (Overlay). An export
// whose image is not a Writer is read-only.
type Writer interface {
	WriteAt(p []byte, off int64) (int, error)
	// Zero makes [off, off+length) read as zeros.
	Zero(off, length int64) error
	// Trim tells that [off, off+length) is no longer needed; what it then
	// reads as is unspecified (the protocol allows anything).
	Trim(off, length int64) error
	// Flush makes every completed write durable.
	Flush() error
}

// FileImage is an Image over a raw image file (or block device), opened
// read-only. Holes come from SEEK_DATA/SEEK_HOLE.
type FileImage struct {
	f    *os.File
	size int64
}

// OpenFile opens a raw image read-only.
func OpenFile(path string) (*FileImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open image: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size of image %s: %w", path, err)
	}
	return &FileImage{f: f, size: size}, nil
}

func (fi *FileImage) Size() int64  { return fi.size }
func (fi *FileImage) Close() error { return fi.f.Close() }

func (fi *FileImage) ReadAt(p []byte, off int64) (int, error) {
	n, err := fi.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return n, err
}

func (fi *FileImage) Extents(off, length int64) ([]Extent, error) {
	return fileExtents(fi.f, off, length, fi.size)
}

// fileExtents maps [off, off+length) of f (of the given size) with
// SEEK_DATA and SEEK_HOLE. A file system without them (or a block device)
// is all data. lseek on a shared *os.File is safe here: SEEK_DATA and
// SEEK_HOLE return a position and the file is only ever read with pread.
func fileExtents(f *os.File, off, length, size int64) ([]Extent, error) {
	end := off + length
	if end > size {
		end = size
	}
	fd := int(f.Fd())
	var out []Extent
	add := func(n int64, hole bool) {
		if n <= 0 {
			return
		}
		if len(out) > 0 && out[len(out)-1].Hole == hole {
			out[len(out)-1].Length += n
			return
		}
		out = append(out, Extent{Length: n, Hole: hole})
	}
	pos := off
	for pos < end {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) { // no data after pos
				add(end-pos, true)
				break
			}
			if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP) {
				add(end-pos, false)
				break
			}
			return nil, fmt.Errorf("seek data at %d: %w", pos, err)
		}
		if data > end {
			data = end
		}
		add(data-pos, true)
		pos = data
		if pos >= end {
			break
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole at %d: %w", pos, err)
		}
		if hole > end || hole <= pos {
			hole = end
		}
		add(hole-pos, false)
		pos = hole
	}
	return out, nil
}
