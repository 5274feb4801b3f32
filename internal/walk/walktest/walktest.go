// Package walktest builds snapshot trees in memory for tests of the
// packages that walk them (walk, diff, dump, stats, audit).
package walktest

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
)

// Trees is an in-memory snapshot.TreeLoader. Trees are encoded and decoded as in a
// repository, so they are checked and sorted the same way.
type Trees struct {
	mu    sync.Mutex
	trees map[hash.ID][]byte
	loads map[hash.ID]int
	// Fail, if set, makes LoadTree of these IDs fail.
	Fail map[hash.Ref]error
}

// New returns an empty set of trees.
func New() *Trees {
	return &Trees{trees: map[hash.ID][]byte{}, loads: map[hash.ID]int{}, Fail: map[hash.Ref]error{}}
}

// Add stores a tree of the nodes and returns its ID (the unkeyed hash of
// its encoding). It panics on nodes EncodeTree rejects.
func (t *Trees) Add(nodes ...*snapshot.Node) hash.Ref {
	b, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
	if err != nil {
		panic(err)
	}
	id := hash.Sum(b)
	t.mu.Lock()
	t.trees[id] = b
	t.mu.Unlock()
	return hash.Ref{ID: id, Key: hash.Sum(append([]byte("key"), b...))}
}

// LoadTree implements snapshot.TreeLoader.
func (t *Trees) LoadTree(ctx context.Context, ref hash.Ref) (*snapshot.Tree, error) {
	id := ref.ID
	t.mu.Lock()
	b, ok := t.trees[id]
	ferr := t.Fail[ref]
	t.loads[id]++
	t.mu.Unlock()
	if ferr != nil {
		return nil, ferr
	}
	if !ok {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), storage.ErrNotExist)
	}
	return snapshot.DecodeTree(b)
}

// Loads returns how often the tree id was loaded.
func (t *Trees) Loads(ref hash.Ref) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loads[ref.ID]
}

// Time is the modification time of nodes made by File, Dir and friends.
var Time = time.Date(2026, 11, 21, 20, 30, 0, 123456789, time.UTC)

// File returns a regular file node of mode 0644 owned by 1000:1000.
// The size is spread over the chunks, the last one taking the remainder.
func File(name string, size uint64, content ...hash.Ref) *snapshot.Node {
	n := &snapshot.Node{Name: name, Type: snapshot.TypeFile, Mode: 0o644, UID: 1000, GID: 1000,
		User: "alice", Group: "staff", ModTime: Time, Size: size, Content: content}
	if len(content) > 0 {
		n.ChunkSizes = make([]uint32, len(content))
		each := size / uint64(len(content))
		for i := range n.ChunkSizes {
			n.ChunkSizes[i] = uint32(each)
		}
		n.ChunkSizes[len(content)-1] = uint32(size - each*uint64(len(content)-1))
	}
	return n
}

// Dir returns a directory node of mode 0755 whose contents are the tree sub.
func Dir(name string, sub hash.Ref) *snapshot.Node {
	return &snapshot.Node{Name: name, Type: snapshot.TypeDir, Mode: 0o755, User: "root", Group: "root",
		ModTime: Time, Subtree: sub}
}

// Symlink returns a symlink node.
func Symlink(name, target string) *snapshot.Node {
	return &snapshot.Node{Name: name, Type: snapshot.TypeSymlink, Mode: 0o777, ModTime: Time, LinkTarget: target}
}

// ID returns a made-up blob reference derived from s.
func ID(s string) hash.Ref {
	return hash.Ref{ID: hash.Sum([]byte(s)), Key: hash.Sum([]byte("key " + s))}
}
