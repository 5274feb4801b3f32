//go:build linux

package testutil

import (
	"bytes"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RandomBytes returns n pseudo-random bytes, the same for the same seed.
func RandomBytes(seed uint64, n int) []byte {
	var s [32]byte
	for i := 0; i < 8; i++ {
		s[i] = byte(seed >> (8 * i))
	}
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// WriteRandom writes size pseudo-random bytes (see RandomBytes) to path.
func WriteRandom(t testing.TB, path string, size int64, seed uint64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var s [32]byte
	for i := 0; i < 8; i++ {
		s[i] = byte(seed >> (8 * i))
	}
	r := rand.NewChaCha8(s)
	buf := make([]byte, 1<<20)
	for size > 0 {
		n := min(size, int64(len(buf)))
		r.Read(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatal(err)
		}
		size -= n
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// Region is a byte range of a file.
type Region struct{ Off, Len int64 }

// WriteSparse creates a file of size bytes that holds pseudo-random data in
// the given regions and holes everywhere else.
func WriteSparse(t testing.TB, path string, size int64, seed uint64, regions ...Region) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for i, r := range regions {
		if _, err := f.WriteAt(RandomBytes(seed+uint64(i), int(r.Len)), r.Off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// Allocated returns the bytes the file system allocated for path.
func Allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// DataRegions lists the data regions of path in order, as SEEK_DATA and
// SEEK_HOLE show them; what lies between them (and after the last) are
// holes. A file system that keeps no holes shows all of the file as data.
func DataRegions(t testing.TB, path string) []Region {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return dataRegions(int(f.Fd()), 0, fi.Size())
}

// dataRegions lists the data regions of the open file fd within [off,
// end), clipped to it. Where SEEK_DATA or SEEK_HOLE fails (a file system
// without them) the rest counts as data.
func dataRegions(fd int, off, end int64) []Region {
	var rs []Region
	for off < end {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || err == nil && data >= end {
			break // holes to the end
		}
		if err != nil {
			data = off
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = end
		}
		hole = min(hole, end)
		rs = append(rs, Region{data, hole - data})
		off = hole
	}
	return rs
}

// SetTimes sets the access and modification times of path itself (not of
// a symlink's target), with nanoseconds.
func SetTimes(t testing.TB, path string, atime, mtime time.Time) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("set times of %s: %v", path, err)
	}
}

// XattrsSupported reports whether dir's file system takes user xattrs.
func XattrsSupported(dir string) bool {
	f, err := os.CreateTemp(dir, ".xattr-probe-")
	if err != nil {
		return false
	}
	name := f.Name()
	f.Close()
	defer os.Remove(name)
	return unix.Lsetxattr(name, "user.floe-probe", []byte("1"), 0) == nil
}

// TreeOptions select the optional parts of BuildTrickyTree.
type TreeOptions struct {
	// HugeSparse adds sparse/huge: a 4 GiB file with three 4 KiB data
	// blocks (at the start, at 1 GiB and at the end).
	HugeSparse bool
	// DeepLevels is the depth of deep/ (default 100).
	DeepLevels int
}

// TreeInfo says what BuildTrickyTree made.
type TreeInfo struct {
	// Skipped lists the parts the file system or our privileges did not
	// allow (device nodes without CAP_MKNOD, xattrs, foreign owners).
	Skipped []string
	// Files counts the names of regular files (each hard link name once).
	Files int
	// Bytes is the sum of the regular files' sizes, hard links once.
	Bytes int64
	// HardLinks are the relative names of the 3-name hard link group.
	HardLinks []string
	// Sparse are the relative names of the sparse files.
	Sparse []string
}

// Names of entries that BuildTrickyTree makes, for tests that look at one.
var (
	NonUTF8Name = "bad-\xff\xfe-utf8"
	LongName    = strings.Repeat("L", 255)
	// LongUTF8Name is 255 bytes of two-byte characters and one "x".
	LongUTF8Name = strings.Repeat("é", 127) + "x"
)

// BuildTrickyTree fills dir (which must exist) with:
//
//	files/       regular files of 0, 1, 4095, 4096 bytes and 5 MiB random
//	hardlinks/   one inode under 3 names in 3 directories, and an empty file under 2
//	sparse/      16 MiB with 3 MiB of data in two regions; a file that is
//	             all hole; optionally a 4 GiB file with 12 KiB of data
//	symlinks/    relative, absolute, dangling, to a directory, to itself
//	special/     a FIFO; as root a char and a block device node
//	names/       non-UTF-8, 255-byte, newline, glob, "b64:", NFC and NFD names
//	deep/        DeepLevels nested directories with a file at the bottom
//	empty/       an empty directory, and one holding an empty directory
//	xattrs/      user xattrs on files and a directory, small, large, binary
//	modes/       setuid, setgid, sticky, 000 file and directory, 0777
//	owners/      (as root) foreign uid/gid on a file, directory and symlink
//	times/       mtimes before 1970, at the epoch, in 2100, whole seconds
//
// Every entry gets a modification time with nanoseconds that depends only on
// its path, so two trees built in two directories compare equal.
func BuildTrickyTree(t testing.TB, dir string, opts TreeOptions) *TreeInfo {
	t.Helper()
	if opts.DeepLevels == 0 {
		opts.DeepLevels = 100
	}
	info := &TreeInfo{}
	b := &builder{t: t, dir: dir, info: info, times: map[string]time.Time{}}
	root := os.Geteuid() == 0

	// regular files
	b.mkdir("files", 0o755)
	b.file("files/empty", nil, 0o644)
	b.file("files/one", []byte("x"), 0o644)
	b.file("files/f4095", RandomBytes(1, 4095), 0o644)
	b.file("files/f4096", RandomBytes(2, 4096), 0o600)
	b.file("files/random-5MiB", RandomBytes(3, 5<<20), 0o644)
	b.file("files/text", bytes.Repeat([]byte("floe compresses text well\n"), 20000), 0o644)

	// hard links
	b.mkdir("hardlinks", 0o755)
	b.mkdir("hardlinks/a", 0o755)
	b.mkdir("hardlinks/b", 0o755)
	b.file("hardlinks/first", RandomBytes(4, 100<<10), 0o640)
	b.link("hardlinks/first", "hardlinks/a/second")
	b.link("hardlinks/first", "hardlinks/b/third")
	info.HardLinks = []string{"hardlinks/first", "hardlinks/a/second", "hardlinks/b/third"}
	b.file("hardlinks/empty1", nil, 0o644)
	b.link("hardlinks/empty1", "hardlinks/empty2")

	// sparse files
	b.mkdir("sparse", 0o755)
	WriteSparse(t, b.p("sparse/small"), 16<<20, 5, Region{1 << 20, 2 << 20}, Region{9 << 20, 1 << 20})
	b.count("sparse/small", 3<<20)
	info.Sparse = append(info.Sparse, "sparse/small")
	WriteSparse(t, b.p("sparse/allhole"), 8<<20, 6)
	b.count("sparse/allhole", 0)
	info.Sparse = append(info.Sparse, "sparse/allhole")
	if opts.HugeSparse {
		const size = 4 << 30
		WriteSparse(t, b.p("sparse/huge"), size, 7, Region{0, 4096}, Region{1 << 30, 4096}, Region{size - 4096, 4096})
		b.count("sparse/huge", size)
		info.Sparse = append(info.Sparse, "sparse/huge")
	}

	// symlinks
	b.mkdir("symlinks", 0o755)
	b.symlink("../files/one", "symlinks/relative")
	b.symlink("/etc/hostname", "symlinks/absolute")
	b.symlink("does/not/exist", "symlinks/dangling")
	b.symlink("../files", "symlinks/to-dir")
	b.symlink("loop", "symlinks/loop")
	b.symlink(strings.Repeat("long/", 200)+"target", "symlinks/long-target")

	// special files
	b.mkdir("special", 0o755)
	if err := unix.Mkfifo(b.p("special/fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	if root {
		if err := unix.Mknod(b.p("special/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			info.Skipped = append(info.Skipped, "char device: "+err.Error())
		}
		if err := unix.Mknod(b.p("special/loop7"), unix.S_IFBLK|0o660, int(unix.Mkdev(7, 7))); err != nil {
			info.Skipped = append(info.Skipped, "block device: "+err.Error())
		}
	} else {
		info.Skipped = append(info.Skipped, "device nodes (not root)")
	}

	// names
	b.mkdir("names", 0o755)
	for _, name := range []string{
		NonUTF8Name, "latin1-caf\xe9", LongName, LongUTF8Name,
		strings.Repeat("\xff", 255),
		"with\nnewline", "tab\there", " leading space", "trailing space ", "-dash",
		"glob*?[x]", `back\slash`, "b64:aGVsbG8=", ".hidden", "...", "café", "cafe\u0301",
		"日本語のファイル名", "quote'\"", "emoji-\U0001F600",
	} {
		b.file("names/"+name, []byte(name), 0o644)
	}
	b.mkdir("names/"+NonUTF8Name+"-dir", 0o755)
	b.file("names/"+NonUTF8Name+"-dir/inside", []byte("inside"), 0o644)

	// deep tree
	rel := "deep"
	b.mkdir(rel, 0o755)
	for i := 0; i < opts.DeepLevels; i++ {
		rel += "/level-" + string(rune('a'+i%26)) + strings.Repeat("x", 12)
		b.mkdir(rel, 0o755)
	}
	b.file(rel+"/bottom", []byte("the bottom"), 0o644)

	// empty directories
	b.mkdir("empty", 0o755)
	b.mkdir("empty/nothing", 0o700)
	b.mkdir("empty/outer", 0o755)
	b.mkdir("empty/outer/inner", 0o755)

	// xattrs
	b.mkdir("xattrs", 0o755)
	b.file("xattrs/file", []byte("has xattrs"), 0o644)
	b.mkdir("xattrs/dir", 0o755)
	if XattrsSupported(dir) {
		b.xattr("xattrs/file", "user.small", []byte("value"))
		b.xattr("xattrs/file", "user.empty", nil)
		b.xattr("xattrs/file", "user.large", bytes.Repeat([]byte("0123456789abcdef"), 250)) // 4000 bytes
		b.xattr("xattrs/file", "user.binary", []byte{0, 1, 2, 0xff, 0, 'x'})
		b.xattr("xattrs/dir", "user.dir", []byte("on a directory"))
	} else {
		info.Skipped = append(info.Skipped, "user xattrs (not supported here)")
	}

	// modes
	b.mkdir("modes", 0o755)
	b.file("modes/setuid", []byte("#!/bin/true\n"), 0o4755)
	b.file("modes/setgid", []byte("#!/bin/true\n"), 0o2711)
	b.file("modes/all", []byte("rwx for all"), 0o777)
	b.file("modes/none", []byte("mode 000"), 0)
	b.mkdir("modes/sticky", 0o1777)
	b.mkdir("modes/setgid-dir", 0o2775)
	b.mkdir("modes/nodir", 0o755)
	b.file("modes/nodir/inside", []byte("inside a 000 directory"), 0o644)
	b.file("modes/setuid-only", nil, 0o4000)

	// owners
	if root {
		b.mkdir("owners", 0o755)
		b.file("owners/foreign", []byte("uid 12345"), 0o644)
		b.chown("owners/foreign", 12345, 54321)
		b.file("owners/nobody", []byte("nobody"), 0o644)
		b.chown("owners/nobody", 65534, 65534)
		b.mkdir("owners/dir", 0o750)
		b.chown("owners/dir", 23456, 23456)
		b.symlink("foreign", "owners/link")
		b.chown("owners/link", 4242, 4343)
		b.file("owners/setuid-foreign", []byte("setuid after chown"), 0o4750)
		b.chown("owners/setuid-foreign", 1000, 1000)
		// chown clears setuid; set it again
		if err := unix.Chmod(b.p("owners/setuid-foreign"), 0o4750); err != nil {
			t.Fatal(err)
		}
	} else {
		info.Skipped = append(info.Skipped, "foreign owners (not root)")
	}

	// times
	b.mkdir("times", 0o755)
	b.file("times/before-1970", []byte("old"), 0o644)
	b.times["times/before-1970"] = time.Unix(-315619200, 987654321) // 1960
	b.file("times/epoch", []byte("epoch"), 0o644)
	b.times["times/epoch"] = time.Unix(0, 0)
	b.file("times/2100", []byte("future"), 0o644)
	b.times["times/2100"] = time.Date(2100, 1, 2, 3, 4, 5, 999999999, time.UTC)
	b.file("times/whole-second", []byte("no ns"), 0o644)
	b.times["times/whole-second"] = time.Unix(1700000000, 0)
	b.file("times/one-ns", []byte("1 ns"), 0o644)
	b.times["times/one-ns"] = time.Unix(1700000000, 1)

	b.stamp()
	// 000 directory last: stamping walks into it (root can, others not)
	if err := os.Chmod(b.p("modes/nodir"), 0); err != nil {
		t.Fatal(err)
	}
	SetTimes(t, b.p("modes/nodir"), b.timeFor("modes/nodir"), b.timeFor("modes/nodir"))
	return info
}

type builder struct {
	t     testing.TB
	dir   string
	info  *TreeInfo
	times map[string]time.Time // relative path -> mtime, overriding timeFor
}

func (b *builder) p(rel string) string { return filepath.Join(b.dir, rel) }

func (b *builder) count(rel string, size int64) {
	b.info.Files++
	b.info.Bytes += size
}

func (b *builder) mkdir(rel string, mode uint32) {
	b.t.Helper()
	if err := os.Mkdir(b.p(rel), 0o700); err != nil {
		b.t.Fatal(err)
	}
	if err := unix.Chmod(b.p(rel), mode); err != nil {
		b.t.Fatal(err)
	}
}

func (b *builder) file(rel string, data []byte, mode uint32) {
	b.t.Helper()
	if err := os.WriteFile(b.p(rel), data, 0o600); err != nil {
		b.t.Fatal(err)
	}
	if err := unix.Chmod(b.p(rel), mode); err != nil {
		b.t.Fatal(err)
	}
	b.count(rel, int64(len(data)))
}

func (b *builder) link(old, new string) {
	b.t.Helper()
	if err := os.Link(b.p(old), b.p(new)); err != nil {
		b.t.Fatal(err)
	}
	b.info.Files++
}

func (b *builder) symlink(target, rel string) {
	b.t.Helper()
	if err := os.Symlink(target, b.p(rel)); err != nil {
		b.t.Fatal(err)
	}
}

func (b *builder) xattr(rel, name string, value []byte) {
	b.t.Helper()
	if err := unix.Lsetxattr(b.p(rel), name, value, 0); err != nil {
		b.t.Fatalf("set xattr %s on %s: %v", name, rel, err)
	}
}

func (b *builder) chown(rel string, uid, gid int) {
	b.t.Helper()
	if err := os.Lchown(b.p(rel), uid, gid); err != nil {
		b.t.Fatal(err)
	}
}

// timeFor returns the mtime of rel: from b.times, else one with
// nanoseconds derived from the path.
func (b *builder) timeFor(rel string) time.Time {
	if tm, ok := b.times[rel]; ok {
		return tm
	}
	h := fnv.New64a()
	h.Write([]byte(rel))
	v := h.Sum64()
	return time.Unix(1500000000+int64(v%200000000), int64(v>>32)%1e9)
}

// stamp sets every entry's times; it runs after everything is created,
// since creating an entry changes its directory's mtime.
func (b *builder) stamp() {
	b.t.Helper()
	var rels []string
	err := filepath.WalkDir(b.dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == b.dir {
			return nil
		}
		rel, _ := filepath.Rel(b.dir, path)
		rels = append(rels, rel)
		return nil
	})
	if err != nil {
		b.t.Fatal(err)
	}
	sort.Strings(rels)
	for _, rel := range rels {
		tm := b.timeFor(rel)
		SetTimes(b.t, b.p(rel), tm, tm)
	}
}

// ManyFiles creates n files of about size bytes (pseudo-random, so they do
// not deduplicate) in dir, spread over subdirectories of 100.
func ManyFiles(t testing.TB, dir string, n int, size int, seed uint64) {
	t.Helper()
	data := RandomBytes(seed, size*2)
	for i := 0; i < n; i++ {
		sub := filepath.Join(dir, "d"+strconv.Itoa(i/100))
		if i%100 == 0 {
			if err := os.MkdirAll(sub, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		// a different window of the random data for every file
		off := (i * 7919) % size
		if err := os.WriteFile(filepath.Join(sub, "f"+strconv.Itoa(i)), append([]byte(strconv.Itoa(i)), data[off:off+size]...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// WriteFile writes data to path (mode 0644), creating parent directories.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
