//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// A tree with every kind of entry comes back identical: content, type,
// mode, owner, mtime to the nanosecond, symlink targets, hard links,
// devices, FIFOs, xattrs, sparseness, hostile names, depth.
func TestRoundTripTrickyTree(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	info := testutil.BuildTrickyTree(t, src, testutil.TreeOptions{})
	for _, s := range info.Skipped {
		t.Logf("not tested here: %s", s)
	}
	_, wantBytes := countFiles(t, src)

	b, _ := e.backup(src)
	if b.Summary.Errors != 0 || len(b.Errors) != 0 {
		t.Errorf("backup reported errors: %+v", b.Errors)
	}
	if b.Summary.TotalBytes != wantBytes {
		t.Errorf("total_bytes %d, want %d (the sum of the file sizes)", b.Summary.TotalBytes, wantBytes)
	}
	if b.Summary.FilesNew == 0 || b.Summary.Dirs == 0 {
		t.Errorf("summary counts no files or directories: %+v", b.Summary)
	}

	dst := e.path("restored")
	r := e.ok("restore", "--verify", b.Snapshot+":"+src, "--target", dst)
	if !strings.Contains(r.stdout, "verified") {
		t.Errorf("restore --verify does not say it verified: %s", r)
	}
	testutil.CompareTrees(t, src, dst)

	// The whole snapshot, without a path, restores the full path of src.
	all := e.path("restored-all")
	e.ok("restore", "latest", "--target", all)
	testutil.CompareTrees(t, src, filepath.Join(all, src))

	// Restoring again over the first restore gives the same tree.
	r = e.floe("restore", "--verify", b.Snapshot+":"+src, "--target", dst)
	knownBug(t, r.code == 3 && strings.Contains(r.stderr, "restore hard link"),
		"internal/restore: restore into a target that holds the previous restore fails for hard links (Link: file exists), exit 3")
	expectCode(t, r, 0)
	testutil.CompareTrees(t, src, dst)
}

// A 4 GiB sparse file with 12 KiB of data: its holes are neither stored nor
// written back, and reading them costs little.
func TestSparseHugeFile(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	const size = 4 << 30
	src := e.mkdir("sparse")
	huge := filepath.Join(src, "huge")
	testutil.WriteSparse(t, huge, size, 7, testutil.Region{Off: 0, Len: 4096},
		testutil.Region{Off: 1 << 30, Len: 4096}, testutil.Region{Off: size - 4096, Len: 4096})
	if testutil.Allocated(t, huge) > 1<<20 {
		t.Skip("the file system does not keep holes")
	}
	// the same work for 64 MiB of dense data, to compare costs with
	dense := e.mkdir("dense")
	testutil.WriteRandom(t, filepath.Join(dense, "f"), 64<<20, 8)

	bd, rd := e.backup(dense)
	bs, rs := e.backup(src)
	if bs.Summary.TotalBytes != size {
		t.Errorf("total_bytes %d, want %d", bs.Summary.TotalBytes, size)
	}
	if bs.Summary.DataAddedStored > 1<<20 {
		t.Errorf("the holes took %d bytes of storage", bs.Summary.DataAddedStored)
	}

	dst := e.path("restored")
	rr := e.ok("restore", bs.Snapshot+":"+src, "--target", dst)
	if alloc := testutil.Allocated(t, filepath.Join(dst, "huge")); alloc > 1<<20 {
		t.Errorf("restored file is not sparse: %d bytes allocated", alloc)
	}
	testutil.CompareTrees(t, src, dst)
	rdense := e.ok("restore", bd.Snapshot+":"+dense, "--target", e.path("restored-dense"))

	t.Logf("CPU: backup of 64 MiB dense %v, of 4 GiB sparse %v; restore dense %v, sparse %v", rd.cpu, rs.cpu, rdense.cpu, rr.cpu)
	// Ratios, not timings: 4 GiB that is 12 KiB of data and holes must cost
	// less than 64 MiB of data.
	var slow []string
	if rs.cpu > rd.cpu {
		slow = append(slow, fmt.Sprintf("internal/backup (*archiver).chunkFile hashes every hole as 8 MiB zero chunks (archiver.zeroIDs is never used): backup of a 4 GiB sparse file with 12 KiB of data took %v CPU, of 64 MiB of data %v", rs.cpu, rd.cpu))
	}
	if rr.cpu > rdense.cpu {
		slow = append(slow, fmt.Sprintf("internal/restore (*restorer).restoreFiles loads, decompresses, hashes and scans every hole chunk: restore of the 4 GiB sparse file took %v CPU, of 64 MiB of data %v", rr.cpu, rdense.cpu))
	}
	knownBug(t, len(slow) > 0, "%s", strings.Join(slow, "; "))
}

// A 1 KiB change in a 64 MiB file stores a chunk or two, not the file.
func TestDedupSmallChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	big := filepath.Join(src, "big")
	testutil.WriteRandom(t, big, 64<<20, 11)

	b1, _ := e.backup(src)
	if b1.Summary.DataAdded < 64<<20 {
		t.Errorf("first backup added %d bytes, want at least 64 MiB", b1.Summary.DataAdded)
	}
	f, err := os.OpenFile(big, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(testutil.RandomBytes(12, 1024), 32<<20+12345); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := testutil.Manifest(t, src)

	b2, _ := e.backup(src)
	if b2.Summary.FilesChanged != 1 {
		t.Errorf("files_changed %d, want 1: %+v", b2.Summary.FilesChanged, b2.Summary)
	}
	if b2.Summary.DataAdded > 10<<20 {
		t.Errorf("a 1 KiB change added %d bytes (want < 10 MiB: the changed chunks only)", b2.Summary.DataAdded)
	}
	t.Logf("1 KiB change in 64 MiB: data_added %d", b2.Summary.DataAdded)

	dst := e.path("restored")
	e.ok("restore", "--verify", b2.Snapshot+":"+src, "--target", dst)
	testutil.DiffManifest(t, want, dst)
}

// Two identical directories in one backup store their data once.
func TestDedupIdenticalDirectories(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	var one int64
	for _, d := range []string{"a", "b"} {
		e.mkdir("src", d)
		for i, size := range []int64{10 << 20, 3 << 20, 100 << 10} {
			testutil.WriteRandom(t, filepath.Join(src, d, "f"+string(rune('0'+i))), size, uint64(20+i))
			if d == "a" {
				one += size
			}
		}
	}
	b, _ := e.backup(src)
	if b.Summary.DataAdded < uint64(one) || b.Summary.DataAdded > uint64(one)+uint64(one)/20 {
		t.Errorf("data_added %d for two copies of %d bytes, want about %d", b.Summary.DataAdded, one, one)
	}
	if b.Summary.TotalBytes != uint64(2*one) {
		t.Errorf("total_bytes %d, want %d", b.Summary.TotalBytes, 2*one)
	}
}

// A second backup of an unchanged tree reads no file again; a file whose
// content changed behind an unchanged size and mtime is read (ctime).
func TestUnchangedFilesNotReread(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.BuildTrickyTree(t, src, testutil.TreeOptions{DeepLevels: 20})
	files, _ := countFiles(t, src)

	b1, _ := e.backup(src)
	b2, _ := e.backup(src)
	if b2.Parent != b1.Snapshot {
		t.Errorf("parent %q, want the first snapshot %q", b2.Parent, b1.Snapshot)
	}
	if b2.Summary.FilesUnchanged != uint64(files) || b2.Summary.FilesNew != 0 || b2.Summary.FilesChanged != 0 {
		t.Errorf("second backup: %d unchanged, %d new, %d changed; want all %d unchanged", b2.Summary.FilesUnchanged,
			b2.Summary.FilesNew, b2.Summary.FilesChanged, files)
	}
	if b2.Summary.DataAdded > 256<<10 {
		t.Errorf("second backup of an unchanged tree added %d bytes", b2.Summary.DataAdded)
	}

	// same size, same mtime, new content: only the ctime tells
	p := filepath.Join(src, "files", "f4095")
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	newData := testutil.RandomBytes(99, 4095)
	if err := os.WriteFile(p, newData, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	b3, _ := e.backup(src)
	if b3.Summary.FilesChanged != 1 || b3.Summary.FilesUnchanged != uint64(files-1) {
		t.Errorf("after changing one file: %d changed, %d unchanged; want 1 and %d", b3.Summary.FilesChanged, b3.Summary.FilesUnchanged, files-1)
	}
	dst := e.path("restored")
	e.ok("restore", b3.Snapshot+":"+filepath.Join(src, "files"), "--target", dst)
	got, err := os.ReadFile(filepath.Join(dst, "f4095"))
	if err != nil || !bytes.Equal(got, newData) {
		t.Errorf("restored file does not hold the new content (err %v)", err)
	}
}

// --stdin stores a stream under --stdin-filename.
func TestStdin(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	data := append([]byte("-- dump\nCREATE TABLE t (x int);\n"), testutil.RandomBytes(30, 3<<20+17)...)
	r := e.runWith(runOpts{stdin: bytes.NewReader(data)}, append(e.repoArgs(), "backup", "--json", "--stdin", "--stdin-filename", "db.sql")...)
	expectCode(t, r, 0)
	b := decodeJSON[backupOut](t, r)
	if b.Summary.TotalBytes != uint64(len(data)) {
		t.Errorf("total_bytes %d, want %d", b.Summary.TotalBytes, len(data))
	}
	dst := e.path("restored")
	e.ok("restore", "--verify", b.Snapshot+":/db.sql", "--target", dst)
	got, err := os.ReadFile(filepath.Join(dst, "db.sql"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("restored db.sql has %d bytes and differs from the %d bytes given", len(got), len(data))
	}
	if hasCommand(t, "dump") {
		r := e.floe("dump", b.Snapshot+":/db.sql")
		expectCode(t, r, 0)
		if r.stdout != string(data) {
			t.Errorf("dump of db.sql gives %d bytes that differ from the %d bytes given", len(r.stdout), len(data))
		}
	}
	// --stdin with paths is a usage error
	r = e.runWith(runOpts{stdin: strings.NewReader("x")}, append(e.repoArgs(), "backup", "--stdin", e.dir)...)
	expectCode(t, r, 2)
}

// --exclude (by name and by absolute path, with !re-includes),
// --exclude-file and --exclude-caches leave out what they say and keep the rest.
func TestExcludes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	files := map[string]string{
		"keep.txt":                  "keep",
		"a.tmp":                     "excluded by *.tmp",
		"important.tmp":             "re-included by !important.tmp",
		"sub/b.tmp":                 "excluded by *.tmp",
		"sub/keep2.txt":             "keep",
		"skipdir/file":              "excluded by absolute path",
		"skipdir/deeper/file":       "excluded by absolute path",
		"skipdirx/file":             "keep: only a prefix of the excluded path",
		"logs/x.log":                "excluded by the exclude file",
		"logs/keep.txt":             "keep",
		"fromfile/data":             "excluded by an absolute path in the exclude file",
		"cache/CACHEDIR.TAG":        "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
		"cache/data.bin":            "excluded: in a tagged cache",
		"cache/sub/more":            "excluded: in a tagged cache",
		"fakecache/CACHEDIR.TAG":    "Signature: not the right one\n",
		"fakecache/data.bin":        "keep: the tag has a wrong signature",
		"nested/cache/CACHEDIR.TAG": "Signature: 8a477f597d28d172789f06886806bc55",
		"nested/cache/x":            "excluded: in a tagged cache",
		"nested/keep":               "keep",
	}
	for rel, content := range files {
		testutil.WriteFile(t, filepath.Join(src, rel), []byte(content))
	}
	exFile := e.path("excludes")
	if err := os.WriteFile(exFile, []byte("# comment\n\n*.log\n"+filepath.Join(src, "fromfile")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ := e.backup("--exclude", "*.tmp", "--exclude", "!important.tmp", "--exclude", filepath.Join(src, "skipdir"),
		"--exclude-file", exFile, "--exclude-caches", src)
	dst := e.path("restored")
	e.ok("restore", b.Snapshot+":"+src, "--target", dst)

	var got []string
	filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(dst, p)
			got = append(got, rel)
		}
		return err
	})
	want := []string{"keep.txt", "important.tmp", "sub/keep2.txt", "skipdirx/file", "logs/keep.txt",
		"cache/CACHEDIR.TAG", "fakecache/CACHEDIR.TAG", "fakecache/data.bin", "nested/cache/CACHEDIR.TAG", "nested/keep"}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("restored files:\n%q\nwant:\n%q", got, want)
	}
	for _, rel := range want {
		if b, err := os.ReadFile(filepath.Join(dst, rel)); err != nil || string(b) != files[rel] {
			t.Errorf("%s: content %q, %v", rel, b, err)
		}
	}
	// an excluded directory is left out, not restored empty
	if _, err := os.Lstat(filepath.Join(dst, "skipdir")); err == nil {
		t.Errorf("excluded directory skipdir was restored")
	}
	if _, err := os.Lstat(filepath.Join(dst, "fromfile")); err == nil {
		t.Errorf("directory fromfile, excluded by the exclude file, was restored")
	}
}

// Restore never writes outside its target, even when the target already
// holds symlinks, at the names the snapshot restores, that point outside.
func TestRestoreStaysInTarget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	e.mkdir("src", "dir")
	for _, rel := range []string{"file", "dir/inner", "dir/other"} {
		os.WriteFile(filepath.Join(src, rel), []byte("from the snapshot: "+rel), 0o644)
	}
	b, _ := e.backup(src)

	outside := e.mkdir("outside")
	os.WriteFile(filepath.Join(outside, "inner"), []byte("must stay"), 0o644)
	os.WriteFile(filepath.Join(outside, "file"), []byte("must stay"), 0o644)
	before := testutil.Manifest(t, outside)
	dst := e.mkdir("target")
	os.Symlink(outside, filepath.Join(dst, "dir"))                         // a directory of the snapshot
	os.Symlink(filepath.Join(outside, "file"), filepath.Join(dst, "file")) // a file of the snapshot

	e.ok("restore", b.Snapshot+":"+src, "--target", dst)
	testutil.DiffManifest(t, before, outside)
	if fi, err := os.Lstat(filepath.Join(dst, "dir")); err != nil || !fi.IsDir() {
		t.Errorf("dir is not a directory after the restore: %v %v", fi, err)
	}
	testutil.CompareTrees(t, src, dst)
}

// A path longer than PATH_MAX (4096 bytes) is backed up and restored.
func TestPathLongerThanPathMax(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	root, err := os.OpenRoot(src)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	rel := "top"
	for len(rel) < 5000 {
		rel += "/" + strings.Repeat("n", 200)
	}
	if err := root.MkdirAll(rel, 0o755); err != nil {
		t.Skipf("cannot make a path of %d bytes: %v", len(rel), err)
	}
	if err := root.WriteFile(rel+"/deep-file", []byte("deep"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := e.floe("backup", "--json", src)
	knownBug(t, r.code == 3 && strings.Contains(r.stdout+r.stderr, "file name too long"),
		"internal/backup (*archiver).saveDir: entries whose absolute path is longer than PATH_MAX cannot be backed up (lstat: file name too long) and are left out, exit 3: the walk uses absolute paths, not directory file descriptors (openat)")
	expectCode(t, r, 0)
	b := decodeJSON[backupOut](t, r)
	dst := e.path("restored")
	e.ok("restore", "--verify", b.Snapshot+":"+src, "--target", dst)
	out, err := os.OpenRoot(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if got, err := out.ReadFile(rel + "/deep-file"); err != nil || string(got) != "deep" {
		t.Errorf("the deep file restored as %q, %v", got, err)
	}
}

// Backups from several processes into one repository at once all succeed
// and all restore (objects are immutable; no lock is needed).
func TestConcurrentBackups(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	const n = 3
	srcs := make([]string, n)
	for i := range n {
		srcs[i] = e.mkdir(fmt.Sprintf("src%d", i))
		testutil.ManyFiles(t, srcs[i], 200, 10<<10, 200) // the same in every one: they deduplicate
		testutil.WriteRandom(t, filepath.Join(srcs[i], "own"), 20<<20, uint64(201+i))
	}
	type res struct {
		r result
		b backupOut
	}
	results := make([]res, n)
	done := make(chan int)
	for i := range n {
		go func() {
			r := e.floe("backup", "--json", srcs[i])
			results[i].r = r
			if r.code == 0 {
				if line, ok := summaryLine([]byte(r.stdout)); ok {
					json.Unmarshal(line, &results[i].b)
				}
			}
			done <- i
		}()
	}
	for range n {
		<-done
	}
	for i, x := range results {
		if x.r.code != 0 {
			t.Fatalf("backup %d: %s", i, x.r)
		}
	}
	if s := e.snapshots(); len(s) != n {
		t.Errorf("%d snapshots, want %d", len(s), n)
	}
	if hasCommand(t, "check") {
		e.ok("check", "--read-data")
	}
	for i, x := range results {
		dst := e.path(fmt.Sprintf("restored%d", i))
		e.ok("restore", "--verify", x.b.Snapshot+":"+srcs[i], "--target", dst)
		testutil.CompareTrees(t, srcs[i], dst)
	}
}

// --stdin-from-command backs up a command's output; a failing command
// fails the backup and saves nothing (with --stdin, floe cannot know).
func TestStdinFromCommand(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	r := e.floe("backup", "--json", "--stdin-from-command", "--stdin-filename", "app.sql", "--", "sh", "-c", "echo 'CREATE TABLE t;'; echo progress >&2")
	expectCode(t, r, 0)
	b := decodeJSON[backupOut](t, r)
	if !strings.Contains(r.stderr, "progress") {
		t.Errorf("the command's standard error is not passed on: %s", r)
	}
	if d := e.ok("dump", b.Snapshot+":/app.sql"); d.stdout != "CREATE TABLE t;\n" {
		t.Errorf("dump of the command's output: %q", d.stdout)
	}
	for _, cmd := range [][]string{{"false"}, {"sh", "-c", "echo partial dump; exit 3"}} {
		r = e.floe(append([]string{"backup", "--stdin-from-command", "--"}, cmd...)...)
		expectCode(t, r, 1)
		if !strings.Contains(r.stderr, "failed") || !strings.Contains(r.stderr, "no snapshot") {
			t.Errorf("the error does not say the command failed and nothing was saved: %s", r)
		}
	}
	r = e.floe("backup", "--stdin-from-command", "--", e.path("no-such-program"))
	expectCode(t, r, 1)
	if s := e.snapshots(); len(s) != 1 {
		t.Errorf("%d snapshots, want 1: a failed command saved one", len(s))
	}
	expectCode(t, e.floe("backup", "--stdin-from-command"), 2)
	expectCode(t, e.floe("backup", "--stdin", "--stdin-from-command", "--", "true"), 2)
	// what --stdin cannot see, documented
	if h := e.run("backup", "--help"); !strings.Contains(h.stdout, "cannot see") {
		t.Errorf("backup --help does not warn about --stdin: %s", h)
	}
}
