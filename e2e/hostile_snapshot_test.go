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
	"strings"
	"testing"

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
