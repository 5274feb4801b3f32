package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/chunker"
	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/fsmeta"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/slab"
	"github.com/floe-backup/floe/internal/snapshot"
)

// fileReader reads files handed over by the walker, a batch at a time.
// The batch's jobs are marked done together at its end: whoever waits
// for them (their directories' trees) is woken once, not once per file.
func (a *archiver) fileReader(ctx context.Context) {
	ch := chunker.New(nil, a.params)
	for batch := range a.fileJobs {
		for _, job := range batch {
			a.readJob(ctx, ch, job)
		}
		for _, job := range batch {
			close(job.done)
		}
	}
}

// readJob reads the file of one job and records the outcome in it.
func (a *archiver) readJob(ctx context.Context, ch *chunker.Chunker, job *fileJob) {
	if ctx.Err() != nil {
		job.err = ctx.Err()
		job.closeFile()
		return
	}
	a.opts.Progress.Working(job.path)
	var err error
	if job.image {
		err = a.readImage(ctx, ch, job)
	} else {
		err = a.readFile(ctx, ch, job)
	}
	job.closeFile() // readFile took it; an image is opened its own way
	if err != nil {
		err = origErr(err, job.path, job.src)
		job.err = err
		if ctx.Err() == nil {
			a.fail(job.path, err)
		}
	} else if job.changed {
		a.filesChanged.Add(1)
	} else {
		a.filesNew.Add(1)
	}
	a.opts.Progress.Done(1, 0)
}

// stat of an open file, for the before/after consistency comparison.
type fileState struct {
	size, ino, dev uint64
	mtime, ctime   time.Time
	blocks         int64
}

func fstat(f *os.File) (fileState, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileState{}, err
	}
	return fileState{size: uint64(st.Size), ino: st.Ino, dev: st.Dev, blocks: st.Blocks,
		mtime: time.Unix(st.Mtim.Unix()), ctime: time.Unix(st.Ctim.Unix())}, nil
}

func (s fileState) same(o fileState) bool {
	return s.size == o.size && s.ino == o.ino && s.dev == o.dev && s.mtime.Equal(o.mtime) && s.ctime.Equal(o.ctime)
}

// testHookAfterRead lets tests change a file between reading it and the
// second stat, to exercise the consistency check deterministically.
var testHookAfterRead func(path string, attempt int)

// stateOf is st as a fileState.
func stateOf(st *unix.Stat_t) fileState {
	return fileState{size: uint64(st.Size), ino: st.Ino, dev: st.Dev, blocks: st.Blocks,
		mtime: time.Unix(st.Mtim.Unix()), ctime: time.Unix(st.Ctim.Unix())}
}

// readFile chunks and saves one file. A file that changed while it was read
// (size, mtime, ctime or inode differ before and after) is read again, up to
// Retries times; if it still changes, what was read is kept and the path is
// recorded in the snapshot's consistency record.
//
// "Before" is, the first time, the lstat of the directory listing (the
// node): it is older than the open, so whatever changes between the
// listing and the end of the read shows in the stat after reading, and a
// file needs two stats (listing, after reading), not three. A file that
// changed since the listing is read again with a fresh stat before.
func (a *archiver) readFile(ctx context.Context, ch *chunker.Chunker, job *fileJob) error {
	src := job.src
	if src == "" {
		src = job.path
	}
	f := job.f
	job.f = nil
	if f == nil {
		var err error
		if f, err = fsmeta.OpenFile(src); err != nil {
			return err
		}
	}
	defer f.Close()
	var st unix.Stat_t
	n0 := job.node
	before := fileState{size: n0.Size, ino: n0.Inode, dev: n0.Device, mtime: n0.ModTime, ctime: n0.ChangeTime}
	sparse := n0.Sparse
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := f.Stat(&st); err != nil {
				return err
			}
			before = stateOf(&st)
			sparse = before.blocks*512 < int64(before.size)
			if err := f.Rewind(); err != nil {
				return err
			}
		}
		content, sizes, n, err := a.chunkFile(ctx, ch, f, sparse, before.size)
		if err != nil {
			return err
		}
		if testHookAfterRead != nil {
			testHookAfterRead(job.path, attempt)
		}
		if err := f.Stat(&st); err != nil {
			return err
		}
		after := stateOf(&st)
		if attempt == 0 && (after.ino != n0.Inode || after.dev != n0.Device) {
			return fmt.Errorf("file was replaced between listing and opening")
		}
		consistent := before.same(after) && n == before.size
		if consistent || attempt >= a.opts.Retries {
			if !consistent {
				a.recordChanged(job.path)
			}
			job.node.Content = content
			job.node.ChunkSizes = sizes
			job.node.Size = n
			job.node.Sparse = sparse
			job.node.ModTime, job.node.ChangeTime = before.mtime, before.ctime
			return nil
		}
	}
}

// chunkFile splits r into chunks and saves them; it returns the chunks'
// refs and sizes in order and the number of bytes read.
func (a *archiver) chunkFile(ctx context.Context, ch *chunker.Chunker, f *fsmeta.File, sparse bool, size uint64) ([]hash.Ref, []uint32, uint64, error) {
	if !sparse && size > 0 && size <= uint64(min(smallFile, a.params.Min)) {
		return a.saveWhole(ctx, f, size)
	}
	// A small file is hashed and saved here, by its reader: handing its
	// one chunk to a saver and waiting for it cost two goroutine wake-ups
	// per file, more than the hashing on a tree of small files. A large
	// file's chunks still go to the savers, so that one file uses every
	// core.
	c := &chunks{a: a, ctx: ctx, inline: !sparse && size <= smallFile}
	var err error
	if sparse {
		err = f.Segments(size, func(off, n int64, hole bool) error {
			if !hole {
				return c.read(ctx, ch, io.NewSectionReader(f, off, n))
			}
			for n > 0 {
				l := min(n, int64(a.params.Max))
				key := a.zeroKey(int(l))
				c.add(zeros(int(l)), false, &key)
				n -= l
			}
			return nil
		})
	} else {
		// Up to the size seen before reading: a file that grew is found
		// by the stat after reading (and read again), and the chunker
		// does not need one more read to see the end of the file.
		err = c.read(ctx, ch, io.LimitReader(f, int64(size)))
	}
	return c.wait(err)
}

// saveWhole saves a file of size bytes (at most the minimum chunk size,
// so the chunker would cut it nowhere: one chunk) as it is read, without
// the chunker and the bookkeeping of chunks: most files of a tree of
// small files, for which that was a measurable share of the time.
// Like chunkFile, it reads no more than size bytes.
func (a *archiver) saveWhole(ctx context.Context, f *fsmeta.File, size uint64) ([]hash.Ref, []uint32, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, 0, err
	}
	buf := <-a.bufs
	if uint64(cap(buf)) < size {
		// grown like the chunker grows it, so that a buffer is not
		// reallocated for each file slightly larger than the last
		buf = make([]byte, 0, max(size, uint64(min(2*cap(buf), smallFile))))
	}
	n, err := io.ReadFull(f, buf[:size])
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		err = nil // shorter now: the stat after reading tells
	}
	data := buf[:n]
	defer func() { a.bufs <- data[:0] }()
	if err != nil {
		return nil, nil, 0, fmt.Errorf("chunker: read: %w", err)
	}
	if n == 0 {
		return []hash.Ref{}, nil, 0, nil
	}
	a.opts.Progress.Done(0, int64(n))
	ref, err := a.saveBlob(ctx, repo.DataBlob, compress.Files, a.r.BlobKey(data), data)
	if err != nil {
		return nil, nil, 0, err
	}
	return []hash.Ref{ref}, []uint32{uint32(n)}, uint64(n), nil
}

// chunks are the chunks of one file (or stream) in order, handed to the
// blob savers as they are cut; wait collects their refs.
type chunks struct {
	a      *archiver
	ctx    context.Context
	inline bool // saved by the reader, not handed to the savers (small files)
	// scanned: the reader reports the bytes done to Progress as it reads
	// them (an image: zero runs too, while they are scanned), not add
	scanned bool
	// content: what the chunks hold (compress.Level.For); Files but for
	// the data of a disk image
	content compress.Content
	slots   []*hash.Ref
	sizes   []uint32
	wg      sync.WaitGroup
	errp    atomic.Pointer[error]
	total   uint64
}

// add hands one chunk to the blob savers. release: data is a buffer of
// the pool; known: its key, when known already.
func (c *chunks) add(data []byte, release bool, known *hash.ID) {
	c.total += uint64(len(data))
	if !c.scanned {
		c.a.opts.Progress.Done(0, int64(len(data)))
	}
	slot := new(hash.Ref)
	c.slots = append(c.slots, slot)
	c.sizes = append(c.sizes, uint32(len(data)))
	c.wg.Add(1)
	job := &chunkJob{data: data, slot: slot, wg: &c.wg, errp: &c.errp, release: release, known: known, content: c.content}
	if c.inline {
		c.a.saveChunk(c.ctx, job)
		return
	}
	c.a.chunkJobs <- job
}

// read cuts rd into chunks with ch and adds them, until rd ends.
func (c *chunks) read(ctx context.Context, ch *chunker.Chunker, rd io.Reader) error {
	ch.Reset(rd)
	for {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		buf := <-c.a.bufs
		if cap(buf) < int(c.a.params.Max) {
			// A buffer for a file of several chunks is one from the slab,
			// as large as a chunk may be: the chunker never grows it (a
			// copy of all it holds at every step), and its pages are
			// faulted in once, not again after every collection. Small
			// files, read by saveWhole, keep buffers of their size from
			// the heap, which reuses memory already faulted in: in a
			// backup of only small files a slab's fresh pages cost more
			// than they saved.
			buf = slab.Get(int(c.a.params.Max))
		}
		data, err := ch.Next(buf)
		if err == io.EOF {
			c.a.bufs <- data
			return nil
		}
		if err != nil {
			c.a.bufs <- data
			return err
		}
		c.add(data, true, nil)
	}
}

// wait waits for the chunks added so far to be saved and returns their
// refs and sizes in order and the bytes read, or readErr (what stopped
// reading) or the first error saving one.
func (c *chunks) wait(readErr error) ([]hash.Ref, []uint32, uint64, error) {
	c.wg.Wait()
	if readErr != nil {
		return nil, nil, 0, readErr
	}
	if e := c.errp.Load(); e != nil {
		return nil, nil, 0, *e
	}
	refs := make([]hash.Ref, len(c.slots))
	for i, s := range c.slots {
		refs[i] = *s
	}
	return refs, c.sizes, c.total, nil
}

var (
	zeroMu  sync.Mutex
	zeroBuf []byte
)

// zeros returns n (at most the largest chunk size) zero bytes that must not
// be modified. They come from one buffer, as large as the largest n asked
// for so far (a replaced one stays valid for whoever holds it): the
// largest chunk a repository's parameters allow is 64 MiB, but the default
// is 8 MiB, and a buffer of 64 MiB made up front cost 0.02 CPU-s (Go
// clears it) and 64 MiB of memory in every backup of a sparse file or an
// image.
func zeros(n int) []byte {
	zeroMu.Lock()
	defer zeroMu.Unlock()
	if len(zeroBuf) < n {
		zeroBuf = make([]byte, max(n, 1<<20))
	}
	return zeroBuf[:n:n]
}

// zeroKey returns the key (K) of n zero bytes, hashing each size once: a
// large sparse file is mostly the same all-zero chunk, and after the first
// one SaveBlob finds its ID by the key.
func (a *archiver) zeroKey(n int) hash.ID {
	a.zeroMu.Lock()
	defer a.zeroMu.Unlock()
	key, ok := a.zeroIDs[n]
	if !ok {
		key = a.r.BlobKey(zeros(n))
		a.zeroIDs[n] = key
	}
	return key
}

// smallFile is the size up to which a file's chunks are saved by the
// goroutine that reads it (chunkFile).
const smallFile = 256 << 10

// returnBufs gives the chunk buffers back once every reader and saver has
// stopped, and the pages of the slab's free buffers back to the kernel: a
// long-running process (the agent) does not hold a backup's buffers until
// its next one.
func (a *archiver) returnBufs() {
	for {
		select {
		case b := <-a.bufs:
			slab.Put(b, 0)
		default:
			slab.Trim()
			return
		}
	}
}

// blobSaver hashes and stores chunks.
func (a *archiver) blobSaver(ctx context.Context) {
	for job := range a.chunkJobs {
		a.saveChunk(ctx, job)
	}
}

// saveChunk hashes and stores one chunk and releases its buffer.
func (a *archiver) saveChunk(ctx context.Context, job *chunkJob) {
	if job.errp.Load() == nil {
		var key hash.ID
		if job.known != nil {
			key = *job.known
		} else {
			key = a.r.BlobKey(job.data)
		}
		ref, err := a.saveBlob(ctx, repo.DataBlob, job.content, key, job.data)
		*job.slot = ref
		if err != nil {
			job.errp.CompareAndSwap(nil, &err)
		}
	}
	if job.release {
		// A rare huge chunk does not leave its buffer holding the memory:
		// only the first 4x the average size stays resident.
		data, _ := slab.Shrink(job.data, 4*int(a.params.Avg))
		a.bufs <- data
	}
	job.wg.Done()
}

// ErrStdinFilename is wrapped by the error about a file name for standard
// input (Options.StdinFilename) that is not a valid name.
var ErrStdinFilename = errors.New("file name for standard input")

// saveStdin backs up a stream as a single file in the root tree.
func (a *archiver) saveStdin(ctx context.Context) (hash.Ref, error) {
	name := a.opts.StdinFilename
	if name == "" {
		name = "stdin"
	}
	if err := snapshot.CheckName(name); err != nil {
		return hash.Ref{}, fmt.Errorf("%w: %w", ErrStdinFilename, err)
	}
	c := &chunks{a: a}
	err := c.read(ctx, chunker.New(nil, a.params), a.opts.Stdin)
	if err != nil && ctx.Err() == nil {
		err = fmt.Errorf("read standard input: %w", err)
	}
	refs, sizes, total, err := c.wait(err)
	if err != nil {
		return hash.Ref{}, err
	}
	now := time.Now()
	node := &snapshot.Node{Name: name, Type: snapshot.TypeFile, Mode: 0o600, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
		ModTime: now, AccessTime: now, ChangeTime: now, Size: total, Links: 1, Content: refs, ChunkSizes: sizes}
	a.filesNew.Add(1)
	a.totalBytes.Add(total)
	a.opts.Progress.Done(1, 0)
	return a.saveTree(ctx, &snapshot.Tree{Nodes: []*snapshot.Node{node}})
}
