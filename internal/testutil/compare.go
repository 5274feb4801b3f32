//go:build linux

package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/hash"
)

// CompareOptions tune DiffTrees.
type CompareOptions struct {
	// RootMeta also compares the metadata of src and dst themselves (a
	// restore into a target directory leaves the target's own alone).
	RootMeta bool
	// Ignore lists relative paths (and everything below them) to leave out.
	Ignore []string
	// NoOwners skips uid and gid (a restore that is not root cannot set them).
	NoOwners bool
}

// CompareTrees fails t for every difference between the trees src and dst
// (see DiffTrees), leaving out the metadata of src and dst themselves.
func CompareTrees(t testing.TB, src, dst string) {
	t.Helper()
	CompareTreesOpts(t, src, dst, CompareOptions{})
}

// CompareTreesOpts is CompareTrees with options.
func CompareTreesOpts(t testing.TB, src, dst string, opts CompareOptions) {
	t.Helper()
	diffs, err := DiffTrees(src, dst, opts)
	if err != nil {
		t.Fatalf("compare %s with %s: %v", src, dst, err)
	}
	const maxShown = 50
	for i, d := range diffs {
		if i == maxShown {
			t.Errorf("... and %d more differences", len(diffs)-maxShown)
			break
		}
		t.Errorf("%s", d)
	}
}

// CompareFiles fails t unless the files a and b have the same size and
// bytes. It reads what compareContent reads: a's data, and in a's holes
// only b's data, so comparing two sparse images costs their data, not
// their size (cmp(1) reads every hole as zeros through the page cache).
func CompareFiles(t testing.TB, a, b string) {
	t.Helper()
	fa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	if fa.Size() != fb.Size() {
		t.Fatalf("%s has %d bytes, %s %d", a, fa.Size(), b, fb.Size())
	}
	d, err := compareContent(a, b, fa.Size())
	if err != nil {
		t.Fatalf("compare %s with %s: %v", a, b, err)
	}
	if d != "" {
		t.Fatalf("%s and %s: %s", a, b, d)
	}
}

// entry is what DiffTrees knows of one path.
type entry struct {
	st     unix.Stat_t
	target string            // symlinks
	xattrs map[string]string // name -> value
}

// DiffTrees compares the trees src and dst and describes each difference
// in one line: entries missing or extra, and per entry the file type,
// permission bits with setuid/setgid/sticky, uid and gid, modification time
// to the nanosecond (also of directories and symlinks), size, content,
// symlink target, device number, link count, extended attributes
// (security.selinux aside), which names share an inode (hard links), and
// sparseness: a file that is sparse in src must not take much more space in
// dst. Access and change times are not compared. Paths are quoted with %q,
// so hostile names stay readable.
func DiffTrees(src, dst string, opts CompareOptions) ([]string, error) {
	a, err := scanTree(src, opts.Ignore)
	if err != nil {
		return nil, err
	}
	b, err := scanTree(dst, opts.Ignore)
	if err != nil {
		return nil, err
	}
	var diffs []string
	add := func(rel, format string, args ...any) {
		diffs = append(diffs, fmt.Sprintf("%q: ", rel)+fmt.Sprintf(format, args...))
	}
	rels := make([]string, 0, len(a))
	for rel := range a {
		rels = append(rels, rel)
	}
	sort.Strings(rels)
	for _, rel := range rels {
		ea := a[rel]
		eb, ok := b[rel]
		if !ok {
			add(rel, "missing in %s", dst)
			continue
		}
		if rel == "." && !opts.RootMeta {
			continue
		}
		compareEntry(rel, filepath.Join(src, rel), filepath.Join(dst, rel), ea, eb, opts, add)
	}
	var extra []string
	for rel := range b {
		if _, ok := a[rel]; !ok {
			extra = append(extra, rel)
		}
	}
	sort.Strings(extra)
	for _, rel := range extra {
		add(rel, "extra in %s (not in %s)", dst, src)
	}
	diffs = append(diffs, diffHardLinks(a, b)...)
	return diffs, nil
}

func compareEntry(rel, pa, pb string, ea, eb *entry, opts CompareOptions, add func(rel, format string, args ...any)) {
	sa, sb := &ea.st, &eb.st
	if sa.Mode&unix.S_IFMT != sb.Mode&unix.S_IFMT {
		add(rel, "type %s, want %s", typeName(sb.Mode), typeName(sa.Mode))
		return
	}
	typ := sa.Mode & unix.S_IFMT
	if typ != unix.S_IFLNK && sa.Mode&0o7777 != sb.Mode&0o7777 {
		add(rel, "mode %#o, want %#o", sb.Mode&0o7777, sa.Mode&0o7777)
	}
	if !opts.NoOwners && (sa.Uid != sb.Uid || sa.Gid != sb.Gid) {
		add(rel, "owner %d:%d, want %d:%d", sb.Uid, sb.Gid, sa.Uid, sa.Gid)
	}
	if sa.Mtim != sb.Mtim {
		add(rel, "mtime %d.%09d, want %d.%09d", sb.Mtim.Sec, sb.Mtim.Nsec, sa.Mtim.Sec, sa.Mtim.Nsec)
	}
	if typ != unix.S_IFDIR && sa.Nlink != sb.Nlink {
		add(rel, "link count %d, want %d", sb.Nlink, sa.Nlink)
	}
	if !mapsEqual(ea.xattrs, eb.xattrs) {
		add(rel, "xattrs %s, want %s", fmtXattrs(eb.xattrs), fmtXattrs(ea.xattrs))
	}
	switch typ {
	case unix.S_IFLNK:
		if ea.target != eb.target {
			add(rel, "symlink target %q, want %q", eb.target, ea.target)
		}
	case unix.S_IFCHR, unix.S_IFBLK:
		if sa.Rdev != sb.Rdev {
			add(rel, "device %d:%d, want %d:%d", unix.Major(sb.Rdev), unix.Minor(sb.Rdev), unix.Major(sa.Rdev), unix.Minor(sa.Rdev))
		}
	case unix.S_IFREG:
		if sa.Size != sb.Size {
			add(rel, "size %d, want %d", sb.Size, sa.Size)
			return
		}
		if d, err := compareContent(pa, pb, sa.Size); err != nil {
			add(rel, "compare content: %v", err)
		} else if d != "" {
			add(rel, "%s", d)
		}
		allocA, allocB := sa.Blocks*512, sb.Blocks*512
		if allocA < sa.Size {
			slack := max(int64(1<<20), allocA/8)
			if allocB > allocA+slack {
				add(rel, "not sparse: %d bytes allocated, the original has %d of %d", allocB, allocA, sa.Size)
			}
		}
	}
}

// diffHardLinks checks that exactly the names that share an inode in a
// share one in b.
func diffHardLinks(a, b map[string]*entry) []string {
	groups := func(m map[string]*entry) map[string]string {
		// path -> sorted list of all names of its inode (only for nlink > 1)
		byIno := map[[2]uint64][]string{}
		for rel, e := range m {
			if e.st.Mode&unix.S_IFMT == unix.S_IFDIR || e.st.Nlink < 2 {
				continue
			}
			k := [2]uint64{e.st.Dev, e.st.Ino}
			byIno[k] = append(byIno[k], rel)
		}
		out := map[string]string{}
		for _, names := range byIno {
			sort.Strings(names)
			s := fmt.Sprintf("%q", names)
			for _, n := range names {
				out[n] = s
			}
		}
		return out
	}
	ga, gb := groups(a), groups(b)
	var diffs []string
	seen := map[string]bool{}
	for _, m := range []map[string]string{ga, gb} {
		for rel := range m {
			if seen[rel] {
				continue
			}
			seen[rel] = true
			if _, ok := b[rel]; !ok {
				continue // reported as missing
			}
			if _, ok := a[rel]; !ok {
				continue
			}
			if ga[rel] != gb[rel] {
				diffs = append(diffs, fmt.Sprintf("%q: shares its inode with %s, want %s", rel, orNone(gb[rel]), orNone(ga[rel])))
			}
		}
	}
	sort.Strings(diffs)
	return diffs
}

func orNone(s string) string {
	if s == "" {
		return "no other name"
	}
	return s
}

func scanTree(root string, ignore []string) (map[string]*entry, error) {
	out := map[string]*entry{}
	var walk func(rel string) error
	walk = func(rel string) error {
		if slices.Contains(ignore, rel) {
			return nil
		}
		p := filepath.Join(root, rel)
		e := &entry{}
		if err := unix.Lstat(p, &e.st); err != nil {
			return &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		if e.st.Mode&unix.S_IFMT == unix.S_IFLNK {
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.target = t
		}
		x, err := readXattrs(p)
		if err != nil {
			return err
		}
		e.xattrs = x
		out[rel] = e
		if e.st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil
		}
		ents, err := os.ReadDir(p)
		if err != nil {
			return err
		}
		for _, de := range ents {
			child := de.Name()
			if rel != "." {
				child = rel + "/" + child
			}
			if err := walk(child); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk(".")
}

func readXattrs(p string) (map[string]string, error) {
	sz, err := unix.Llistxattr(p, nil)
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil, nil
	}
	if err != nil {
		return nil, &os.PathError{Op: "llistxattr", Path: p, Err: err}
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, &os.PathError{Op: "llistxattr", Path: p, Err: err}
	}
	out := map[string]string{}
	for _, name := range strings.Split(string(buf[:sz]), "\x00") {
		if name == "" || name == "security.selinux" {
			continue
		}
		vs, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, &os.PathError{Op: "lgetxattr " + name, Path: p, Err: err}
		}
		v := make([]byte, vs)
		vs, err = unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, &os.PathError{Op: "lgetxattr " + name, Path: p, Err: err}
		}
		out[name] = string(v[:vs])
	}
	return out, nil
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func fmtXattrs(m map[string]string) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		v := m[k]
		if len(v) > 20 {
			v = v[:20] + "...(" + strconv.Itoa(len(m[k])) + " bytes)"
		}
		parts = append(parts, fmt.Sprintf("%s=%q", k, v))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFCHR:
		return "chardev"
	case unix.S_IFBLK:
		return "blockdev"
	case unix.S_IFSOCK:
		return "socket"
	}
	return fmt.Sprintf("type %#o", mode&unix.S_IFMT)
}

// compareContent compares two files of size bytes. It walks a's data and
// holes (SEEK_DATA/SEEK_HOLE): data is compared byte by byte, and in a's
// holes only b's data regions are read (they must be zeros), so a 4 GiB
// sparse file costs what its data costs. It returns "" when equal, else
// where they first differ.
func compareContent(pa, pb string, size int64) (string, error) {
	fa, err := os.Open(pa)
	if err != nil {
		return "", err
	}
	defer fa.Close()
	fb, err := os.Open(pb)
	if err != nil {
		return "", err
	}
	defer fb.Close()
	bufA, bufB := make([]byte, 1<<20), make([]byte, 1<<20)

	equalRange := func(off, end int64) (string, error) {
		for off < end {
			n := min(end-off, int64(len(bufA)))
			if _, err := fa.ReadAt(bufA[:n], off); err != nil && err != io.EOF {
				return "", err
			}
			if _, err := fb.ReadAt(bufB[:n], off); err != nil && err != io.EOF {
				return "", err
			}
			if !bytes.Equal(bufA[:n], bufB[:n]) {
				for i := range n {
					if bufA[i] != bufB[i] {
						return fmt.Sprintf("content differs at offset %d", off+i), nil
					}
				}
			}
			off += n
		}
		return "", nil
	}
	zeroRange := func(off, end int64) (string, error) {
		// only b's data regions inside [off, end) can hold non-zero bytes
		for _, r := range dataRegions(int(fb.Fd()), off, end) {
			for p := r.Off; p < r.Off+r.Len; {
				n := min(r.Off+r.Len-p, int64(len(bufB)))
				if _, err := fb.ReadAt(bufB[:n], p); err != nil && err != io.EOF {
					return "", err
				}
				for i, c := range bufB[:n] {
					if c != 0 {
						return fmt.Sprintf("content differs at offset %d (a hole in the original)", p+int64(i)), nil
					}
				}
				p += n
			}
		}
		return "", nil
	}

	// a's data compared byte by byte, a's holes against b's data
	var off int64
	for _, r := range append(dataRegions(int(fa.Fd()), 0, size), Region{size, 0}) {
		if r.Off > off {
			if d, err := zeroRange(off, r.Off); d != "" || err != nil {
				return d, err
			}
		}
		if d, err := equalRange(r.Off, r.Off+r.Len); d != "" || err != nil {
			return d, err
		}
		off = r.Off + r.Len
	}
	return "", nil
}

// Manifest maps each regular file below root (relative name) to its size
// and BLAKE3 hash, for comparing with a restore when the original has changed
// since.
func Manifest(t testing.TB, root string) map[string]string {
	t.Helper()
	m, err := manifest(root)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// DiffManifest compares the regular files below dir with a manifest.
func DiffManifest(t testing.TB, want map[string]string, dir string) {
	t.Helper()
	got, err := manifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rel, w := range want {
		g, ok := got[rel]
		switch {
		case !ok:
			t.Errorf("%q: missing in %s", rel, dir)
		case g != w:
			t.Errorf("%q: content %s, want %s", rel, g, w)
		default:
			continue
		}
		if n++; n > 20 {
			t.Fatal("too many differences")
		}
	}
	for rel := range got {
		if _, ok := want[rel]; !ok {
			t.Errorf("%q: extra in %s", rel, dir)
		}
	}
}

func manifest(root string) (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := hash.NewWriter()
		n, err := io.Copy(h, f)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = fmt.Sprintf("%d bytes, BLAKE3 %s", n, h.Sum())
		return nil
	})
	return out, err
}
