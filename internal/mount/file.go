package mount

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/walk"
)

// fileNode is a regular file of a snapshot.
type fileNode struct {
	fs.Inode
	entry
	dir *dirNode // the directory it was looked up in

	mu  sync.Mutex
	lay *layout
}

var (
	_ fs.NodeOpener    = (*fileNode)(nil)
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.FileReader    = (*fileHandle)(nil)
	_ fs.FileLseeker   = (*fileHandle)(nil)
)

// layout places a file's blobs: blob i holds bytes off[i] to off[i+1].
type layout struct {
	ids       []hash.Ref
	off       []int64
	hole      []bool // sparse files: blob i is all zeros, a hole
	allocated int64  // bytes not in holes
}

// layout computes (once) where each blob of the file starts, from the
// chunk sizes its tree records, so that a read at any offset finds its
// blob by binary search.
// name returns the file's path in the mount (for messages).
func (n *fileNode) name() string {
	if n.dir == nil {
		return n.n.Name
	}
	return n.dir.view + walk.Join(n.dir.path(), n.n.Name)
}

func (n *fileNode) layout() (*layout, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lay != nil {
		return n.lay, nil
	}
	idx := n.f.r.Index()
	l := &layout{ids: n.n.Content, off: make([]int64, len(n.n.Content)+1)}
	if n.n.Sparse {
		l.hole = make([]bool, len(l.ids))
	}
	maxChunk := n.f.r.ChunkerParams().Max
	for i, id := range l.ids {
		loc, ok := idx.Lookup(repo.BlobHandle{Type: repo.DataBlob, ID: id.ID})
		if !ok {
			return nil, fmt.Errorf("%s: data blob %s: %w", n.name(), id.Short(), repo.ErrBlobNotFound)
		}
		size := n.n.ChunkSizes[i]
		if size > maxChunk {
			// a damaged or hostile tree: zeroID would hash (and
			// allocate) that many zeros, up to 4 GiB per size
			return nil, fmt.Errorf("%s: a chunk of %d bytes, larger than any chunk (%d): damaged tree", n.name(), size, maxChunk)
		}
		l.off[i+1] = l.off[i] + int64(size)
		// Holes are stored as blobs of zeros, which compress to almost
		// nothing: only such blobs are worth hashing zeros for.
		if l.hole != nil && int64(loc.Length)*64 < int64(size) && id.Key == n.f.zeroID(size) {
			l.hole[i] = true
		} else {
			l.allocated += int64(size)
		}
	}
	n.lay = l
	return l, nil
}

func (n *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(&out.Attr)
	if n.n.Sparse {
		if l, err := n.layout(); err == nil {
			out.Blocks = uint64(l.allocated+4095) / 4096 * 8
		}
	}
	return 0
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	l, err := n.layout()
	if err != nil {
		return nil, 0, n.f.fail(err)
	}
	// The content never changes: the kernel may keep it cached.
	return &fileHandle{n: n, lay: l, last: -1}, fuse.FOPEN_KEEP_CACHE, 0
}

// fileHandle is an open file. Reads that continue where the last one
// ended start loading the next blobs in the background (read-ahead).
type fileHandle struct {
	n   *fileNode
	lay *layout

	mu   sync.Mutex
	last int // index of the blob the last read ended in
}

// find returns the index of the blob holding byte off (< the file's end).
func (l *layout) find(off int64) int {
	return sort.Search(len(l.ids), func(i int) bool { return l.off[i+1] > off })
}

func (l *layout) size() int64 { return l.off[len(l.ids)] }

func (h *fileHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	l := h.lay
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= l.size() || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	first := l.find(off)
	i, n := first, 0
	for n < len(dest) && i < len(l.ids) {
		pos := off + int64(n)
		start, end := l.off[i], l.off[i+1]
		if l.hole != nil && l.hole[i] {
			c := int(min(int64(len(dest)-n), end-pos))
			clear(dest[n : n+c])
			n += c
		} else {
			data, err := h.n.f.blobs.get(ctx, l.ids[i])
			if err != nil {
				if ctx.Err() != nil {
					return nil, syscall.EINTR
				}
				return nil, h.n.f.fail(fmt.Errorf("%s at offset %d: %w", h.n.name(), pos, err))
			}
			if int64(len(data)) != end-start {
				return nil, h.n.f.fail(fmt.Errorf("%s: blob %s has %d bytes, the index says %d", h.n.name(), l.ids[i].Short(), len(data), end-start))
			}
			n += copy(dest[n:], data[pos-start:])
		}
		if off+int64(n) < end {
			break // dest is full
		}
		i++
	}
	h.readAhead(first, l.find(off+int64(n)-1))
	return fuse.ReadResultData(dest[:n]), 0
}

// readAhead prefetches the blobs after last when the read that spans
// first to last follows the previous one (the kernel sends sequential
// reads slightly out of order, so a neighbouring blob counts too).
func (h *fileHandle) readAhead(first, last int) {
	ra := h.n.f.readAhead
	if ra <= 0 {
		return
	}
	h.mu.Lock()
	seq := first >= h.last-1 && first <= h.last+1
	if last > h.last || !seq {
		h.last = last
	}
	h.mu.Unlock()
	if !seq {
		return
	}
	l := h.lay
	for j := last + 1; j <= last+ra && j < len(l.ids); j++ {
		if l.hole == nil || !l.hole[j] {
			h.n.f.blobs.prefetch(l.ids[j])
		}
	}
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the blobs that hold holes of
// a sparse file, so cp and rsync can keep it sparse.
func (h *fileHandle) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	l := h.lay
	size := uint64(l.size())
	if off >= size {
		if whence == unix.SEEK_HOLE && off == size {
			return size, 0
		}
		return 0, syscall.ENXIO
	}
	i := l.find(int64(off))
	switch whence {
	case unix.SEEK_DATA:
		for ; i < len(l.ids); i++ {
			if l.hole == nil || !l.hole[i] {
				return max(off, uint64(l.off[i])), 0
			}
		}
		return 0, syscall.ENXIO
	case unix.SEEK_HOLE:
		for ; i < len(l.ids); i++ {
			if l.hole != nil && l.hole[i] {
				return max(off, uint64(l.off[i])), 0
			}
		}
		return size, 0
	}
	return 0, syscall.EINVAL
}
