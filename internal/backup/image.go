package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/chunker"
	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/fsmeta"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Disk images (Options.Images): a block device or a raw image file saved
// as one regular file node. Zero runs are found by content, not only by the
// file system's holes, so that a device (which has no holes) and every
// copy of an image, sparse or not, cut the same chunks (docs/FORMAT.md
// "Chunking", images).
const (
	// imageBlock is the unit in which zeros are looked for, from offset 0.
	imageBlock = 4096
	// imageZeroRun is the shortest zero run that becomes zero chunks;
	// shorter ones stay inside the data around them (a region boundary
	// costs a short chunk).
	imageZeroRun = 128 << 10
	// imageReadSize is how much is read at once.
	imageReadSize = 4 << 20
)

var zeroBlock = make([]byte, imageBlock)

// errShrank means an image ended before its size: truncated while read.
var errShrank = errors.New("image shrank while it was read")

// imageScan reads an image and classifies it in imageBlock blocks. As an
// io.Reader it yields one data region: the bytes up to the next zero run
// of at least imageZeroRun bytes, or to the end; the caller then takes the
// zero run (zeroRun) and reads the next region.
type imageScan struct {
	f    *os.File
	size int64
	file bool // a regular file: skip its holes without reading them

	pos        int64 // next byte to classify
	dataStart  int64 // for files: the current data extent [dataStart, dataEnd)
	dataEnd    int64
	buf        []byte
	bufOff     int64
	bufN       int
	spare      []byte       // the other read buffer, while no read ahead uses it
	ahead      chan readRes // the read ahead in flight, if any
	aheadOff   int64        // where it reads
	cur        []byte       // data ready to hand out
	pendingOut int64        // zero bytes of a short run, to hand out before cur
	zeros      int64        // the zero run being counted
	regionEnd  bool
	inRun      bool // counting a long zero run (after a region ended on it)
	runDone    bool
	read       func(n int64) // progress
}

func newImageScan(f *os.File, size int64, file bool, progress func(int64)) *imageScan {
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	return &imageScan{f: f, size: size, file: file, buf: directio.Buffer(imageReadSize), spare: directio.Buffer(imageReadSize), dataEnd: -1, read: progress}
}

// openDevice opens a block device for reading, with O_DIRECT when the
// device takes it. A device read through the page cache costs a copy
// into that cache and one out of it (and for a loop device, the loop
// driver's copy from its backing file into the device's cache, by a kernel
// thread that takes a core from the backup): on the 1.5 GiB loop device of
// bench/images.sh a buffered read ran at 0.6-1 GB/s, a direct one at
// 8 GB/s. The cache is dropped anyway when the last opener closes the
// device, so the next reader gains nothing from it; and a direct read
// still sees what was written through the cache (the kernel writes dirty
// cached blocks back before it reads them directly).
func openDevice(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT, 0)
	if err == nil {
		return f, nil
	}
	return os.Open(path)
}

// readRes is the outcome of one read of the image.
type readRes struct {
	buf []byte
	n   int
	err error
}

// readAt reads want bytes at off into buf; a short read is an image that
// shrank.
func (s *imageScan) readAt(buf []byte, off, want int64) readRes {
	var got int
	var err error
	if testHookImageFill != nil {
		err = testHookImageFill(s.f, off)
	}
	if err == nil {
		got, err = s.f.ReadAt(buf[:want], off)
	}
	if errors.Is(err, unix.EINVAL) && got == 0 && s.direct() {
		// a device that refuses this direct read (an alignment it needs
		// that a page is not): read through the page cache from here on
		if err = s.buffered(); err == nil {
			got, err = s.f.ReadAt(buf[:want], off)
		}
	}
	if int64(got) < want {
		if err == nil || err == io.EOF {
			err = fmt.Errorf("%w: it ended at %d bytes of %d", errShrank, off+int64(got), s.size)
		} else {
			err = readFailed(off+int64(got), s.size, err)
		}
		return readRes{buf: buf, err: err}
	}
	return readRes{buf: buf, n: got}
}

// readFailed says what a failed read of an image means, where: a device
// that went away (detached, unplugged: ENXIO, ENODEV) or that fails (EIO)
// leaves an image that cannot be saved, and the person who reads the
// error needs to know it was the device, not floe, and how far it got.
func readFailed(off, size int64, err error) error {
	what := "read failed"
	switch {
	case errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV):
		what = "the device went away (detached or removed?)"
	case errors.Is(err, unix.EIO):
		what = "I/O error (a failing or vanished device?)"
	}
	return fmt.Errorf("%s at byte %d of %d: %w; the image is not saved", what, off, size, err)
}

// direct reports whether the image was opened with O_DIRECT.
func (s *imageScan) direct() bool {
	fl, err := unix.FcntlInt(s.f.Fd(), unix.F_GETFL, 0)
	return err == nil && fl&unix.O_DIRECT != 0
}

// buffered turns O_DIRECT off (one read at a time runs: no read races this).
func (s *imageScan) buffered() error {
	fl, err := unix.FcntlInt(s.f.Fd(), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(s.f.Fd(), unix.F_SETFL, fl&^unix.O_DIRECT)
	}
	return err
}

// readAhead starts reading the next imageReadSize bytes after the buffer
// into the spare one, so that the device reads while the buffer is
// classified, chunked and hashed: a second backup of an unchanged device
// then runs at the speed of the slower of the two, not of their sum. Not
// past the data extent of a file (a hole follows, skipped unread).
func (s *imageScan) readAhead() {
	off := s.bufOff + int64(s.bufN)
	if s.ahead != nil || off >= s.size || (s.file && off >= s.dataEnd) {
		return
	}
	want := min(int64(len(s.spare)), s.size-off)
	buf := s.spare
	s.spare = nil
	s.ahead, s.aheadOff = make(chan readRes, 1), off
	go func() { s.ahead <- s.readAt(buf, off, want) }()
}

// wait takes the read ahead in flight back, returning its buffer to spare.
func (s *imageScan) wait() readRes {
	r := <-s.ahead
	s.ahead = nil
	return r
}

// close waits for a read ahead still in flight: the file is closed after.
func (s *imageScan) close() {
	if s.ahead != nil {
		r := s.wait()
		s.spare = r.buf
	}
}

// Read implements io.Reader over the current data region.
func (s *imageScan) Read(p []byte) (int, error) {
	for len(s.cur) == 0 && s.pendingOut == 0 {
		if s.regionEnd {
			return 0, io.EOF
		}
		if err := s.step(); err != nil {
			return 0, err
		}
	}
	if s.pendingOut > 0 {
		n := int(min(int64(len(p)), s.pendingOut))
		clear(p[:n])
		s.pendingOut -= int64(n)
		return n, nil
	}
	n := copy(p, s.cur)
	s.cur = s.cur[n:]
	return n, nil
}

// step classifies the next block (or a whole hole of a file).
func (s *imageScan) step() error {
	if s.pos >= s.size {
		if s.inRun {
			s.runDone = true
			return nil
		}
		if s.zeros < imageZeroRun {
			s.pendingOut += s.zeros
			s.zeros = 0
		}
		s.regionEnd = true
		return nil
	}
	if s.file && s.pos >= s.dataEnd {
		d, err := unix.Seek(int(s.f.Fd()), s.pos, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			s.dataStart, s.dataEnd = s.size, s.size
		case err != nil:
			s.dataStart, s.dataEnd = s.pos, s.size // no hole information: read all
		default:
			h, err := unix.Seek(int(s.f.Fd()), d, unix.SEEK_HOLE)
			if err != nil {
				h = s.size
			}
			s.dataStart, s.dataEnd = d, min(h, s.size)
		}
	}
	n := min(int64(imageBlock), s.size-s.pos)
	var zero bool
	var b []byte
	if s.file && s.pos+n <= s.dataStart {
		// a hole: all of its whole blocks at once, unread
		n = (s.dataStart - s.pos) / imageBlock * imageBlock
		if s.dataStart == s.size {
			n = s.size - s.pos
		}
		zero = true
	} else {
		var err error
		if b, err = s.block(n); err != nil {
			return err
		}
		zero = bytes.Equal(b, zeroBlock[:n])
	}
	s.pos += n
	s.read(n)
	if zero {
		s.zeros += n
		if !s.inRun && s.zeros >= imageZeroRun {
			s.regionEnd = true
		}
		return nil
	}
	if s.inRun {
		s.runDone = true
	} else if s.zeros > 0 {
		s.pendingOut += s.zeros
		s.zeros = 0
	}
	s.cur = b
	return nil
}

// testHookImageFill lets tests change an image while it is read; an error
// it returns is the read's (a device that fails).
var testHookImageFill func(f *os.File, off int64) error

// block returns the n bytes at s.pos, reading ahead into the buffer.
func (s *imageScan) block(n int64) ([]byte, error) {
	if s.pos < s.bufOff || s.pos+n > s.bufOff+int64(s.bufN) {
		// The buffer is done with (block is called only when the data
		// handed out of it was consumed): take the read ahead if it is
		// where the scan goes on, else read here.
		var r readRes
		if s.ahead != nil {
			r = s.wait()
			if s.aheadOff != s.pos {
				s.spare = r.buf
				r = readRes{}
			}
		}
		if r.buf == nil {
			r = s.readAt(s.buf, s.pos, min(int64(len(s.buf)), s.size-s.pos))
		} else {
			s.spare = s.buf
		}
		if r.err != nil {
			if s.spare == nil {
				s.spare = r.buf
			} else {
				s.buf = r.buf
			}
			s.bufN = 0
			return nil, r.err
		}
		s.buf, s.bufOff, s.bufN = r.buf, s.pos, r.n
		s.readAhead()
	}
	i := s.pos - s.bufOff
	return s.buf[i : i+n], nil
}

// chunkImage saves an image: data regions chunked from their starts, zero
// runs as zero chunks of the chunker's maximum size (and a shorter last
// one), as the holes of sparse files are. Data regions go through the
// chunk loop of files (chunks.read) with the scan as the reader: it ends
// each region where a zero run starts, and reports progress itself, so
// that a long zero run counts while it is scanned.
func (a *archiver) chunkImage(ctx context.Context, ch *chunker.Chunker, f *os.File, size int64, file bool) ([]hash.Ref, []uint32, uint64, bool, error) {
	c := &chunks{a: a, ctx: ctx, scanned: true, content: compress.Image}
	holes := false
	s := newImageScan(f, size, file, func(n int64) { a.opts.Progress.Done(0, n) })
	defer s.close()
	err := func() error {
		for {
			// the data region up to the next zero run (or the end)
			s.regionEnd = false
			if err := c.read(ctx, ch, s); err != nil {
				return err
			}
			if s.zeros < imageZeroRun {
				return nil // the end
			}
			s.inRun, s.runDone = true, false
			for !s.runDone {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if err := s.step(); err != nil {
					return err
				}
			}
			holes = true
			for n := s.zeros; n > 0; {
				l := min(n, int64(a.params.Max))
				key := a.zeroKey(int(l))
				c.add(zeros(int(l)), false, &key)
				n -= l
			}
			s.zeros, s.inRun = 0, false
		}
	}()
	refs, sizes, total, err := c.wait(err)
	if err != nil {
		return nil, nil, 0, false, err
	}
	return refs, sizes, total, holes, nil
}

// imageState is what is compared before and after an image is read: for
// a file its size and times; for a block device its size and the write
// and discard counters of /sys/dev/block/MAJ:MIN/stat (a device node's
// times do not change when the device is written).
type imageState struct {
	file   fileState
	size   int64
	writes string
}

func readImageState(f *os.File, dev bool, rdev uint64) (imageState, error) {
	if !dev {
		st, err := fstat(f)
		return imageState{file: st, size: int64(st.size)}, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return imageState{}, fmt.Errorf("size of the device: %w", err)
	}
	return imageState{size: size, writes: writeCounters(rdev)}, nil
}

func (s imageState) same(o imageState) bool {
	return s.file.same(o.file) && s.size == o.size && s.writes == o.writes
}

// sysBlock is where the block devices' attributes are (tests change it).
var sysBlock = "/sys/dev/block"

func sysDir(rdev uint64) string {
	return filepath.Join(sysBlock, fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev)))
}

// writeCounters returns the fields of a block device's stat file that
// count writes and discards (Documentation/block/stat.rst: write I/Os,
// write merges, write sectors; discard I/Os, merges, sectors): they grow
// whenever anything reaches the device, and reading does not touch them.
// Empty if unknown.
func writeCounters(rdev uint64) string {
	b, err := os.ReadFile(filepath.Join(sysDir(rdev), "stat"))
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	var out []string
	for _, i := range []int{4, 5, 6, 11, 12, 13} {
		if i < len(f) {
			out = append(out, f[i])
		}
	}
	return strings.Join(out, " ")
}

// deviceID names a block device beyond its number: its /dev/disk/by-id
// link, else its serial number, else the backing file of a loop device
// or the name of a device-mapper device (an LVM volume).
func deviceID(rdev uint64) string {
	if links, _ := filepath.Glob("/dev/disk/by-id/*"); len(links) > 0 {
		sort.Strings(links)
		for _, l := range links {
			var st unix.Stat_t
			if unix.Stat(l, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == rdev {
				return "by-id/" + filepath.Base(l)
			}
		}
	}
	dir := sysDir(rdev)
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	if s := read("serial"); s != "" {
		return "serial/" + s
	}
	if s := read("device/serial"); s != "" {
		return "serial/" + s
	}
	if s := read("loop/backing_file"); s != "" {
		return "loop/" + s
	}
	if s := read("dm/name"); s != "" {
		return "dm/" + s
	}
	return ""
}

// prepareImage makes the node of an image path, p as listed (node) and
// read at src, into the regular file node it is saved as. A symlink given
// as an image (/dev/disk/by-id/NAME) is followed.
func (a *archiver) prepareImage(p, src string, node *snapshot.Node) (*snapshot.Node, error) {
	if node.Type == snapshot.TypeSymlink {
		real, err := filepath.EvalSymlinks(src)
		if err != nil {
			return nil, err
		}
		if node, err = fsmeta.NodeFromPath(real, node.Name); err != nil {
			return nil, err
		}
	}
	readRdev := node.Rdev
	if src != p && node.Type == snapshot.TypeBlockDev {
		// read from a snapshot of the device (--fs-snapshot lvm): the
		// snapshot records the device given, not its snapshot's
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
			node.Rdev = st.Rdev
		}
	}
	if err := imageNode(node, src); err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.readRdev == nil {
		a.readRdev = map[string]uint64{}
	}
	a.readRdev[p] = readRdev
	a.mu.Unlock()
	if node.Rdev != 0 {
		a.opts.Progress.Grow(1, int64(node.Size))
	}
	return node, nil
}

// ErrImageType refuses an image source that is neither a block device
// nor a regular file.
var ErrImageType = errors.New("an image is a block device or a regular file (a raw image)")

// imageNode turns the node of an image path into the regular file node it
// is saved as: a block device's size, number and identity. src is where
// it is read.
func imageNode(node *snapshot.Node, src string) error {
	switch node.Type {
	case snapshot.TypeFile:
		return nil
	case snapshot.TypeBlockDev:
	default:
		return fmt.Errorf("%w, not a %s", ErrImageType, node.Type)
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of the device: %w", err)
	}
	node.Type, node.Size, node.DeviceID = snapshot.TypeFile, uint64(size), deviceID(node.Rdev)
	return nil
}

// readImage reads an image as readFile reads a file: what changed while
// it was read (a file's size or times, a device's size or write counters)
// is read again up to Retries times and then recorded in the consistency
// record. An image that shrank while read is read again, and fails if it
// keeps shrinking: a disk image cut short is not an image.
func (a *archiver) readImage(ctx context.Context, ch *chunker.Chunker, job *fileJob) error {
	dev := job.node.Rdev != 0
	a.mu.Lock()
	rdev := a.readRdev[job.path] // the device read (an LVM snapshot of it, perhaps)
	a.mu.Unlock()
	var f *os.File
	var err error
	if dev {
		f, err = openDevice(job.src) // a device node may be reached through a symlink (/dev/disk/by-id)
	} else {
		f, err = fsmeta.OpenForRead(job.src)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	for attempt := 0; ; attempt++ {
		before, err := readImageState(f, dev, rdev)
		if err != nil {
			return err
		}
		if !dev && attempt == 0 && (before.file.ino != job.node.Inode || before.file.dev != job.node.Device) {
			return fmt.Errorf("file was replaced between listing and opening")
		}
		content, sizes, n, holes, err := a.chunkImage(ctx, ch, f, before.size, !dev)
		if errors.Is(err, errShrank) {
			if attempt < a.opts.Retries {
				continue
			}
			after, _ := readImageState(f, dev, rdev)
			return fmt.Errorf("image of %d bytes was truncated to %d while it was read (%d times); not saved: %w", before.size, after.size, attempt+1, err)
		}
		if err != nil {
			return err
		}
		if testHookAfterRead != nil {
			testHookAfterRead(job.path, attempt)
		}
		after, err := readImageState(f, dev, rdev)
		if err != nil {
			return err
		}
		consistent := before.same(after) && int64(n) == before.size
		if consistent || attempt >= a.opts.Retries {
			if !consistent {
				a.recordChanged(job.path)
			}
			job.node.Content, job.node.ChunkSizes, job.node.Size = content, sizes, n
			job.node.Sparse = holes
			if !dev {
				job.node.ModTime, job.node.ChangeTime = before.file.mtime, before.file.ctime
			}
			return nil
		}
	}
}
