package storage

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/floe-backup/floe/internal/slab"
)

// Spool holds an object written piece by piece (a PendingObject of a
// remote backend) until it is complete and can be uploaded under its
// name: in memory while all spools of the process hold less than
// SpoolMemory, else in a temporary file. A pack of the default size stays
// in memory, so that it is not written to a disk and read back only to
// be sent; a pack of a large pack_size, or one more than a backup's
// usual three (the one filling, one being sent on each of two
// connections), spills to the file, so that memory stays bounded.
// Either way it can be read again (ReadAt)
// by a retried upload.
type Spool struct {
	// mu: an HTTP transport may still read a request body after the
	// answer came (an early refusal), while the spool is closed and its
	// memory reused; reads after Close fail instead
	mu     sync.Mutex
	mem    bool // may hold bytes in memory
	open   func() (*os.File, error)
	chunks []*[]byte // spoolChunk bytes each but the last
	f      *os.File
	n      int64
	err    error
}

// SpoolMemory bounds the memory all spools of a process hold together:
// three packs of the default 16 MiB pack_size and their headers, plus a
// tree pack. A backup through floe serve holds that many at once: one
// pack uploading per connection (two by default, storage.ParallelSaver)
// and the one filling. With room for two, every third pack spilled to a
// temporary file, written and read back (the large bench set through
// floe serve: 22 of 75 packs, 366 MiB, about 0.3 s of the client's CPU).
// The arena is address space until used, so a backup that holds fewer
// packs does not pay for it.
const SpoolMemory = 64 << 20

const spoolChunk = 1 << 20

var (
	// spoolChunks are the chunks not in use. They come from one arena
	// outside the Go heap where the system allows (slab.Map): in the
	// heap, 40 MiB held would raise the collector's goal by as much
	// again, and chunks freed and allocated anew cost page faults
	spoolChunks = make(chan *[]byte, SpoolMemory/spoolChunk)
	spoolUsed   atomic.Int64
	arenaOnce   sync.Once
)

func getChunk() *[]byte {
	arenaOnce.Do(func() {
		arena := slab.Map(SpoolMemory)
		for i := 0; i+spoolChunk <= len(arena); i += spoolChunk {
			c := arena[i : i : i+spoolChunk]
			spoolChunks <- &c
		}
	})
	select {
	case c := <-spoolChunks:
		return c
	default:
		// no arena (reserveChunk bounds how many are out)
		b := make([]byte, 0, spoolChunk)
		return &b
	}
}

func putChunk(c *[]byte) {
	*c = (*c)[:0]
	select {
	case spoolChunks <- c:
	default:
	}
}

// reserveChunk books one chunk of SpoolMemory, or reports that it is
// spent.
func reserveChunk() bool {
	for {
		used := spoolUsed.Load()
		if used+spoolChunk > SpoolMemory {
			return false
		}
		if spoolUsed.CompareAndSwap(used, used+spoolChunk) {
			return true
		}
	}
}

// NewSpool returns an empty spool. With inMemory it holds what is written
// in memory while SpoolMemory allows, and then moves it to the file open
// makes; without, it writes to that file from the start. The file is
// unlinked or removed by the caller once the spool is closed.
func NewSpool(inMemory bool, open func() (*os.File, error)) *Spool {
	return &Spool{mem: inMemory, open: open}
}

// Write implements io.Writer.
func (s *Spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, s.err
	}
	if s.f == nil && !s.room(len(p)) {
		if err := s.spill(); err != nil {
			s.err = err
			return 0, err
		}
	}
	if s.f != nil {
		n, err := s.f.Write(p)
		s.n += int64(n)
		if err != nil {
			s.err = err
		}
		return n, err
	}
	// room booked the chunks: fill the first with room, then the next
	i := len(s.chunks) - 1
	for i > 0 && len(*s.chunks[i-1]) < spoolChunk {
		i--
	}
	for rest := p; len(rest) > 0; i++ {
		c := s.chunks[i]
		k := min(len(rest), spoolChunk-len(*c))
		*c = append(*c, rest[:k]...)
		rest = rest[k:]
	}
	s.n += int64(len(p))
	return len(p), nil
}

// room makes room in memory for n more bytes (booking chunks of
// SpoolMemory), or reports that there is none.
func (s *Spool) room(n int) bool {
	if !s.mem {
		return false
	}
	free := 0
	if len(s.chunks) > 0 {
		free = spoolChunk - len(*s.chunks[len(s.chunks)-1])
	}
	for free < n {
		if !reserveChunk() {
			return false
		}
		s.chunks = append(s.chunks, getChunk())
		free += spoolChunk
	}
	return true
}

// spill moves what is in memory to the file.
func (s *Spool) spill() error {
	f, err := s.open()
	if err != nil {
		return err
	}
	for _, c := range s.chunks {
		if _, err := f.Write(*c); err != nil {
			f.Close()
			return err
		}
	}
	s.release()
	s.f = f
	return nil
}

func (s *Spool) release() {
	for _, c := range s.chunks {
		putChunk(c)
	}
	spoolUsed.Add(-int64(len(s.chunks)) * spoolChunk)
	s.chunks = nil
}

// Size is the number of bytes written.
func (s *Spool) Size() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// InMemory reports whether the spool has not spilled to a file.
func (s *Spool) InMemory() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.f == nil
}

// ReadAt implements io.ReaderAt over what was written.
func (s *Spool) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off < 0 {
		return 0, fmt.Errorf("spool: negative offset %d", off)
	}
	if s.err == os.ErrClosed {
		return 0, os.ErrClosed
	}
	if s.f != nil {
		return s.f.ReadAt(p, off)
	}
	n := 0
	for n < len(p) && off < s.n {
		c := *s.chunks[off/spoolChunk]
		k := copy(p[n:], c[off%spoolChunk:])
		n += k
		off += int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Close gives the memory back and closes the file; the spool is empty.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.release()
	s.n = 0
	if s.err == nil {
		s.err = os.ErrClosed
	}
	if s.f != nil {
		err := s.f.Close()
		s.f = nil
		return err
	}
	return nil
}
