//go:build linux

package e2e

// Attacks on the commands that read a snapshot back, by whoever can add
// snapshot records (a write-only key, a floe server's backup token): trees
// that cost readers more than they should, and trees whose restore, dump
// or listing would harm the machine of the administrator who runs them
// (docs/SECURITY.md "A hostile snapshot").

import (
	"archive/tar"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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

// Names, link targets and owner names of a snapshot are the writer's
// choice: escape sequences (ESC, the C1 CSI, OSC to retitle the terminal),
// carriage returns and newlines in them must reach no output raw, so
// that they can neither drive the admin's terminal nor forge a line.
func TestAttackHostileTreeStringsEscaped(t *testing.T) {
	e := newEnv(t)
	e.init()
	r := e.openInProcess()
	data := []byte("content")
	id := saveBlob(t, r, repo.DataBlob, data)
	now := time.Now()
	file := func(name string) *snapshot.Node {
		return &snapshot.Node{Name: name, Type: snapshot.TypeFile, Mode: 0o644, ModTime: now, Size: uint64(len(data)),
			Content: []hash.Ref{id}, ChunkSizes: []uint32{uint32(len(data))},
			User: "u\x1b[31m\nFORGED user", Group: "g\rFORGED group"}
	}
	// below /crafted, the path the snapshot records say they backed up
	// (audit looks there)
	crafted := func(nodes ...*snapshot.Node) string {
		plain, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
		if err != nil {
			t.Fatal(err)
		}
		sub := saveBlob(t, r, repo.TreeBlob, plain)
		return saveTree(t, r, &snapshot.Node{Name: "crafted", Type: snapshot.TypeDir, Mode: 0o755, ModTime: now, Subtree: sub})
	}
	sid1 := crafted(file("plain"))
	nodes := []*snapshot.Node{
		file("plain"),
		file("esc\x1b[2J\x1b]0;owned\x07"),
		file("cr\rFORGED cr"),
		file("nl\nFORGED nl"),
		file("csi\u009b31m"),
		&snapshot.Node{Name: "link\nFORGED link", Type: snapshot.TypeSymlink, ModTime: now, LinkTarget: "t\x1b]0;title\x07\nFORGED target"},
		// a socket: dump skips it with a warning that names it
		&snapshot.Node{Name: "sock\nFORGED sock\x1b[2J", Type: snapshot.TypeSocket, Mode: 0o600, ModTime: now},
	}
	sid2 := crafted(nodes...)
	// device numbers no system has: restore reports them by name; dump
	// writes the first with a GNU header (a PAX one cannot hold minor
	// 2^28) and skips the second (major 2^31, more than GNU tar reads)
	// with a warning that names it
	sid3 := crafted(append(nodes,
		&snapshot.Node{Name: "dev\nFORGED dev\x1b[2J", Type: snapshot.TypeCharDev, Mode: 0o600, ModTime: now, Rdev: 1 << 40},
		&snapshot.Node{Name: "huge\nFORGED huge\x1b[2J", Type: snapshot.TypeCharDev, Mode: 0o600, ModTime: now, Rdev: 1 << 63})...)
	target := e.path("target")
	rules := e.path("audit.rules")
	if err := os.WriteFile(rules, []byte("/ R\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"audit", sid1, "--against-snapshot", sid3, "--rules", rules},
		{"ls", "-l", sid3},
		{"ls", sid3},
		{"find", "*"},
		{"diff", sid1, sid3},
		{"restore", sid3, "--target", target, "-n", "-v"},
		{"restore", sid3, "--target", target},
		{"dump", sid2 + ":/", "--output", e.path("out.tar")},
		{"dump", sid3 + ":/", "--output", e.path("out.tar")},
	} {
		res := e.floe(args...)
		out := res.stdout + res.stderr
		if args[0] == "audit" && !strings.Contains(out, "FORGED nl") {
			t.Errorf("floe audit did not report the names: %s", res)
		}
		if strings.Contains(out, "panic") {
			t.Errorf("floe %s panicked: %s", args[0], res)
		}
		if args[0] == "dump" && (res.code != 0 || !strings.Contains(res.stderr, "skipped /crafted/sock")) {
			t.Errorf("floe %s: want the archive, the socket skipped: %s", strings.Join(args, " "), res)
		}
		if i := strings.IndexAny(out, "\x1b\r\u009b\x07"); i >= 0 {
			t.Errorf("floe %s: a raw control character at %d: %q", strings.Join(args, " "), i, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "FORGED") {
				t.Errorf("floe %s: a name forged the line %q:\n%s", strings.Join(args, " "), line, res)
			}
		}
		if strings.Join(args[:2], " ") == "dump "+sid3+":/" && !strings.Contains(res.stderr, "skipped /crafted/huge") {
			t.Errorf("dump: the device it cannot hold is not named: %s", res)
		}
	}
	// the last dump, of sid3
	f, err := os.Open(e.path("out.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	devs := map[string][2]int64{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("out.tar: %v", err)
		}
		if h.Typeflag == tar.TypeChar {
			devs[h.Name] = [2]int64{h.Devmajor, h.Devminor}
		}
	}
	if len(devs) != 1 || devs["crafted/dev\nFORGED dev\x1b[2J"] != [2]int64{0, 1 << 28} {
		t.Errorf("devices in the dump: %v", devs)
	}
}

// A snapshot written to harm whoever restores it as root: a symlink out of
// the target, hard links to it, to a FIFO and to a device node, a setuid
// root file, file capabilities, a socket. Restore (with --verify, resumed,
// with --overwrite always --delete) writes nothing outside the target,
// never blocks on the FIFO, and restores what docs/SECURITY.md ("A
// hostile snapshot") says it does: special files, setuid bits and
// capabilities as backed up, in a target it creates mode 0700. dump
// writes relative names, hard links to names inside the archive.
func TestAttackHostileTreeRestoreAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: device nodes, owners, capabilities")
	}
	e := newEnv(t)
	e.init()
	r := e.openInProcess()
	outside := e.mkdir("outside")
	sentinel := filepath.Join(outside, "sentinel")
	if err := os.WriteFile(sentinel, []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := []byte("#!/bin/sh\necho pwned\n")
	id := saveBlob(t, r, repo.DataBlob, data)
	now := time.Now()
	file := func(name string, mode uint32, links, inode uint64) *snapshot.Node {
		return &snapshot.Node{Name: name, Type: snapshot.TypeFile, Mode: mode, ModTime: now, Size: uint64(len(data)),
			Content: []hash.Ref{id}, ChunkSizes: []uint32{uint32(len(data))}, Links: links, Inode: inode, Device: 1}
	}
	// CAP_NET_RAW, effective: struct vfs_cap_data, revision 2
	capability := []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	capFile := file("cap", 0o755, 1, 0)
	capFile.Xattrs = []snapshot.Xattr{{Name: "security.capability", Value: capability}, {Name: "trusted.floe", Value: []byte("x")}}
	sub, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: []*snapshot.Node{file("passwd", 0o644, 1, 0)}})
	if err != nil {
		t.Fatal(err)
	}
	subID := saveBlob(t, r, repo.TreeBlob, sub)
	sid := saveTree(t, r,
		// a symlink out, then a hard link to it, a directory whose name
		// sorts after it, and a file through it are all inside
		&snapshot.Node{Name: "a", Type: snapshot.TypeSymlink, ModTime: now, LinkTarget: outside, Links: 2, Inode: 11, Device: 1},
		file("a-link", 0o644, 2, 11),
		&snapshot.Node{Name: "etc", Type: snapshot.TypeDir, Mode: 0o755, ModTime: now, Subtree: subID},
		capFile,
		&snapshot.Node{Name: "dev", Type: snapshot.TypeCharDev, Mode: 0o666, ModTime: now, Rdev: uint64(unix.Mkdev(1, 3)), Links: 2, Inode: 12, Device: 1},
		file("dev-link", 0o644, 2, 12),
		&snapshot.Node{Name: "fifo", Type: snapshot.TypeFIFO, Mode: 0o644, ModTime: now, Links: 2, Inode: 10, Device: 1},
		file("fifo-link", 0o644, 2, 10),
		&snapshot.Node{Name: "sock", Type: snapshot.TypeSocket, Mode: 0o777, ModTime: now},
		&snapshot.Node{Name: "suid", Type: snapshot.TypeFile, Mode: 0o4755, ModTime: now, Size: uint64(len(data)),
			Content: []hash.Ref{id}, ChunkSizes: []uint32{uint32(len(data))}},
	)
	target := e.path("target")
	for _, args := range [][]string{
		{"restore", sid, "--target", target, "--verify"},
		{"restore", sid, "--target", target, "--verify"}, // resumed over itself
		{"restore", sid, "--target", target, "--overwrite", "always", "--delete"},
	} {
		res := e.limited(args...)
		expectCode(t, res, 0)
	}
	if b, err := os.ReadFile(sentinel); err != nil || string(b) != "outside" {
		t.Errorf("sentinel: %q, %v", b, err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 1 {
		t.Errorf("restore wrote %d entries outside", len(entries)-1)
	}
	lstat := func(name string) *unix.Stat_t {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(target, name), &st); err != nil {
			t.Fatal(err)
		}
		return &st
	}
	if st := lstat("."); st.Mode&0o7777 != 0o700 {
		t.Errorf("target created mode %o, want 0700", st.Mode&0o7777)
	}
	for name, typ := range map[string]uint32{"a-link": unix.S_IFLNK, "fifo-link": unix.S_IFIFO, "dev-link": unix.S_IFCHR, "etc/passwd": unix.S_IFREG} {
		if st := lstat(name); st.Mode&unix.S_IFMT != typ {
			t.Errorf("%s: type %o, want %o", name, st.Mode&unix.S_IFMT, typ)
		}
	}
	if st := lstat("dev"); st.Rdev != unix.Mkdev(1, 3) || st.Mode&0o7777 != 0o666 {
		t.Errorf("dev: rdev %x mode %o", st.Rdev, st.Mode&0o7777)
	}
	if st := lstat("suid"); st.Mode&0o7777 != 0o4755 || st.Uid != 0 {
		t.Errorf("suid: mode %o uid %d, want 4755 root (restored as backed up)", st.Mode&0o7777, st.Uid)
	}
	for _, x := range capFile.Xattrs {
		buf := make([]byte, 64)
		n, err := unix.Lgetxattr(filepath.Join(target, "cap"), x.Name, buf)
		if err != nil || string(buf[:n]) != string(x.Value) {
			t.Errorf("cap: %s %x, %v; want it restored as backed up", x.Name, buf[:max(n, 0)], err)
		}
	}
	if _, err := os.Lstat(filepath.Join(target, "sock")); !os.IsNotExist(err) {
		t.Errorf("a socket was made: %v", err)
	}

	// --untrusted: none of it
	untrusted := e.path("untrusted")
	res := e.limited("restore", sid, "--target", untrusted, "--untrusted", "--verify")
	expectCode(t, res, 0)
	if !strings.Contains(res.stdout, "of 3 entries (--untrusted)") {
		t.Errorf("want 3 entries reported withheld: %s", res)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(untrusted, "dev"), &st); err == nil {
		t.Errorf("--untrusted made the device node")
	}
	if err := unix.Lstat(filepath.Join(untrusted, "dev-link"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Errorf("dev-link: %v %o, want the file restored by itself", err, st.Mode)
	}
	if err := unix.Lstat(filepath.Join(untrusted, "suid"), &st); err != nil || st.Mode&0o7777 != 0o755 {
		t.Errorf("suid: %v %o, want 0755", err, st.Mode&0o7777)
	}
	if n, _ := unix.Llistxattr(filepath.Join(untrusted, "cap"), make([]byte, 256)); n > 0 {
		for _, x := range capFile.Xattrs {
			if _, err := unix.Lgetxattr(filepath.Join(untrusted, "cap"), x.Name, make([]byte, 64)); err == nil {
				t.Errorf("--untrusted restored %s", x.Name)
			}
		}
	}
	if err := unix.Lstat(filepath.Join(untrusted, "fifo-link"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo-link: %v %o, want the FIFO", err, st.Mode)
	}

	// the tar of it: relative names, hard links to names inside
	res = e.ok("dump", sid+":/", "--output", e.path("out.tar"))
	f, err := os.Open(e.path("out.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	names := map[string]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%v: %s", err, res)
		}
		if !filepath.IsLocal(h.Name) {
			t.Errorf("tar name %q is not local", h.Name)
		}
		if h.Typeflag == tar.TypeLink && !names[h.Linkname] {
			t.Errorf("hard link %s -> %q: not an earlier entry", h.Name, h.Linkname)
		}
		names[strings.TrimSuffix(h.Name, "/")] = true
	}
	if !names["etc/passwd"] || !names["fifo-link"] {
		t.Errorf("tar entries: %v", names)
	}
}

// chainTree stores a snapshot of a chain of depth directories, each the
// only entry of its parent, all named name, the deepest holding bottom,
// and returns its ID.
func chainTree(t *testing.T, r *repo.Repository, depth int, name string, bottom ...*snapshot.Node) string {
	t.Helper()
	ctx := context.Background()
	w := r.StartWriting()
	now := time.Now()
	nodes := bottom
	for i := 0; i < depth; i++ {
		plain, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
		if err != nil {
			t.Fatal(err)
		}
		tid, _, _, err := w.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(plain), plain)
		if err != nil {
			t.Fatal(err)
		}
		nodes = []*snapshot.Node{{Name: name, Type: snapshot.TypeDir, Mode: 0o755, ModTime: now, Subtree: tid}}
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	return saveTree(t, r, nodes...)
}

// A chain of 3,000 directories of 255-byte names is a 1 MB snapshot whose
// deepest path is 768 KB long. Walks that kept every level's path while
// they walked the levels below used memory quadratic in the depth: find
// and stats ran out of memory (find also remembered every directory's
// matches by path), and so did diff comparing two such chains and rewrite; restore
// kept every directory's path to set its metadata last. They now keep one
// path, and restore each directory as its parent's number and its name.
func TestAttackDeepLongPaths(t *testing.T) {
	e := newEnv(t)
	e.init()
	r := e.openInProcess()
	name := strings.Repeat("d", 255)
	sid := chainTree(t, r, 3000, name)
	// the same chain, a FIFO at the bottom: every level differs
	other := chainTree(t, r, 3000, name, &snapshot.Node{Name: "fifo", Type: snapshot.TypeFIFO, Mode: 0o600, ModTime: time.Now()})
	for _, args := range [][]string{
		{"find", "nothing-matches"},
		{"diff", sid, other},
		// an unanchored pattern is tried at every level (it took hours)
		{"rewrite", other, "--exclude", "fifo", "--dry-run"},
		// and so were patterns of several components, anchored or not
		{"rewrite", other, "--exclude", "d*/fifo", "--exclude", "/d*/**/d*/nothing", "--dry-run"},
		{"find", "d*/d*/nothing", "/d*/*/fifo"},
		{"stats", sid},
		{"restore", sid, "--target", e.path("target")},
		{"restore", sid, "--target", e.path("elsewhere"), "-n", "--exclude", "*.tmp"},
		{"restore", other, "--target", e.path("third"), "-n", "--include", "d*/**/fifo", "--exclude", "x/**/y"},
	} {
		res := e.limited(args...)
		expectCode(t, res, 0)
		t.Logf("floe %s: %v wall, %v CPU", args[0], res.wall, res.cpu)
	}
	res := e.limited("stats", sid)
	if !strings.Contains(res.stdout, "3000") && !strings.Contains(res.stdout, "3,000") {
		t.Errorf("stats: want the 3000 directories counted: %s", res)
	}
}
