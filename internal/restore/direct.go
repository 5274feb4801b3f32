package restore

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/floe-backup/floe/internal/directio"
)

// Large files are written around the page cache (O_DIRECT): on a VM whose
// host takes back free memory, taking a fresh page-cache page costs more
// than the disk write itself (0.4 to 2.5 s of system time per GiB buffered,
// docs/PERFORMANCE.md), and a restore onto a live server then does not
// evict what the server caches. Small files stay buffered: a direct write
// waits for the disk, and a file smaller than a few chunks gains nothing
// from skipping the cache (GOROOT's 15,000 files).
const directThreshold = 8 << 20

// stageSize is the most a worker gathers of one file before writing it: a
// range delivers consecutive chunks of a file, which then leave in one
// write instead of one per chunk. 4 MiB (a whole local range) measured no
// less CPU than 1 MiB on the bench's two 1 GiB files, and held 12-15 MB
// more.
const stageSize = 1 << 20

// Seams for tests: turning O_DIRECT on or off on a descriptor, and the
// writes made while it is on (a file system may take the flag and refuse
// the writes, with EINVAL).
var (
	setDirect    = directio.SetDirect
	pwriteDirect = directio.PwriteFull
)

// newDirectFile turns on O_DIRECT for fd, a file of size bytes just
// created (or truncated) for writing; it returns nil, fd unchanged, where
// the file system refuses.
func newDirectFile(fd int, size int64) *directio.File {
	return directio.NewFile(fd, size, directio.Options{SetDirect: setDirect, PwriteDirect: pwriteDirect})
}

const alignMask = directio.Align - 1

// stager gathers, for one worker, consecutive chunks of one file delivered
// one after another (a range holds a file's chunks in order), so that they
// leave in one write of up to stageSize.
type stager struct {
	w      *runWriter // writes the runs; nil: flush writes them itself
	buf    []byte     // aligned, stageSize; made on first use
	f      *openFile
	start  int64 // the run's first byte in the file
	n      int   // its length
	chunks int   // chunks wholly in the run, finished when it is written
}

// add stages data, the chunk at off of f (f.dw is set); the chunk is
// finished (f.done) once written.
func (s *stager) add(rs *restorer, f *openFile, off int64, data []byte) {
	if s.f != nil && (s.f != f || s.start+int64(s.n) != off) {
		s.flush(rs)
	}
	for {
		if s.f == nil {
			if s.buf == nil {
				if s.w != nil {
					s.buf = s.w.buffer()
				} else {
					s.buf = directio.Buffer(stageSize)
				}
			}
			s.f, s.start, s.n = f, off, 0
		}
		pos := int(s.start&alignMask) + s.n
		m := copy(s.buf[pos:], data)
		s.n += m
		data = data[m:]
		if len(data) == 0 {
			break
		}
		// full: write it, the rest of the chunk starts a run of its own
		s.flush(rs)
		off += int64(m)
	}
	s.chunks++
}

// flush writes the run and finishes its chunks: behind the worker when
// the restore has a runWriter (st.w), else at once.
func (s *stager) flush(rs *restorer) {
	if s.f == nil {
		return
	}
	run := stagedRun{buf: s.buf, f: s.f, start: s.start, n: s.n, chunks: s.chunks}
	s.f, s.n, s.chunks = nil, 0, 0
	if s.w == nil {
		run.write(rs)
		return
	}
	s.w.runs <- run
	s.buf = s.w.buffer()
}

// stagedRun is a run a stager gathered: n bytes of f from start, in buf
// from start%Align on, finishing chunks chunks once written.
type stagedRun struct {
	buf    []byte
	f      *openFile
	start  int64
	n      int
	chunks int
}

// write writes the run and finishes its chunks.
func (r stagedRun) write(rs *restorer) {
	f := r.f
	var err error
	if r.n > 0 && !f.failed.Load() {
		err = f.dw.WriteRun(r.buf, r.start, r.n)
		if err != nil {
			err = fmt.Errorf("restore %s at offset %d: %w", f.job.rel, r.start, err)
		}
	}
	if err != nil && r.chunks == 0 {
		// a run cut by a full buffer: its chunk finishes in the next
		f.failed.Store(true)
		rs.fail(err)
	}
	for range r.chunks {
		f.done(rs, err)
		err = nil
	}
}

// runWriter writes the workers' staged runs behind them. A direct write
// waits for the disk, and a worker that waited for it decoded nothing
// meanwhile: on the bench's 2 GiB set the four workers spent 5.3 of
// their 8.6 s in pwrite, and the two cores were busy a little over half
// the time (traced). Handing each run to runWriters goroutines lets the
// workers go on decoding while up to runBuffers runs wait for the disk.
type runWriter struct {
	runs chan stagedRun
	free chan []byte
	made atomic.Int32 // buffers made so far, at most the stagers' and runBuffers more
	max  int32
	wg   sync.WaitGroup
}

const (
	runWriters = 2
	runBuffers = 4
)

// newRunWriter starts the writers for workers stagers.
func newRunWriter(rs *restorer, workers int) *runWriter {
	w := &runWriter{
		runs: make(chan stagedRun, runBuffers),
		free: make(chan []byte, workers+runBuffers),
		max:  int32(workers + runBuffers),
	}
	w.wg.Add(runWriters)
	for range runWriters {
		go func() {
			defer w.wg.Done()
			for r := range w.runs {
				r.write(rs)
				w.free <- r.buf
			}
		}()
	}
	return w
}

// buffer returns a stage buffer: a free one, a new one while fewer than
// max exist, else the next one a writer frees.
func (w *runWriter) buffer() []byte {
	select {
	case b := <-w.free:
		return b
	default:
	}
	if w.made.Add(1) <= w.max {
		return directio.Buffer(stageSize)
	}
	w.made.Add(-1)
	return <-w.free
}

// close waits for the runs handed over; no stager hands more.
func (w *runWriter) close() {
	close(w.runs)
	w.wg.Wait()
}
