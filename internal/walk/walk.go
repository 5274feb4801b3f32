// Package walk walks the trees of a snapshot: depth first, in name order,
// with full paths ("/etc/passwd"). It is the one tree walker that ls, find,
// diff, dump and stats share, and it resolves a path inside a snapshot to
// its node.
package walk

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

// SkipDir, returned by a Func for a directory, skips the directory's
// contents (and its Leave call). Returned for any other node it is
// ignored. It is fs.SkipDir, so code used to fs.WalkDir reads naturally.
var SkipDir = fs.SkipDir

// ErrNotFound is wrapped by Resolve when a path is not in the snapshot.
var ErrNotFound = errors.New("no such file or directory in the snapshot")

// ErrNotDir is wrapped by Resolve when a path goes through a non-directory.
var ErrNotDir = errors.New("not a directory")

// Func is called with the full path of a node and the node. The node must
// not be modified: it may be shared through a Cache.
type Func func(path string, node *snapshot.Node) error

// Visitor holds the callbacks of Visit.
type Visitor struct {
	// Node is called for every node, before a directory's contents.
	Node Func
	// Leave, if set, is called after the contents of every directory
	// whose Node call did not return SkipDir.
	Leave Func
}

// Join returns the path of name inside the directory dir ("/" is the
// snapshot's root). Names are raw bytes; nothing is cleaned.
func Join(dir, name string) string {
	if dir == "/" || dir == "" {
		return "/" + name
	}
	return dir + "/" + name
}

// Walk calls fn for every node below the directory tree (a tree ID) whose
// path is dir ("/" for a snapshot's root tree), depth first in name order.
// The directory itself is not visited. An error from fn other than SkipDir
// stops the walk and is returned; errors loading trees name the path.
func Walk(ctx context.Context, l snapshot.TreeLoader, dir string, tree hash.Ref, fn Func) error {
	return Visit(ctx, l, dir, tree, Visitor{Node: fn})
}

// Visit is Walk with a Leave callback.
func Visit(ctx context.Context, l snapshot.TreeLoader, dir string, tree hash.Ref, v Visitor) error {
	buf := []byte(dir)
	err := visit(ctx, l, &buf, tree, v)
	if err == SkipDir {
		return nil
	}
	return err
}

// AppendJoin is Join on a buffer holding dir: walks that build paths in
// one buffer keep memory linear in the depth.
func AppendJoin(dir []byte, name string) []byte {
	if len(dir) == 0 || (len(dir) == 1 && dir[0] == '/') {
		return append(append(dir[:0], '/'), name...)
	}
	return append(append(dir, '/'), name...)
}

// visit walks the tree of the directory whose path buf holds. The path of
// each node is built in buf, and each directory level keeps only its
// length: a string per level, kept while the levels below are walked, cost
// memory quadratic in the depth (a chain of 3,000 directories of 255-byte
// names, a 1 MB snapshot, took gigabytes).
func visit(ctx context.Context, l snapshot.TreeLoader, buf *[]byte, tree hash.Ref, v Visitor) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := l.LoadTree(ctx, tree)
	if err != nil {
		return fmt.Errorf("load tree of %s (%s): %w", *buf, tree.Short(), err)
	}
	dirLen := len(*buf)
	for _, n := range t.Nodes {
		*buf = AppendJoin((*buf)[:dirLen], n.Name)
		p := string(*buf)
		err := v.Node(p, n)
		if n.Type != snapshot.TypeDir {
			if err != nil && err != SkipDir {
				return err
			}
			continue
		}
		if err == SkipDir {
			continue
		}
		if err != nil {
			return err
		}
		if !n.Subtree.IsNull() {
			// p is not used past this point: it is not kept while
			// the levels below are walked
			if err := visit(ctx, l, buf, n.Subtree, v); err != nil {
				return err
			}
		}
		if v.Leave != nil {
			*buf = AppendJoin((*buf)[:dirLen], n.Name)
			if err := v.Leave(string(*buf), n); err != nil && err != SkipDir {
				return err
			}
		}
	}
	*buf = (*buf)[:dirLen]
	return nil
}

// Clean returns p as an absolute, cleaned snapshot path: "" and "." are
// "/", "etc//passwd/" is "/etc/passwd". ".." cannot climb above "/".
func Clean(p string) string {
	return path.Clean("/" + p)
}

// Root returns a node standing for a snapshot's root directory, whose
// contents are the tree root. Its name is "/".
func Root(root hash.Ref) *snapshot.Node {
	return &snapshot.Node{Name: "/", Type: snapshot.TypeDir, Subtree: root}
}

// Resolve returns the cleaned path p (see Clean) and its node in the
// snapshot whose root tree is root. The root itself resolves to Root(root).
// A missing path wraps ErrNotFound, a path through a file ErrNotDir.
func Resolve(ctx context.Context, l snapshot.TreeLoader, root hash.Ref, p string) (string, *snapshot.Node, error) {
	p = Clean(p)
	node := Root(root)
	cur := "/"
	for _, c := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		if c == "" {
			continue
		}
		if node.Type != snapshot.TypeDir {
			return p, nil, fmt.Errorf("%s: %s is a %s: %w", p, cur, node.Type, ErrNotDir)
		}
		t, err := l.LoadTree(ctx, node.Subtree)
		if err != nil {
			return p, nil, fmt.Errorf("load tree of %s (%s): %w", cur, node.Subtree.Short(), err)
		}
		next := t.Find(c)
		cur = Join(cur, c)
		if next == nil {
			return p, nil, fmt.Errorf("%s: %w", cur, ErrNotFound)
		}
		node = next
	}
	return p, node, nil
}
