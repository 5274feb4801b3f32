//go:build linux

package e2e

// Attacks on the commands that read a snapshot back, by whoever can add
// snapshot records (a write-only key, a floe server's backup token): trees
// that cost readers more than they should, and trees whose restore, dump
// or listing would harm the machine of the administrator who runs them
// (docs/SECURITY.md "A hostile snapshot").

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
)

// xattrTree encodes by hand one file node with n extended attributes of
// empty values and short distinct names: about 10 bytes each, which
// decoded cost about 130 bytes each.
func xattrTree(n int) []byte {
	buf := append([]byte("FLTR"), snapshot.TreeVersion)
	buf = binary.AppendUvarint(buf, 1)
	buf = append(buf, 1, 1, 'f', 2, 1, byte(snapshot.TypeFile))
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("u.%07x", i)
		buf = append(buf, 19, byte(1+len(name)), byte(len(name)))
		buf = append(buf, name...)
	}
	return append(buf, 0)
}

// A tree of one file with millions of extended attributes: every reader
// decodes it, and it decoded to 13 times its size (a 200 MB tree, easily
// compressed, to 2.7 GB of memory). Readers refuse it with the bound named.
func TestAttackHugeXattrList(t *testing.T) {
	n := snapshot.MaxTreeXattrs + 1
	if s := os.Getenv("FLOE_XATTRS"); s != "" {
		fmt.Sscan(s, &n)
	}
	e := newEnv(t)
	e.init()
	sid := saveRawTree(t, e.openInProcess(), xattrTree(n))
	for _, args := range [][]string{{"ls", "-l", sid}, {"restore", sid, "--target", e.path("target")}, {"dump", sid + ":/", "--output", e.path("out.tar")}} {
		res := e.limited(args...)
		expectFail(t, res)
		if !strings.Contains(res.stderr, "extended attributes: a tree holds at most") {
			t.Errorf("floe %s: want the xattr bound named: %s", args[0], res)
		}
	}
}

// A file whose chunk sizes claim more than any chunk can hold (up to 4
// GiB each; the chunker's maximum is 8 MiB): resuming a restore over a
// file of that size, or a dry run, read it back in buffers of the claimed
// size. Restore refuses the file before touching the target, and says why.
func TestAttackChunkSizes(t *testing.T) {
	e := newEnv(t)
	e.init()
	r := e.openInProcess()
	data := []byte("a few bytes of content")
	id := saveBlob(t, r, repo.DataBlob, data)
	const claimed = 4<<30 - 1
	sid := saveTree(t, r,
		&snapshot.Node{Name: "big", Type: snapshot.TypeFile, Mode: 0o644, ModTime: time.Now(), Size: claimed,
			Content: []hash.Ref{id}, ChunkSizes: []uint32{claimed}},
		&snapshot.Node{Name: "good", Type: snapshot.TypeFile, Mode: 0o644, ModTime: time.Now(), Size: uint64(len(data)),
			Content: []hash.Ref{id}, ChunkSizes: []uint32{uint32(len(data))}},
	)
	target := e.mkdir("target")
	// what a first restore, or anything else, left there: a file of the
	// size the snapshot says (sparse: it costs nothing)
	if err := os.WriteFile(filepath.Join(target, "big"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(target, "big"), claimed); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"restore", sid, "--target", target, "-n"},
		{"restore", sid, "--target", target, "--verify"},
	} {
		res := e.limited(args...)
		if res.code != 3 || !strings.Contains(res.stderr, "big") || !strings.Contains(res.stderr, "larger than any chunk") {
			t.Errorf("floe %s: want exit 3, big refused saying why: %s", strings.Join(args, " "), res)
		}
	}
	if fi, err := os.Stat(filepath.Join(target, "big")); err != nil || fi.Size() != claimed {
		t.Errorf("the refused file's predecessor was touched: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(target, "good")); err != nil || string(got) != string(data) {
		t.Errorf("good: %q, %v", got, err)
	}
}
