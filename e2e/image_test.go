//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/nbd/nbdtest"
	"github.com/floe-backup/floe/internal/testutil"
)

// loopDevice attaches file to a free loop device until the test ends; it
// skips, naming why, where that is not possible (not root, no losetup, no
// loop devices in a container).
func attachLoop(t *testing.T, file string, readOnly bool) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices (losetup)")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup is not installed (Debian: mount)")
	}
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.Command("losetup", append(args, file)...).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device: losetup %s: %v: %s", file, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		// udev or a late close may hold it a moment
		for i := 0; i < 10; i++ {
			if exec.Command("losetup", "--detach", dev).Run() == nil {
				return
			}
			if _, err := os.Stat("/sys/block/" + filepath.Base(dev) + "/loop"); err != nil {
				return // detached already
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Errorf("could not detach %s", dev)
	})
	return dev
}

// ext4Image makes a sparse raw image of size bytes holding an ext4 file
// system with the files of dir (mkfs.ext4 -d: no mount needed).
func ext4Image(t *testing.T, path string, size int64, dir string) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 is not installed (Debian: e2fsprogs)")
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1", "-d", dir, path).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
}

// writeTree fills dir with files: random data, text, and files that are
// half zeros (zero runs inside the file system's data).
func writeTree(t *testing.T, dir string, seed int64, mib int) {
	t.Helper()
	rnd := rand.New(rand.NewSource(seed))
	for i := 0; i < mib; i++ {
		d := filepath.Join(dir, "d"+strconv.Itoa(i%5))
		os.MkdirAll(d, 0o755)
		b := make([]byte, 1<<20)
		rnd.Read(b)
		if i%2 == 1 {
			clear(b[len(b)/2:]) // half zeros
		}
		if err := os.WriteFile(filepath.Join(d, "f"+strconv.Itoa(i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	text := strings.Repeat("floe reads single files out of image snapshots\n", 200)
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func cmpFiles(t *testing.T, a, b string, n int64) {
	t.Helper()
	args := []string{a, b}
	if n > 0 {
		args = []string{"-n", strconv.FormatInt(n, 10), a, b}
	}
	if out, err := exec.Command("cmp", args...).CombinedOutput(); err != nil {
		t.Fatalf("cmp %s %s: %v: %s", a, b, err, out)
	}
}

// TestImageBackupRestore: a 2 GiB sparse ext4 image on a loop device is
// backed up with --image, restored into a sparse file and onto another
// loop device (byte-identical), checked with --read-data, and a file is
// read out of it through floe nbd, nbdfuse and debugfs.
func TestImageBackupRestore(t *testing.T) {
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	writeTree(t, src, 1, 48)
	img := e.path("disk.raw")
	const size = 2 << 30
	ext4Image(t, img, size, src)
	dev := attachLoop(t, img, true)

	out, _ := e.backup("--image", dev)
	if out.Summary.TotalBytes != size || out.Summary.FilesNew != 1 || len(out.Errors) > 0 {
		t.Fatalf("backup of %s: %+v", dev, out)
	}
	// the zeros cost nothing: what was added is about the files (48 MiB,
	// a quarter of it zeros) plus the file system's metadata
	if out.Summary.DataAdded > 80<<20 {
		t.Fatalf("added %d bytes for 48 MiB of files in a 2 GiB image", out.Summary.DataAdded)
	}
	if out.Consistency.ChangedCount != 0 {
		t.Fatalf("an unused device changed while read: %+v", out.Consistency)
	}
	ls := e.ok("ls", "-l", "latest:"+dev)
	if !strings.Contains(ls.stdout, strconv.Itoa(size)) {
		t.Fatalf("ls shows no image of %d bytes:\n%s", size, ls.stdout)
	}

	// restore into a file: identical, and sparse
	target := e.path("restored")
	e.ok("restore", "latest:"+dev, "--target", target, "--verify")
	got := filepath.Join(target, filepath.Base(dev))
	cmpFiles(t, img, got, 0)
	if a := testutil.Allocated(t, got); a > 128<<20 {
		t.Fatalf("the restored image uses %d bytes of disk: its zeros were not restored as holes", a)
	}

	// restore onto a device
	dst := e.path("dst.raw")
	if err := os.WriteFile(dst, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(dst, size)
	dstDev := attachLoop(t, dst, false)
	r := e.ok("restore", "latest:"+dev, "--to-device", dstDev, "--verify")
	if !strings.Contains(r.stdout, "verified") {
		t.Fatalf("no verification said:\n%s", r)
	}
	cmpFiles(t, img, dstDev, size)
	e.ok("check", "--read-data")

	// a mounted device, a device too small, --to-device without a path
	small := e.path("small.raw")
	os.WriteFile(small, nil, 0o600)
	os.Truncate(small, 64<<20)
	smallDev := attachLoop(t, small, false)
	r = e.floe("restore", "latest:"+dev, "--to-device", smallDev)
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "holds 67108864 bytes") {
		t.Fatalf("no clear error for a device that is too small:\n%s", r)
	}
	expectCode(t, e.floe("restore", "latest", "--to-device", smallDev), 2)

	// read one file out of the image without restoring it: floe nbd,
	// nbdfuse (FUSE, not the kernel's nbd module) and debugfs
	t.Run("nbdfuse", func(t *testing.T) {
		if _, err := exec.LookPath("debugfs"); err != nil {
			t.Skip("debugfs is not installed (Debian: e2fsprogs)")
		}
		sock := e.path("nbd.sock")
		e.startNBD(sock, "latest:"+dev)
		exported := nbdfuseMount(t, e.mkdir("nbdmnt"), sock, size)
		cat, err := exec.Command("debugfs", "-R", "cat /hello.txt", exported).Output()
		if err != nil {
			t.Fatalf("debugfs: %v", err)
		}
		want, _ := os.ReadFile(filepath.Join(src, "hello.txt"))
		if !bytes.Equal(cat, want) {
			t.Fatalf("debugfs cat /hello.txt read %d bytes, want %d", len(cat), len(want))
		}
	})

	// the device grows between backups: the next backup saves its new
	// size; the old, smaller device cannot take it
	exec.Command("losetup", "--detach", dev).Run()
	if err := os.Truncate(img, size+(64<<20)); err != nil {
		t.Fatal(err)
	}
	dev2 := attachLoop(t, img, true)
	out2, _ := e.backup("--image", dev2)
	if out2.Summary.TotalBytes != size+(64<<20) {
		t.Fatalf("after growing: %+v", out2.Summary)
	}
	if out2.Summary.DataAdded > 8<<20 {
		t.Fatalf("growing the device by zeros added %d bytes", out2.Summary.DataAdded)
	}
	r = e.floe("restore", "latest:"+dev2, "--to-device", dstDev)
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "holds 2147483648 bytes") {
		t.Fatalf("no clear error for an image larger than the device:\n%s", r)
	}
}

// A device is read with O_DIRECT, 4 MiB at a time. One whose size is a
// multiple of neither that nor a page (5 MiB and three 512-byte sectors)
// ends with a short direct read of whole sectors, and comes back byte for
// byte, a zero run in its middle included.
func TestImageDeviceOddSize(t *testing.T) {
	e := newEnv(t)
	e.init()
	img := e.path("odd.raw")
	const size = 5<<20 + 3*512
	testutil.WriteRandom(t, img, size, 81)
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 1<<20), 2<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev := attachLoop(t, img, true)
	out, _ := e.backup("--image", dev)
	if out.Summary.TotalBytes != size || len(out.Errors) > 0 {
		t.Fatalf("backup of %s: %+v", dev, out)
	}
	target := e.path("restored")
	e.ok("restore", "latest:"+dev, "--target", target)
	cmpFiles(t, img, filepath.Join(target, filepath.Base(dev)), 0)

	// onto a larger device: the image's last block is partial (its size
	// is no multiple of 4 KiB, which direct writes need), and the bytes
	// past it are not the image's to overwrite
	const tail = 1 << 20
	disk := e.path("larger.raw")
	if err := os.WriteFile(disk, bytes.Repeat([]byte{0xEE}, size+tail), 0o600); err != nil {
		t.Fatal(err)
	}
	larger := attachLoop(t, disk, false)
	for _, flags := range [][]string{nil, {"--buffered-io"}} {
		e.ok(append([]string{"restore", "latest:" + dev, "--to-device", larger, "--verify"}, flags...)...)
		cmpFiles(t, img, disk, size)
		got, err := os.ReadFile(disk)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[size:], bytes.Repeat([]byte{0xEE}, tail)) {
			t.Errorf("%v: the restore wrote past the image's end on the device", flags)
		}
	}

	// a broken-into host's write-only key cannot restore the image onto
	// a device either: refused before the device is touched
	wo := e.path("host.key")
	e.ok("key", "add", "--write-only", "--new-key-file", wo)
	registerKeyFile(t, wo)
	if err := os.WriteFile(disk, bytes.Repeat([]byte{0xEE}, size+tail), 0o600); err != nil {
		t.Fatal(err)
	}
	r := e.run("-r", e.repo, "--key-file", wo, "restore", "latest:"+dev, "--to-device", larger)
	expectCode(t, r, 12)
	if got, err := os.ReadFile(disk); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0xEE}, size+tail)) {
		t.Errorf("a write-only key's device restore changed the device (%v)", err)
	}
}

// TestImageClones: twenty clones of one 2 GiB ext4 image (its file system
// half full, about 800 MiB of data, the rest zeros), each with small
// changes of its own, cost little more than their changes: content-defined
// chunking finds the rest. The zero regions are found both where they are
// the file's holes and where they are zeros written out.
//
// Twenty whole copies would take 40 GiB of disk and minutes to write, so
// the clones take turns in one file: before each backup the previous
// clone's changes are undone, this clone's are made, and the file is
// renamed to vmN.raw. Each clone is a distinct image at a path of its
// own that no earlier snapshot holds, so each is read whole (files_new)
// and deduplicated by its content alone; each is a snapshot of its own.
func TestImageClones(t *testing.T) {
	e := newEnv(t)
	e.init()
	const size = 2 << 30
	src := e.mkdir("src")
	// 1 GiB of files, every other one half zeros: 768 MiB of data (the
	// zero halves are holes in the file system, no blocks of the image)
	writeTree(t, src, 2, 1024)
	img := e.path("golden.raw")
	ext4Image(t, img, size, src)
	if err := os.RemoveAll(src); err != nil { // its gigabyte is in the image now
		t.Fatal(err)
	}
	// mkfs.ext4 -d leaves the blocks it does not write as holes of the
	// image: the free space and the unused metadata
	data := testutil.DataRegions(t, img)
	var holes []testutil.Region
	var dataBytes, end int64
	for _, r := range data {
		if r.Off > end {
			holes = append(holes, testutil.Region{Off: end, Len: r.Off - end})
		}
		dataBytes += r.Len
		end = r.Off + r.Len
	}
	if end < size {
		holes = append(holes, testutil.Region{Off: end, Len: size - end})
	}
	// holes shorter than backup's shortest zero run (128 KiB) are kept
	// inside the data around them
	var shortHoles int64
	for _, h := range holes {
		if h.Len < 128<<10 {
			shortHoles += h.Len
		}
	}
	if dataBytes < 700<<20 || dataBytes > 1<<30 {
		t.Fatalf("the golden image holds %d bytes of data, want about 800 MiB", dataBytes)
	}
	golden, _ := e.backup("--image", img)
	// its zeros cost nothing: what is stored is its data with the short
	// holes in it (less the zero runs inside it), and a tree. (data_added
	// counts the zero chunks too, before compression: one of each length.)
	if golden.Summary.TotalBytes != size || golden.Summary.DataAddedStored > uint64(dataBytes+shortHoles)+1<<20 {
		t.Fatalf("the golden image, %d bytes of data and %d of short holes in %d: %+v", dataBytes, shortHoles, size, golden.Summary)
	}

	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	writeAt := func(b []byte, off int64) {
		t.Helper()
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	punch := func(off, n int64) {
		t.Helper()
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
			t.Fatalf("punch a hole into %s: %v", img, err)
		}
	}
	// A clone's changes: 8 KiB in the file system's data and 8 KiB in its
	// zeros (free space), each at a random offset inside one data region
	// or hole of the golden image.
	const change = 16 << 10
	type edit struct {
		off      int64
		hole     bool
		old, new []byte
	}
	rnd := rand.New(rand.NewSource(3))
	punched := false // the zero regions are holes (clones 10-19)
	newEdit := func(rs []testutil.Region, hole bool) edit {
		t.Helper()
		const n = change / 2
		for range 1000 {
			off := rnd.Int63n(size - n)
			i := sort.Search(len(rs), func(i int) bool { return rs[i].Off+rs[i].Len > off })
			if i == len(rs) || off < rs[i].Off || off+n > rs[i].Off+rs[i].Len {
				continue
			}
			c := edit{off: off, hole: hole, old: make([]byte, n), new: make([]byte, n)}
			if _, err := f.ReadAt(c.old, off); err != nil {
				t.Fatal(err)
			}
			rnd.Read(c.new)
			return c
		}
		t.Fatalf("no place for %d bytes in %d regions", n, len(rs))
		return edit{}
	}
	apply := func(cs []edit) {
		for _, c := range cs {
			writeAt(c.new, c.off)
		}
	}
	undo := func(cs []edit) {
		for _, c := range cs {
			if c.hole && punched {
				punch(c.off, int64(len(c.old)))
			} else {
				writeAt(c.old, c.off)
			}
		}
	}

	// Clones 0-9 have their zeros written out, as a copy made by dd, over
	// the network or from a device has them: found by reading. Clones
	// 10-19 have them as holes, as cp --sparse and qemu-img leave them:
	// skipped by SEEK_DATA unread. Written once and punched once, that
	// costs a gigabyte written once, not once per clone.
	zeros := make([]byte, 4<<20)
	for _, h := range holes {
		for off := h.Off; off < h.Off+h.Len; off += int64(len(zeros)) {
			writeAt(zeros[:min(int64(len(zeros)), h.Off+h.Len-off)], off)
		}
	}
	if a := testutil.Allocated(t, img); a < size {
		t.Fatalf("the image with its zeros written out uses %d bytes of disk, less than its %d bytes", a, size)
	}

	before := dirSize(t, e.repo)
	var (
		clones, snaps  []string
		cloneEdits     [][]edit
		added, storedB uint64
		cpu            time.Duration
	)
	e.mkdir("clones")
	cur := img
	for i := range 20 {
		if i > 0 {
			undo(cloneEdits[i-1])
		}
		if i == 10 {
			for _, h := range holes {
				punch(h.Off, h.Len)
			}
			punched = true
			if a := testutil.Allocated(t, cur); a > dataBytes+1<<20 {
				t.Fatalf("the image with holes again uses %d bytes of disk for %d bytes of data", a, dataBytes)
			}
		}
		cs := []edit{newEdit(data, false), newEdit(holes, true)}
		apply(cs)
		p := e.path("clones", "vm"+strconv.Itoa(i)+".raw")
		if err := os.Rename(cur, p); err != nil {
			t.Fatal(err)
		}
		cur = p
		out, r := e.backup("--image", p)
		cpu += r.cpu
		s := out.Summary
		if s.TotalBytes != size || s.FilesNew != 1 || s.Errors != 0 || len(out.Errors) > 0 || out.Consistency.ChangedCount != 0 {
			t.Fatalf("backup of clone %d: %+v", i, out)
		}
		added += s.DataAdded
		storedB += s.DataAddedStored
		clones, snaps, cloneEdits = append(clones, p), append(snaps, out.Snapshot), append(cloneEdits, cs)
	}
	grown := dirSize(t, e.repo) - before
	// Every clone, its zeros written out or holes, is cut into the golden
	// image's chunks but for a few around its changes: the chunk with the
	// change in data and the next one or two whose cut it may move, and in
	// the zeros the changed blocks' own chunk and the two zero chunks of
	// new lengths around it: 6. A cut moved by a change can take more
	// than one chunk to fall back in step with the golden image's (8 new
	// chunks in one clone of a CI run), so the bound is 16. Zeros chunked
	// as data, or cut elsewhere, would make new chunks at every edge of
	// the data, far more; the repository's growth below bounds the rest.
	chunksOf := func(snap, path string) (sparse bool, content []string) {
		t.Helper()
		tree := decodeJSON[struct {
			Nodes []struct {
				Name    string   `json:"name"`
				Sparse  bool     `json:"sparse"`
				Content []string `json:"content"`
			} `json:"nodes"`
		}](t, e.ok("cat", "tree", snap+":"+filepath.Dir(path)))
		for _, n := range tree.Nodes {
			if n.Name == filepath.Base(path) {
				return n.Sparse, n.Content
			}
		}
		t.Fatalf("no %s in snapshot %s", path, snap)
		return false, nil
	}
	_, goldenChunks := chunksOf(golden.Snapshot, img)
	known := map[string]bool{}
	for _, c := range goldenChunks {
		known[c] = true
	}
	for i := range clones {
		sparse, content := chunksOf(snaps[i], clones[i])
		var fresh int
		for _, c := range content {
			if !known[c] {
				fresh++
			}
		}
		if !sparse || fresh > 16 {
			t.Errorf("clone %d: %d of its %d chunks are not the golden image's (%d), sparse %v", i, fresh, len(content), len(goldenChunks), sparse)
		}
	}
	// In bytes: each change in data costs the chunk it falls in (chunks
	// are 512 KiB to 8 MiB, 1 MiB on average; the one a random byte falls
	// in is longer, about 1.3 MiB) and now and then the next one, each
	// change in zeros its own blocks, each snapshot its record, an index
	// file and a tree with the image's chunk list (some 30 KiB). Measured:
	// about 1.3 MiB a clone (26-32 MB for the 20 in the runs so far: each
	// repository has its own chunker seed, so its own chunk sizes, and
	// a change that falls in an 8 MiB chunk costs all of it). Four
	// average chunks a clone leave room for that, and are still a sliver
	// of one copy of the data (800 MiB a clone, 16 GiB for all of them).
	limit := int64(20 * (change + 4<<20))
	t.Logf("golden image: %d bytes of data (%d in short holes) in %d, added %d (stored %d); 20 clones with %d bytes of changes each: added %d (stored %d, zero chunks of new lengths count in added), the repository grew by %d bytes (limit %d); the clones' backups took %s of CPU",
		dataBytes, shortHoles, size, golden.Summary.DataAdded, golden.Summary.DataAddedStored, change, added, storedB, grown, limit, cpu)
	if grown > limit || int64(storedB) > grown {
		t.Fatalf("20 clones grew the repository by %d bytes, limit %d (their backups stored %d)", grown, limit, storedB)
	}

	// a clone that had its zeros written out (not the first) comes back
	// byte for byte, with those zeros as holes. The image file is made
	// that clone again to compare with; CompareFiles reads data only
	// (cmp would read the 1.2 GiB of holes too, seconds more).
	const k = 7
	target := e.path("restored")
	e.ok("restore", snaps[k]+":"+clones[k], "--target", target)
	got := filepath.Join(target, filepath.Base(clones[k]))
	undo(cloneEdits[19])
	apply(cloneEdits[k])
	testutil.CompareFiles(t, cur, got)
	a := testutil.Allocated(t, got)
	t.Logf("restored clone %d: %d bytes, %d of them allocated", k, size, a)
	if a > dataBytes+shortHoles+change+4<<20 {
		t.Fatalf("the restored clone uses %d bytes of disk for %d bytes of data: its zeros were not restored as holes", a, dataBytes)
	}
}

// An image file inside a btrfs subvolume, written to while backed up, is
// read from a btrfs snapshot: frozen, consistent, and the live image's
// later writes are not in it.
func TestImageFsSnapshotBtrfs(t *testing.T) {
	e := newEnv(t)
	mnt, vol := btrfsVolume(t, e, 400<<20)
	e.init()
	img := filepath.Join(vol, "vm.raw")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	block := bytes.Repeat([]byte("a"), 1<<20)
	for off := int64(0); off < 16<<20; off += 1 << 20 {
		f.WriteAt(block, off)
	}
	f.Sync()
	// a VM writing to its disk all the time
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := bytes.Repeat([]byte("b"), 4096)
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f.WriteAt(b, 20<<20+(i%1024)*4096)
			time.Sleep(time.Millisecond)
		}
	}()
	out, r := e.backup("--fs-snapshot", "btrfs", "--image", img)
	expectNoLeftovers(t, "after the backup", mnt, "")
	close(stop)
	<-done
	f.Close()
	if out.Consistency.ChangedCount != 0 || !out.Consistency.Frozen {
		t.Fatalf("an image read from a btrfs snapshot: consistency %+v\n%s", out.Consistency, r)
	}
	dst := e.path("r")
	e.ok("restore", "latest:"+img, "--target", dst)
	got, _ := os.ReadFile(filepath.Join(dst, "vm.raw"))
	if len(got) != 64<<20 || !bytes.Equal(got[:16<<20], bytes.Repeat(block, 16)) {
		t.Fatalf("restored image: %d bytes", len(got))
	}

	// without a snapshot the writes are seen: read again, then recorded
	stop, done = make(chan struct{}), make(chan struct{})
	f, _ = os.OpenFile(img, os.O_WRONLY, 0)
	go func() {
		defer close(done)
		b := bytes.Repeat([]byte("c"), 4096)
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f.WriteAt(b, 30<<20+(i%1024)*4096)
			time.Sleep(time.Millisecond)
		}
	}()
	out, _ = e.backup("--image", img)
	close(stop)
	<-done
	f.Close()
	if out.Consistency.ChangedCount != 1 || out.Consistency.ChangedDuringRead[0] != img {
		t.Fatalf("an image written while read: consistency %+v", out.Consistency)
	}
}

// A logical volume given as an image with --fs-snapshot lvm is read from
// an LVM snapshot of itself: the image restores byte for byte as the LV
// was when the snapshot was made, although a "VM" writes to the LV all
// through the backup; the snapshot LV is removed afterwards; the
// consistency record says frozen, nothing changed. The same backup
// without the snapshot sees the writes (the writer really overlaps the
// read: a floe reading the live LV instead of its snapshot would fail
// both the comparison and the consistency check).
func TestImageFsSnapshotLVM(t *testing.T) {
	e := newEnv(t)
	lv, vg := lvmLV(t, e, "96M")
	e.init()
	src := e.mkdir("src")
	writeTree(t, src, 5, 16)
	// the file system is made from a directory, never mounted: the LV's
	// bytes change only when the test writes to it
	if out, err := sh("mkfs.ext4", "-q", "-F", "-E", "nodiscard", "-d", src, lv); err != nil {
		t.Fatalf("mkfs.ext4 -d %s %s: %v: %s", src, lv, err, out)
	}
	// on the disk, where the snapshot reads it, as in the page cache
	if out, err := sh("sync"); err != nil {
		t.Fatalf("sync: %v: %s", err, out)
	}
	ref := e.path("lv-before.raw")
	if out, err := sh("dd", "if="+lv, "of="+ref, "bs=1M", "status=none"); err != nil {
		t.Fatalf("dd %s: %v: %s", lv, err, out)
	}
	size := int64(96 << 20)
	if fi, err := os.Stat(ref); err != nil || fi.Size() != size {
		t.Fatalf("copy of the LV: %v %v", fi, err)
	}

	// a VM writing to its disk: the first 4 KiB of every MiB, from the
	// end backwards (floe reads from the start, so they meet), again and
	// again with another byte until stopped; synchronous, so every write
	// reaches the LV (and, with a snapshot, is copied out first)
	writer := func() (stop func() int) {
		f, err := os.OpenFile(lv, os.O_WRONLY|syscall.O_SYNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		quit, done := make(chan struct{}), make(chan int)
		go func() {
			passes := 0
			defer func() { f.Close(); done <- passes }()
			for b := byte(0xE0); ; b++ {
				block := bytes.Repeat([]byte{b}, 4096)
				for off := size - 1<<20; off >= 0; off -= 1 << 20 {
					select {
					case <-quit:
						return
					default:
					}
					if _, err := f.WriteAt(block, off); err != nil {
						t.Errorf("write to %s: %v", lv, err)
						return
					}
				}
				passes++
			}
		}()
		return func() int { close(quit); return <-done }
	}

	// the backup, with the writer started once floe says it reads from
	// the snapshot (lvcreate has returned: the snapshot holds)
	cmd := exec.Command(floeBin, append(e.repoArgs(), "backup", "--fs-snapshot", "lvm", "--image", lv)...)
	cmd.Env, cmd.Dir = e.environ(), e.dir
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	var stop func() int
	reading := "reading from the LVM snapshot " + vg + "/floe-snap-"
	buf := make([]byte, 4096)
	for {
		n, rerr := stderrPipe.Read(buf)
		stderr.Write(buf[:n])
		if stop == nil && strings.Contains(stderr.String(), reading) {
			stop = writer()
		}
		if rerr != nil {
			break
		}
	}
	werr := cmd.Wait()
	passes := -1
	if stop != nil {
		passes = stop()
	}
	r := fmt.Sprintf("floe backup --fs-snapshot lvm --image %s: %v\nstdout:\n%s\nstderr:\n%s", lv, werr, stdout.String(), stderr.String())
	if werr != nil || stop == nil {
		t.Fatalf("want a backup that says it reads from the snapshot (%q): %s", reading, r)
	}
	if !strings.Contains(stderr.String(), "read as the device") {
		t.Errorf("the backup does not say it reads the snapshot as a device: %s", r)
	}
	t.Logf("the writer made %d passes over the LV during the backup", passes)
	expectNoLeftovers(t, "after the image backup", "", vg)

	// the record: read from a frozen view, nothing changed while read
	snaps := e.snapshots()
	if len(snaps) != 1 {
		t.Fatalf("%d snapshots", len(snaps))
	}
	if c := snaps[0].Consistency; !c.Checked || !c.Frozen || c.ChangedCount != 0 || len(c.ChangedDuringRead) != 0 {
		t.Fatalf("an image read from an LVM snapshot: consistency %+v\n%s", c, r)
	}
	if snaps[0].Summary.TotalBytes != uint64(size) {
		t.Fatalf("the image's size: %+v", snaps[0].Summary)
	}
	// restored: the LV as it was, not as the writer left it
	dst := e.path("r")
	e.ok("restore", "latest:"+lv, "--target", dst, "--verify")
	got := filepath.Join(dst, filepath.Base(lv))
	cmpFiles(t, ref, got, 0)
	if out, err := sh("cmp", "-s", ref, lv); err == nil {
		t.Fatalf("the writer did not change the LV (%s): the test proves nothing", out)
	}
	if _, err := exec.LookPath("debugfs"); err == nil {
		cat, err := exec.Command("debugfs", "-R", "cat /hello.txt", got).Output()
		want, _ := os.ReadFile(filepath.Join(src, "hello.txt"))
		if err != nil || !bytes.Equal(cat, want) {
			t.Fatalf("debugfs cat /hello.txt in the restored image: %v, %d bytes, want %d", err, len(cat), len(want))
		}
	}

	// the same writer without a snapshot: the live LV is read, its write
	// counters move, and that is recorded
	stop = writer()
	out, br := e.backup("--image", lv)
	stop()
	if out.Consistency.Frozen || out.Consistency.ChangedCount != 1 {
		t.Fatalf("the live LV written while read: consistency %+v\n%s", out.Consistency, br)
	}
}

// A block device written to while it is read: its write counters in
// /sys/dev/block/*/stat move, so the backup reads it again and records it.
func TestImageDeviceWrittenDuringRead(t *testing.T) {
	e := newEnv(t)
	e.init()
	img := e.path("busy.raw")
	os.WriteFile(img, bytes.Repeat([]byte{1}, 32<<20), 0o600)
	dev := attachLoop(t, img, false)
	f, err := os.OpenFile(dev, os.O_WRONLY|syscall.O_SYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		b := bytes.Repeat([]byte{2}, 4096)
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f.WriteAt(b, (i%4096)*4096)
			time.Sleep(time.Millisecond)
		}
	}()
	out, _ := e.backup("--image", dev)
	close(stop)
	<-done
	f.Close()
	if out.Consistency.ChangedCount != 1 || out.Consistency.ChangedDuringRead[0] != dev {
		t.Fatalf("a device written while read: consistency %+v", out.Consistency)
	}
	// unused, it is consistent
	out, _ = e.backup("--image", dev)
	if out.Consistency.ChangedCount != 0 {
		t.Fatalf("an idle device: consistency %+v", out.Consistency)
	}
}

// restore --to-device zeroes the image's zero regions on a device that
// held other bytes there: by the device (punch hole) or, with
// --write-zeros, by writing them; a mounted device is refused.
func TestImageRestoreToDeviceZeros(t *testing.T) {
	e := newEnv(t)
	e.init()
	img := e.path("vm.raw")
	writeLayoutFile(t, img)
	e.backup("--image", img)
	dst := e.path("dst.raw")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "the device zeroed them"},
		{[]string{"--write-zeros"}, "written as zeros (--write-zeros)"},
	} {
		os.WriteFile(dst, bytes.Repeat([]byte{0xff}, 40<<20), 0o600)
		dev := attachLoop(t, dst, false)
		r := e.ok(append([]string{"restore", "latest:" + img, "--to-device", dev, "--verify"}, tc.args...)...)
		if !strings.Contains(r.stdout, tc.want) {
			t.Fatalf("want %q:\n%s", tc.want, r)
		}
		cmpFiles(t, img, dev, 32<<20)
		exec.Command("losetup", "--detach", dev).Run()
	}

	// --json: one summary line
	os.WriteFile(dst, bytes.Repeat([]byte{0xff}, 40<<20), 0o600)
	jdev := attachLoop(t, dst, false)
	r := e.ok("restore", "--json", "latest:"+img, "--to-device", jdev)
	var sum struct {
		Type      string `json:"message_type"`
		Bytes     int64  `json:"bytes"`
		ZeroBytes int64  `json:"zero_bytes"`
		Zeroing   string `json:"zeroing"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(r.stdout)), &sum); err != nil || sum.Type != "summary" || sum.Bytes != 32<<20 || sum.ZeroBytes < 25<<20 || sum.Zeroing != "device" {
		t.Fatalf("restore --to-device --json: %v %+v\n%s", err, sum, r)
	}
	exec.Command("losetup", "--detach", jdev).Run()

	// a mounted device is refused, and left alone
	os.WriteFile(dst, nil, 0o600)
	os.Truncate(dst, 40<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", dst).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	dev := attachLoop(t, dst, false)
	mountDev(t, dev, e.path("mnt"))
	r = e.floe("restore", "latest:"+img, "--to-device", dev)
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, "is mounted") {
		t.Fatalf("a mounted device:\n%s", r)
	}
}

// writeLayoutFile writes a 32 MiB image: data, zeros, data, zeros.
func writeLayoutFile(t *testing.T, path string) {
	t.Helper()
	b := make([]byte, 32<<20)
	rnd := rand.New(rand.NewSource(7))
	rnd.Read(b[:4<<20])
	rnd.Read(b[20<<20 : 22<<20])
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// restore --to-device through a floe server reads the image by pack
// ranges: a request per pack it needs, not one per chunk (across a far
// link every request is a round trip), and the device holds the image,
// its repeated chunks and zero regions included.
func TestImageRestoreToDeviceThroughServer(t *testing.T) {
	e := newEnv(t)
	s, admin := e.startFleetServer("--metrics-listen", "127.0.0.1:0")
	img := e.path("vm.raw")
	// 48 MiB: random data, a 3 MiB stretch repeated four times (chunks
	// the image repeats), 6 MiB of zeros
	b := testutil.RandomBytes(91, 48<<20)
	for i := 1; i < 4; i++ {
		copy(b[20<<20+i*(3<<20):], b[20<<20:23<<20])
	}
	clear(b[36<<20 : 42<<20])
	if err := os.WriteFile(img, b, 0o600); err != nil {
		t.Fatal(err)
	}
	remote := func(args ...string) result {
		t.Helper()
		r := s.remote("fleet", admin, append([]string{"--password-file", e.pwFile}, args...)...)
		expectCode(t, r, 0)
		return r
	}
	remote("backup", "--image", img)
	// the image's chunks, and the packs the server holds
	tree := decodeJSON[struct {
		Nodes []struct {
			Name    string   `json:"name"`
			Content []string `json:"content"`
		} `json:"nodes"`
	}](t, remote("cat", "tree", "latest:"+filepath.Dir(img)))
	var chunks []string
	for _, n := range tree.Nodes {
		if n.Name == filepath.Base(img) {
			chunks = n.Content
		}
	}
	packs := len(objects(t, filepath.Join(s.root, "fleet", "data")))
	if len(chunks) < 20 || packs == 0 {
		t.Fatalf("%d chunks, %d packs", len(chunks), packs)
	}

	// What a restore loads besides the data (keys, index, snapshot,
	// trees): a restore refused for a device too small does all that.
	small := e.path("small.raw")
	os.WriteFile(small, make([]byte, 1<<20), 0o600)
	smallDev := attachLoop(t, small, false)
	dst := e.path("dst.raw")
	os.WriteFile(dst, bytes.Repeat([]byte{0xAB}, 48<<20+4096), 0o600)
	dev := attachLoop(t, dst, false)
	req0 := serverLoads(t, s)
	r := s.remote("fleet", admin, "--password-file", e.pwFile, "restore", "latest:"+img, "--to-device", smallDev)
	expectCode(t, r, 1)
	req1 := serverLoads(t, s)
	remote("restore", "latest:"+img, "--to-device", dev, "--verify")
	req2 := serverLoads(t, s)
	cmpFiles(t, img, dst, 48<<20)
	data := req2 - req1 - (req1 - req0)
	t.Logf("restore: %d load requests, %d of them beyond a refused restore's, for %d chunks in %d packs",
		req2-req1, data, len(chunks), packs)
	if data > packs || data*4 > len(chunks) {
		t.Fatalf("%d requests for the data of %d chunks in %d packs: not read by ranges", data, len(chunks), packs)
	}
}

// A damaged pack: restore --to-device names the blob and the offset of
// the image where it belongs, as when it loaded chunks one by one, and
// fails.
func TestImageRestoreToDeviceDamaged(t *testing.T) {
	e := newEnv(t)
	e.init()
	img := e.path("vm.raw")
	testutil.WriteRandom(t, img, 12<<20, 93)
	e.backup("--image", img)
	flip(t, largest(objects(t, filepath.Join(e.repo, "data"))))
	dst := e.path("dst.raw")
	os.WriteFile(dst, make([]byte, 12<<20), 0o600)
	dev := attachLoop(t, dst, false)
	r := e.floe("restore", "latest:"+img, "--to-device", dev)
	noPanic(t, r)
	expectFail(t, r)
	if !strings.Contains(r.stderr, img+" at offset ") || !strings.Contains(r.stderr, "damaged or forged") {
		t.Fatalf("a damaged blob is not reported with its offset:\n%s", r)
	}
}

// nbdfuseMount shows the NBD export on the Unix socket sock as a file
// (nbdfuse, over FUSE: no kernel nbd module) under the directory mnt until
// the test ends, and returns that file once it has the export's size.
func nbdfuseMount(t *testing.T, mnt, sock string, size int64) string {
	t.Helper()
	nbdtest.NeedTools(t, "nbdfuse")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	fuse := exec.Command("nbdfuse", "--readonly", mnt, "--unix", sock)
	var out lockedBuffer
	fuse.Stdout, fuse.Stderr = &out, &out
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { fuse.Wait(); close(done) }()
	t.Cleanup(func() {
		exec.Command("fusermount3", "-u", mnt).Run()
		exec.Command("umount", mnt).Run()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			fuse.Process.Kill()
			<-done
		}
	})
	file := filepath.Join(mnt, "nbd")
	for i := 0; ; i++ {
		if fi, err := os.Stat(file); err == nil && fi.Size() == size {
			return file
		}
		if i == 100 {
			t.Fatalf("nbdfuse did not show %s:\n%s", file, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sectorsRead is the count of sectors read from a block device so far
// (the third field of /sys/block/DEV/stat).
func sectorsRead(t *testing.T, dev string) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "stat"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		t.Fatalf("%s stat: %q", dev, b)
	}
	n, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A device that goes away while it is read: a loop device over a file of
// an NBD export (nbdkit, slowed down, shown by nbdfuse) whose server is
// killed once the backup has read 4 MiB of it, as a network disk whose
// server or link goes. The device's reads then fail with EIO. The backup
// goes on to its end, exits 3 with an error that names the device and says
// what happened, and the snapshot holds no image of it.
func TestImageDeviceGoneMidRead(t *testing.T) {
	nbdtest.NeedTools(t, "nbdkit", "nbdfuse")
	e := newEnv(t)
	e.init()
	img := e.path("disk.raw")
	const size = 32 << 20
	testutil.WriteRandom(t, img, size, 7)
	dir, err := os.MkdirTemp("", "floe-kit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	// 40 ms per read: the backup takes seconds, so it is still reading
	// when the server goes
	kit := exec.Command("nbdkit", "-f", "-U", sock, "--filter=delay", "file", img, "delay-read=40ms")
	var kitOut lockedBuffer
	kit.Stdout, kit.Stderr = &kitOut, &kitOut
	if err := kit.Start(); err != nil {
		t.Fatal(err)
	}
	kitDone := make(chan struct{})
	go func() { kit.Wait(); close(kitDone) }()
	t.Cleanup(func() { kit.Process.Kill(); <-kitDone })
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if i == 100 {
			t.Fatalf("nbdkit is not listening:\n%s", kitOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	file := nbdfuseMount(t, e.mkdir("fuse"), sock, size)
	dev := attachLoop(t, file, true)

	read0 := sectorsRead(t, dev)
	done := make(chan result, 1)
	go func() { done <- e.floe("backup", "--json", "--image", dev) }()
	deadline := time.Now().Add(60 * time.Second)
	for sectorsRead(t, dev)-read0 < 4<<20/512 {
		select {
		case r := <-done:
			t.Fatalf("the backup ended before the device went away:\n%s", r)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the backup read less than 4 MiB of the device in 60 s")
		}
	}
	kit.Process.Kill()
	var r result
	select {
	case r = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the backup did not end after its device went away")
	}
	expectCode(t, r, 3)
	out := decodeJSON[backupOut](t, r)
	if len(out.Errors) != 1 || out.Errors[0].Path != dev || !strings.Contains(out.Errors[0].Error, "I/O error") ||
		!strings.Contains(out.Errors[0].Error, "not saved") {
		t.Fatalf("want one error that says the device %s failed:\n%s", dev, r)
	}
	t.Log(out.Errors[0].Error)
	if strings.Contains(r.stderr, "panic") {
		t.Fatalf("panic:\n%s", r)
	}
	if r := e.floe("ls", "-l", "latest:"+dev); r.code == 0 {
		t.Fatalf("the snapshot lists the image that could not be read:\n%s", r)
	}
}

// A file read out of a partitioned disk image (a VM's disk: a GPT with a
// small first partition and the root file system in the second) without
// restoring it, as README shows: floe nbd, nbdfuse, a read-only loop
// device with its partitions (partx where the kernel does not scan
// them), then a read-only mount of the partition, or debugfs on it; and,
// without root, debugfs at the partition's offset in the nbdfuse file.
func TestImagePartitionedFileOut(t *testing.T) {
	for _, tool := range []string{"sfdisk", "partx", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (Debian: fdisk, util-linux, e2fsprogs)", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices (losetup)")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("losetup is not installed (Debian: mount)")
	}
	e := newEnv(t)
	e.init()
	// two file systems, each with its own /hello.txt
	bootDir, rootDir := e.mkdir("boot"), e.mkdir("root")
	os.WriteFile(filepath.Join(bootDir, "hello.txt"), []byte("the boot partition\n"), 0o644)
	writeTree(t, rootDir, 3, 4)
	const (
		sector             = 512
		size               = 64 << 20
		p1Start, p1Sects   = 2048, 16384   // 8 MiB at 1 MiB
		p2Start, p2Sectors = 18432, 100000 // about 49 MiB after it
	)
	img := e.path("vm.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	table := fmt.Sprintf("label: gpt\nstart=%d, size=%d, type=L\nstart=%d, size=%d, type=L\n", p1Start, p1Sects, p2Start, p2Sectors)
	sf := exec.Command("sfdisk", "-q", img)
	sf.Stdin = strings.NewReader(table)
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	for _, p := range []struct {
		dir          string
		start, sects int64
	}{{bootDir, p1Start, p1Sects}, {rootDir, p2Start, p2Sectors}} {
		part := e.path(filepath.Base(p.dir) + ".fs")
		ext4Image(t, part, p.sects*sector, p.dir)
		if out, err := exec.Command("dd", "if="+part, "of="+img, "bs=512", "seek="+strconv.FormatInt(p.start, 10), "conv=notrunc,sparse", "status=none").CombinedOutput(); err != nil {
			t.Fatalf("dd: %v: %s", err, out)
		}
	}
	want, _ := os.ReadFile(filepath.Join(rootDir, "hello.txt"))
	e.backup("--image", img)

	sock, _ := nbdSocket(t)
	e.startNBD(sock, "latest:"+img)
	disk := nbdfuseMount(t, e.mkdir("fuse"), sock, size)

	// without root: debugfs at the partition's offset in the file
	start := strings.TrimSpace(nbdRun(t, "partx", "-g", "-o", "START", "-n", "2", disk))
	if start != strconv.Itoa(p2Start) {
		t.Fatalf("partx says partition 2 starts at %q, want %d", start, p2Start)
	}
	n, _ := strconv.Atoi(start)
	got, err := exec.Command("debugfs", "-R", "cat /hello.txt", fmt.Sprintf("%s?offset=%d", disk, n*sector)).Output()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("debugfs at the offset of partition 2: %v, read %d bytes, want %d", err, len(got), len(want))
	}

	// with root: a loop device and its partitions
	out, err := exec.Command("losetup", "--find", "--show", "--read-only", "--partscan", disk).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		for i := 0; i < 10 && exec.Command("losetup", "--detach", dev).Run() != nil; i++ {
			time.Sleep(200 * time.Millisecond)
		}
	})
	nbdRun(t, "partx", "--update", dev) // where the kernel did not read the table itself
	if out := nbdRun(t, "lsblk", "-rno", "NAME", dev); !strings.Contains(out, filepath.Base(dev)+"p2") {
		t.Fatalf("lsblk %s shows no partition 2:\n%s", dev, out)
	}
	part := dev + "p2"
	if _, err := os.Stat(part); err != nil {
		t.Fatalf("no %s after losetup --partscan and partx --update: %v", part, err)
	}
	got, err = exec.Command("debugfs", "-R", "cat /hello.txt", part).Output()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("debugfs on %s: %v, read %d bytes, want %d", part, err, len(got), len(want))
	}
	mnt := e.mkdir("mnt")
	nbdRun(t, "mount", "-o", "ro,noload", part, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	got, err = os.ReadFile(filepath.Join(mnt, "hello.txt"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("hello.txt of the mounted partition: %v, read %d bytes, want %d", err, len(got), len(want))
	}
	cmpFiles(t, filepath.Join(rootDir, "d1", "f1"), filepath.Join(mnt, "d1", "f1"), 0)
}
