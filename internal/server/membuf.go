package server

import (
	"sync"
	"sync/atomic"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// Uploads up to memUploadMax bytes are received into memory, as long as
// all of them together stay within the server's memory budget
// (Options.UploadMemory); larger ones, and those over budget, go to the
// spool file. A pack (16 MiB by default) held in memory is hashed for its
// name and verified blob by blob in one pass, and written once, to the
// repository: through the spool it was written, read back to verify,
// read again and written again.
const (
	memUploadMax = 64 << 20
	// DefaultUploadMemory is the default of Options.UploadMemory: about
	// sixteen packs of the default size at once.
	DefaultUploadMemory = 256 << 20
	// memClass is the granularity of the pooled buffers: packs of one
	// pack_size vary by a few MiB, and share a class.
	memClass = 4 << 20
)

// PackBytesVerifier is an UploadVerifier that checks a pack held in
// memory in the same pass as it hashes the pack's name, so that each byte
// is read once (FormatVerifier is one). sum is the BLAKE3-256 of data;
// the server compares it with the name first and ignores err on a
// mismatch. The verifier must not trust data under h.Name unless sum
// equals it.
type PackBytesVerifier interface {
	VerifyPackBytes(h storage.Handle, data []byte) (sum hash.ID, err error)
}

// memBudget hands out buffers for uploads held in memory, within a
// budget; a buffer comes back to a pool of its size class.
type memBudget struct {
	limit int64
	used  atomic.Int64
	// free keeps buffers given back for the next uploads, up to
	// memKeep bytes: a sync.Pool is emptied by the collections that
	// pack-sized allocations cause, and a fresh buffer costs page
	// faults to fill (about as much CPU as hashing it)
	mu   sync.Mutex
	free [memUploadMax / memClass][]*[]byte
	kept int64
}

// memKeep bounds the free buffers kept: a few packs' worth.
const memKeep = 64 << 20

func newMemBudget(limit int64) *memBudget { return &memBudget{limit: limit} }

// get returns a buffer of size bytes, or nil when size is above
// memUploadMax or the budget is spent (the caller spools instead).
func (m *memBudget) get(size int64) []byte {
	if m == nil || size > memUploadMax {
		return nil
	}
	class := max(1, (size+memClass-1)/memClass)
	c := class * memClass
	for {
		used := m.used.Load()
		if used+c > m.limit {
			return nil
		}
		if m.used.CompareAndSwap(used, used+c) {
			break
		}
	}
	m.mu.Lock()
	if f := m.free[class-1]; len(f) > 0 {
		b := f[len(f)-1]
		m.free[class-1] = f[:len(f)-1]
		m.kept -= c
		m.mu.Unlock()
		return (*b)[:size]
	}
	m.mu.Unlock()
	return make([]byte, size, c)
}

// put returns a buffer from get.
func (m *memBudget) put(b []byte) {
	if m == nil || cap(b) == 0 || cap(b)%memClass != 0 || cap(b) > memUploadMax {
		return
	}
	class := cap(b) / memClass
	m.used.Add(-int64(cap(b)))
	b = b[:0]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.kept+int64(cap(b)) > memKeep {
		return // the collector takes it
	}
	m.kept += int64(cap(b))
	m.free[class-1] = append(m.free[class-1], &b)
}
