package backup

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/ui"
)

// region is a data region's length or a zero run's (negative).
func scanRegions(t *testing.T, f *os.File, size int64, file bool) []int64 {
	t.Helper()
	s := newImageScan(f, size, file, func(int64) {})
	var out []int64
	for {
		s.regionEnd = false
		n, err := io.Copy(io.Discard, s)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			out = append(out, n)
		}
		if s.zeros < imageZeroRun {
			return out
		}
		s.inRun, s.runDone = true, false
		for !s.runDone {
			if err := s.step(); err != nil {
				t.Fatal(err)
			}
		}
		out = append(out, -s.zeros)
		s.zeros, s.inRun = 0, false
	}
}

// layout writes data where want > 0 and zeros (holes if sparse) where
// want < 0.
func writeLayout(t *testing.T, path string, parts []int64, sparse bool) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var off int64
	for i, n := range parts {
		if n > 0 {
			b := make([]byte, n)
			for j := range b {
				b[j] = byte(i + j%251 + 1)
			}
			f.WriteAt(b, off)
			off += n
			continue
		}
		if !sparse {
			f.WriteAt(make([]byte, -n), off)
		}
		off += -n
	}
	f.Truncate(off)
	return off
}

func TestImageScanRegions(t *testing.T) {
	const k = 1 << 10
	parts := []int64{
		-1024 * k,  // a long zero run at the start
		100 * k,    // data
		-64 * k,    // a short zero run: stays in the data
		50 * k,     //
		-512 * k,   // a long run
		4*k + 100,  // data ending inside a block
		-300*k - 4, // zeros that are not block-aligned at either end
		7,          // the last bytes
		-200 * k,   // and a long run at the end
	}
	for _, sparse := range []bool{false, true} {
		p := filepath.Join(t.TempDir(), "img")
		size := writeLayout(t, p, parts, sparse)
		f, _ := os.Open(p)
		got := scanRegions(t, f, size, true)
		f.Close()
		var sum int64
		for _, n := range got {
			sum += max(n, -n)
		}
		if sum != size {
			t.Fatalf("sparse %v: regions %v cover %d of %d bytes", sparse, got, sum, size)
		}
		// in whole blocks: data ending at 1238k fills the block to 1240k;
		// the next data at 1750k starts in the block at 1748k; ...
		want := []int64{-1024 * k, 216 * k, -508 * k, 8 * k, -296 * k, 4 * k, -(198*k + 111)}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("sparse %v: regions %v, want %v", sparse, got, want)
		}
		if sparse {
			continue
		}
		// the same content, sparse or not, cuts the same regions
		p2 := filepath.Join(t.TempDir(), "img")
		writeLayout(t, p2, parts, true)
		f2, _ := os.Open(p2)
		got2 := scanRegions(t, f2, size, true)
		f2.Close()
		if !reflect.DeepEqual(got, got2) {
			t.Fatalf("written %v, sparse %v", got, got2)
		}
	}
}

// images of the same content, one sparse and one written whole, give the
// same chunks; zero runs are zero chunks and the node is sparse.
func TestImageBackupSameChunks(t *testing.T) {
	dir := t.TempDir()
	parts := []int64{3 << 20, -9 << 20, 2<<20 + 5, -1 << 20}
	a, b := filepath.Join(dir, "a.raw"), filepath.Join(dir, "b.raw")
	writeLayout(t, a, parts, false)
	writeLayout(t, b, parts, true)
	r := newRepo(t)
	m := &ui.Meter{}
	res, err := Run(context.Background(), r, Options{Images: []string{a, b}, Progress: m})
	if err != nil || len(res.Errors) > 0 {
		t.Fatal(err, res.Errors)
	}
	// every byte of both images counted once, zero runs too
	if _, _, _, _, done, _ := m.Current(); done != 2*(15<<20+5) {
		t.Errorf("progress counted %d bytes, want %d", done, 2*(15<<20+5))
	}
	root, _ := snapshot.LoadTree(context.Background(), r, res.Snapshot.Tree)
	var nodes []*snapshot.Node
	var walk func(tr *snapshot.Tree)
	walk = func(tr *snapshot.Tree) {
		for _, n := range tr.Nodes {
			if n.Type == snapshot.TypeDir {
				sub, _ := snapshot.LoadTree(context.Background(), r, n.Subtree)
				walk(sub)
			} else {
				nodes = append(nodes, n)
			}
		}
	}
	walk(root)
	if len(nodes) != 2 {
		t.Fatalf("%d nodes", len(nodes))
	}
	if !reflect.DeepEqual(nodes[0].Content, nodes[1].Content) || !nodes[0].Sparse || !nodes[1].Sparse {
		t.Fatalf("a: %d chunks sparse %v; b: %d chunks sparse %v", len(nodes[0].Content), nodes[0].Sparse, len(nodes[1].Content), nodes[1].Sparse)
	}
	// 5 MiB of data and one zero chunk of each size (8 MiB, 1 MiB, 1 MiB - 4 KiB)
	if added := res.Snapshot.Summary.DataAdded; added > 16<<20 {
		t.Fatalf("added %d bytes", added)
	}
}

// An image truncated while it is read is read again; one that keeps
// shrinking is an error, not a short image.
func TestImageTruncatedMidRead(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vm.raw")
	testutil.WriteRandom(t, p, 12<<20, 1)
	hookMu.Lock()
	testHookImageFill = func(f *os.File, off int64) error {
		// cut 1 MiB off before every read: a file being truncated
		if fi, err := os.Stat(p); err == nil && fi.Size() > 1<<20 {
			os.Truncate(p, fi.Size()-1<<20)
		}
		return nil
	}
	t.Cleanup(func() { testHookImageFill = nil; hookMu.Unlock() })
	res, err := Run(context.Background(), newRepo(t), Options{Images: []string{p}, Retries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || !strings.Contains(res.Errors[0].Error(), "truncated") || !strings.Contains(res.Errors[0].Error(), "not saved") {
		t.Fatalf("errors %v, want the image reported as truncated", res.Errors)
	}
}

// A device that goes away while it is read (detached, unplugged: reads
// fail with ENXIO) or fails (EIO) part way: the backup goes on with the
// other images and ends with an error that names the device, what
// happened and where; the snapshot holds no node for the image, so nothing
// claims a partial image is the image.
func TestImageDeviceVanishesMidRead(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		want  string
	}{
		{syscall.ENXIO, "the device went away"},
		{syscall.EIO, "I/O error"},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			dir := t.TempDir()
			gone, ok := filepath.Join(dir, "vdb.raw"), filepath.Join(dir, "vdc.raw")
			testutil.WriteRandom(t, gone, 12<<20, 1)
			testutil.WriteRandom(t, ok, 1<<20, 2)
			hookMu.Lock()
			testHookImageFill = func(f *os.File, off int64) error {
				if f.Name() == gone && off >= 4<<20 {
					return &os.PathError{Op: "read", Path: f.Name(), Err: tc.errno}
				}
				return nil
			}
			t.Cleanup(func() { testHookImageFill = nil; hookMu.Unlock() })
			r := newRepo(t)
			res, err := Run(context.Background(), r, Options{Images: []string{gone, ok}, Retries: 2})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Errors) != 1 {
				t.Fatalf("errors %v, want one for %s", res.Errors, gone)
			}
			msg := res.Errors[0].Error()
			t.Log(msg)
			for _, want := range []string{gone + ": ", tc.want, "at byte 4194304 of 12582912", tc.errno.Error(), "not saved"} {
				if !strings.Contains(msg, want) {
					t.Fatalf("error %q does not say %q", msg, want)
				}
			}
			var names []string
			walkFind(t, context.Background(), r, res.Snapshot.Tree, func(n *snapshot.Node) {
				if n.Type == snapshot.TypeFile {
					names = append(names, n.Name)
				}
			})
			if !reflect.DeepEqual(names, []string{"vdc.raw"}) {
				t.Fatalf("the snapshot holds %v, want only vdc.raw (not the image that failed)", names)
			}
		})
	}
}

// An image file written while read is read again, then recorded.
func TestImageChangedDuringRead(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vm.raw")
	testutil.WriteRandom(t, p, 1<<20, 1)
	setHook(t, func(path string, attempt int) {
		f, _ := os.OpenFile(p, os.O_WRONLY, 0)
		f.WriteAt([]byte("x"), 100)
		f.Close()
	})
	res, err := Run(context.Background(), newRepo(t), Options{Images: []string{p}, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if c := res.Snapshot.Consistency; c.ChangedCount != 1 || c.ChangedDuringRead[0] != p {
		t.Fatalf("consistency %+v", c)
	}
}

func TestWriteCountersAndDeviceID(t *testing.T) {
	old := sysBlock
	sysBlock = t.TempDir()
	t.Cleanup(func() { sysBlock = old })
	d := filepath.Join(sysBlock, "7:3")
	os.MkdirAll(filepath.Join(d, "loop"), 0o755)
	stat := "     100        0     2000       10       50        1      400        5        0       12       15        2        0       64        1"
	os.WriteFile(filepath.Join(d, "stat"), []byte(stat+"\n"), 0o644)
	os.WriteFile(filepath.Join(d, "loop", "backing_file"), []byte("/srv/vm/web1.raw\n"), 0o644)
	rdev := uint64(7<<8 | 3)
	if got := writeCounters(rdev); got != "50 1 400 2 0 64" {
		t.Fatalf("write counters %q", got)
	}
	if got := deviceID(rdev); got != "loop//srv/vm/web1.raw" {
		t.Fatalf("device id %q", got)
	}
	os.WriteFile(filepath.Join(d, "serial"), []byte("QM0001\n"), 0o644)
	if got := deviceID(rdev); got != "serial/QM0001" {
		t.Fatalf("device id %q", got)
	}
	if writeCounters(uint64(9<<8)) != "" {
		t.Fatal("counters of a device that does not exist")
	}
}

// A device is read with O_DIRECT (openDevice); a direct read that the
// device refuses (EINVAL: here a buffer a page does not align) goes on
// through the page cache, with the same bytes. A regular file stands in
// for the device; file systems without O_DIRECT skip.
func TestImageDirectReadFallsBack(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dev.raw")
	testutil.WriteRandom(t, p, 3<<20, 7)
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := openDevice(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := newImageScan(f, int64(len(want)), false, func(int64) {})
	if !s.direct() {
		t.Skip("the file system of the test directory does not take O_DIRECT")
	}
	if b := s.buf; uintptr(unsafe.Pointer(&b[0]))%directio.Align != 0 || len(b) != imageReadSize {
		t.Fatalf("read buffer not aligned to %d bytes", directio.Align)
	}
	// aligned: read directly
	if r := s.readAt(s.buf, 1<<20, 1<<20); r.err != nil || !bytes.Equal(r.buf[:r.n], want[1<<20:2<<20]) || !s.direct() {
		t.Fatalf("aligned direct read: err %v, still direct %v", r.err, s.direct())
	}
	// a buffer off by one byte: refused directly, read buffered
	odd := directio.Buffer(1<<20 + 1)[1:]
	r := s.readAt(odd, 2<<20, 1<<20)
	if r.err != nil || !bytes.Equal(r.buf[:r.n], want[2<<20:]) {
		t.Fatalf("misaligned read: err %v", r.err)
	}
	if s.direct() {
		t.Fatal("still O_DIRECT after the device refused a direct read")
	}
}

// The compression policy (compress.Level.For, docs/FORMAT.md "config"): in
// an auto repository the data of an image is stored at fastest and that of
// files at default; in a default repository both at default. The stored
// bytes name the level: each chunk's ID is the one its plaintext gets at
// that level alone.
func TestImageCompressionLevel(t *testing.T) {
	dir := t.TempDir()
	files := filepath.Join(dir, "files")
	os.Mkdir(files, 0o755)
	img := filepath.Join(dir, "disk.raw")
	// text that compresses, with other words in the file and the image so
	// that no chunk of one is a chunk of the other
	words := func(seed uint64, n int) []byte {
		rnd := testutil.RandomBytes(seed, n/4)
		var b bytes.Buffer
		for i := 0; b.Len() < n; i++ {
			fmt.Fprintf(&b, "func f%d(x int) int { return x*%d + %d }\n", rnd[i%len(rnd)], i%97, seed)
		}
		return b.Bytes()[:n]
	}
	os.WriteFile(filepath.Join(files, "src.go"), words(1, 3<<20), 0o644)
	os.WriteFile(img, words(2, 3<<20), 0o644)
	for _, tc := range []struct {
		level      compress.Level
		file, imag compress.Level
	}{
		{compress.Auto, compress.Default, compress.Fastest},
		{compress.Default, compress.Default, compress.Default},
		{compress.Fastest, compress.Fastest, compress.Fastest},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			r, _, err := repo.Init(context.Background(), mem.New(), repo.Credential{Password: []byte(testutil.Password)},
				repo.InitOptions{KDF: testutil.CheapKDF(), Compression: tc.level})
			if err != nil {
				t.Fatal(err)
			}
			res, err := Run(context.Background(), r, Options{Paths: []string{files}, Images: []string{img}})
			if err != nil || len(res.Errors) > 0 {
				t.Fatal(err, res.Errors)
			}
			// a repository at the level expected for each kind, with the
			// same keys, names each plaintext as the backup must have
			want := map[compress.Level]*repo.Repository{}
			for _, l := range []compress.Level{tc.file, tc.imag} {
				if want[l] == nil {
					want[l] = sameKeys(t, r, l)
				}
			}
			seen := map[string]int{}
			var walk func(ref hash.Ref)
			walk = func(ref hash.Ref) {
				tr, err := snapshot.LoadTree(context.Background(), r, ref)
				if err != nil {
					t.Fatal(err)
				}
				for _, n := range tr.Nodes {
					if n.Type == snapshot.TypeDir {
						walk(n.Subtree)
						continue
					}
					l := tc.file
					if n.Name == "disk.raw" {
						l = tc.imag
					}
					for _, c := range n.Content {
						plain, err := r.LoadBlob(context.Background(), repo.DataBlob, c, nil)
						if err != nil {
							t.Fatal(err)
						}
						if got := want[l].RefOf(repo.DataBlob, plain); got != c {
							t.Errorf("%s: a chunk of %d bytes is not stored at %v", n.Name, len(plain), l)
						}
						if other := want[compress.Default]; l == compress.Fastest && other != nil && other.RefOf(repo.DataBlob, plain) == c {
							t.Errorf("%s: a chunk of %d bytes has the same ID at fastest and default", n.Name, len(plain))
						}
						seen[n.Name]++
					}
				}
			}
			walk(res.Snapshot.Tree)
			if seen["src.go"] == 0 || seen["disk.raw"] == 0 {
				t.Fatalf("chunks seen: %v", seen)
			}
		})
	}
}

// sameKeys returns a repository with r's keys and chunker at level l, on
// a backend of its own.
func sameKeys(t *testing.T, r *repo.Repository, l compress.Level) *repo.Repository {
	t.Helper()
	params, key := r.Config().Chunker, r.ChunkIDKey()
	other, _, err := repo.Init(context.Background(), mem.New(), repo.Credential{Password: []byte(testutil.Password)},
		repo.InitOptions{KDF: testutil.CheapKDF(), Compression: l, Chunker: &params, ChunkIDKey: &key})
	if err != nil {
		t.Fatal(err)
	}
	return other
}
