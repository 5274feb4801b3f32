//go:build linux

package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/chunker"
	"github.com/floe-backup/floe/internal/fsmeta"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// contentResult is the comparison of two files' contents. When they
// differ, old and new are the first 8 hex digits of the first chunk that
// differs on each side, or "content differs" where a side has no such
// chunk or the difference was found byte by byte.
type contentResult struct {
	differs  bool
	old, new string
	err      error
}

const contentDiffers = "content differs"

func chunkValue(ids []hash.ID, i int) string {
	if i < len(ids) {
		return ids[i].String()[:8]
	}
	return contentDiffers
}

// keysOf returns the keys (K, the keyed hashes of the plaintexts) of refs:
// what a live file's chunks are compared with. Only 8 hex digits of a key
// are ever shown.
func keysOf(refs []hash.Ref) []hash.ID {
	out := make([]hash.ID, len(refs))
	for i, r := range refs {
		out[i] = r.Key
	}
	return out
}

// compareIDs compares two content blob lists (snapshot against snapshot).
func compareIDs(old, new []hash.ID) contentResult {
	for i := 0; i < max(len(old), len(new)); i++ {
		if i >= len(old) || i >= len(new) || old[i] != new[i] {
			return contentResult{differs: true, old: chunkValue(old, i), new: chunkValue(new, i)}
		}
	}
	return contentResult{}
}

// hasher checks live files against the content of snapshot nodes: it cuts
// a file into chunks and names them as a backup would, and compares the
// names with the node's blob list, stopping at the first that differs.
type hasher struct {
	r      Repository
	params chunker.Params
	bufs   sync.Pool

	zeroMu  sync.Mutex
	zeroIDs map[int]hash.ID
	zeros   []byte
}

func newHasher(r Repository) *hasher {
	return &hasher{r: r, params: r.ChunkerParams(), zeroIDs: map[int]hash.ID{}}
}

// errStop ends a chunk loop early: a difference was found.
var errStop = errors.New("stop")

// idMatcher compares a stream of chunk IDs with a node's blob list.
type idMatcher struct {
	old []hash.ID
	i   int
	res contentResult
}

func (m *idMatcher) add(id hash.ID) error {
	if m.i >= len(m.old) || m.old[m.i] != id {
		m.res = contentResult{differs: true, old: chunkValue(m.old, m.i), new: id.String()[:8]}
		return errStop
	}
	m.i++
	return nil
}

func (m *idMatcher) end() contentResult {
	if !m.res.differs && m.i < len(m.old) {
		m.res = contentResult{differs: true, old: chunkValue(m.old, m.i), new: contentDiffers}
	}
	return m.res
}

// compare checks the live file at full (described by n) against the
// content of o. Files backed up whole are cut the same way: equal blob
// lists mean equal contents and a difference names the first chunk that
// differs. Files backed up sparse (o.Sparse) were cut between their holes:
// they are cut along the live file's holes, and if the lists differ (the
// holes may have moved), compared byte by byte with the repository's data.
func (h *hasher) compare(ctx context.Context, full string, o, n *snapshot.Node) contentResult {
	f, err := fsmeta.OpenForRead(full)
	if err != nil {
		return contentResult{err: err}
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return contentResult{err: err}
	}
	if st.Ino != n.Inode {
		return contentResult{err: errors.New("the file was replaced while being checked")}
	}
	m := &idMatcher{old: keysOf(o.Content)}
	if !o.Sparse {
		err = h.chunk(ctx, f, m.add)
	} else {
		err = fsmeta.Segments(f, uint64(st.Size), func(off, size int64, hole bool) error {
			if !hole {
				return h.chunk(ctx, io.NewSectionReader(f, off, size), m.add)
			}
			for size > 0 {
				l := min(size, int64(h.params.Max))
				if err := m.add(h.zeroID(int(l))); err != nil {
					return err
				}
				size -= l
			}
			return nil
		})
	}
	if err != nil && err != errStop {
		return contentResult{err: err}
	}
	res := m.end()
	if res.differs && o.Sparse {
		return h.compareBytes(ctx, f, o.Content)
	}
	return res
}

// chunk cuts rd into chunks and calls fn with each chunk's ID.
func (h *hasher) chunk(ctx context.Context, rd io.Reader, fn func(hash.ID) error) error {
	bp, _ := h.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	buf := *bp
	defer func() {
		if cap(buf) <= 2*int(h.params.Max) {
			*bp = buf[:0]
			h.bufs.Put(bp)
		}
	}()
	ch := chunker.New(rd, h.params)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := ch.Next(buf)
		buf = data
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(h.r.BlobKey(data)); err != nil {
			return err
		}
	}
}

func (h *hasher) zeroID(n int) hash.ID {
	h.zeroMu.Lock()
	defer h.zeroMu.Unlock()
	if id, ok := h.zeroIDs[n]; ok {
		return id
	}
	if len(h.zeros) < n {
		h.zeros = make([]byte, n)
	}
	id := h.r.BlobKey(h.zeros[:n])
	h.zeroIDs[n] = id
	return id
}

// compareBytes compares the file, from its start, with the data blobs.
func (h *hasher) compareBytes(ctx context.Context, f *os.File, content []hash.Ref) contentResult {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return contentResult{err: err}
	}
	var blob, live []byte
	for i, ref := range content {
		var err error
		blob, err = h.r.LoadBlob(ctx, repo.DataBlob, ref, blob)
		if err != nil {
			return contentResult{err: fmt.Errorf("load the snapshot's data: %w", err)}
		}
		if cap(live) < len(blob) {
			live = make([]byte, len(blob))
		}
		live = live[:len(blob)]
		n, err := io.ReadFull(f, live)
		if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
			return contentResult{err: err}
		}
		if !bytes.Equal(live[:n], blob) {
			return contentResult{differs: true, old: chunkValue(keysOf(content), i), new: contentDiffers}
		}
	}
	var one [1]byte
	if n, _ := f.Read(one[:]); n > 0 {
		return contentResult{differs: true, old: contentDiffers, new: contentDiffers}
	}
	return contentResult{}
}
