package restore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/directio"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/ui"
)

// piece is a chunk of a test file: its place, and whether it is an
// all-zero chunk of a sparse file (never written, a hole).
type piece struct {
	off, n int64
	zero   bool
}

// testContent makes size bytes of random data with zero runs, cut into
// chunks at unaligned offsets (every few bytes up to a few blocks and
// more, so that blocks are shared by two, three or more chunks).
func testContent(size int64, seed uint64, sparse bool) ([]byte, []piece) {
	rng := rand.New(rand.NewPCG(seed, 7))
	data := make([]byte, size)
	var pieces []piece
	for off := int64(0); off < size; {
		var n int64
		switch rng.IntN(4) {
		case 0:
			n = 1 + rng.Int64N(100)
		case 1:
			n = 1 + rng.Int64N(3*directio.Align)
		default:
			n = 1 + rng.Int64N(300<<10)
		}
		n = min(n, size-off)
		zero := sparse && rng.IntN(3) == 0
		if !zero {
			for i := off; i < off+n; i++ {
				data[i] = byte(rng.Uint32()) | 1 // never zero: a lost byte shows
			}
		}
		pieces = append(pieces, piece{off, n, zero})
		off += n
	}
	return data, pieces
}

// writeShuffled writes pieces of data to a new file through a directFile,
// in an order shuffled by seed, from two goroutines, consecutive pieces
// sometimes gathered into one run (as a stager does), and returns the
// file's content and whether it was written directly.
func writeShuffled(t *testing.T, data []byte, pieces []piece, seed uint64) ([]byte, bool) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f")
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	size := int64(len(data))
	if err := unix.Ftruncate(fd, size); err != nil { // as restore does for sparse files
		t.Fatal(err)
	}
	d := newDirectFile(fd, size)
	if d == nil {
		t.Skip("the test directory's file system has no O_DIRECT")
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	// runs of up to three consecutive pieces
	type run struct{ ps []piece }
	var runs []run
	for i := 0; i < len(pieces); {
		k := 1 + rng.IntN(3)
		r := run{}
		for ; k > 0 && i < len(pieces); k-- {
			r.ps = append(r.ps, pieces[i])
			i++
			if r.ps[len(r.ps)-1].zero {
				break
			}
		}
		runs = append(runs, r)
	}
	rng.Shuffle(len(runs), func(i, j int) { runs[i], runs[j] = runs[j], runs[i] })
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(runs); i += 2 {
				var data0 []piece
				for _, p := range runs[i].ps {
					if p.zero {
						if err := d.Zero(p.off, p.n); err != nil {
							failed.Store(err)
						}
						continue
					}
					data0 = append(data0, p)
				}
				if len(data0) == 0 {
					continue
				}
				start := data0[0].off
				end := data0[len(data0)-1].off + data0[len(data0)-1].n
				base := start &^ alignMask
				buf := directio.Buffer(directio.RoundUp(int(end - base)))
				copy(buf[start-base:], data[start:end])
				if err := d.WriteRun(buf, start, int(end-start)); err != nil {
					failed.Store(err)
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}
	if err := d.Finish(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return got, d.Direct()
}

func TestDirectFileShuffled(t *testing.T) {
	for _, c := range []struct {
		name   string
		size   int64
		sparse bool
	}{
		{"one byte", 1, false},
		{"block-1", directio.Align - 1, false},
		{"block", directio.Align, false},
		{"block+1", directio.Align + 1, false},
		{"4095 tail", 300*directio.Align + 4095, false},
		{"4097 tail", 300*directio.Align + 4097, false},
		{"threshold-1", directThreshold - 1, false},
		{"threshold+1", directThreshold + 1, false},
		{"sparse", 3<<20 + 77, true},
		{"sparse threshold", directThreshold + 4097, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			for seed := uint64(1); seed <= 4; seed++ {
				data, pieces := testContent(c.size, seed, c.sparse)
				for _, p := range pieces {
					if p.zero {
						clear(data[p.off : p.off+p.n])
					}
				}
				got, direct := writeShuffled(t, data, pieces, seed)
				if !direct {
					t.Fatal("fell back to buffered writes without being refused")
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("seed %d: content differs (len %d, want %d) at %d", seed, len(got), len(data), firstDiff(got, data))
				}
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestDirectFileFallsBack: a file system that takes O_DIRECT but refuses
// the writes (EINVAL), at the first write or later, gets the file written
// buffered, blocks gathered so far included.
func TestDirectFileFallsBack(t *testing.T) {
	for _, after := range []int64{0, 1, 5, 20} {
		var calls atomic.Int64
		old := pwriteDirect
		pwriteDirect = func(fd int, p []byte, off int64) error {
			if calls.Add(1) > after {
				return unix.EINVAL
			}
			return old(fd, p, off)
		}
		for seed := uint64(1); seed <= 3; seed++ {
			calls.Store(0)
			data, pieces := testContent(2<<20+4097, seed, seed == 2)
			for _, p := range pieces {
				if p.zero {
					clear(data[p.off : p.off+p.n])
				}
			}
			got, direct := writeShuffled(t, data, pieces, seed)
			if direct && calls.Load() > after {
				t.Errorf("refused after %d writes: still direct", after)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("refused after %d writes, seed %d: content differs at %d", after, seed, firstDiff(got, data))
			}
		}
		pwriteDirect = old
	}
}

// TestStagerSplitsLongRuns: a chunk longer than the stage buffer, at an
// unaligned offset, is written in several runs.
func TestStagerSplitsLongRuns(t *testing.T) {
	skipWithoutDirect(t)
	path := filepath.Join(t.TempDir(), "f")
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(2*stageSize + 5000)
	data, _ := testContent(size, 9, false)
	rs := &restorer{opts: Options{Progress: ui.NoProgress}}
	node := &snapshot.Node{Type: snapshot.TypeFile, Mode: 0o600, Size: uint64(size)}
	f := &openFile{job: &fileJob{entryRef: entryRef{name: "f"}, node: node}, fd: fd, dirFd: -1}
	f.dw = newDirectFile(fd, size)
	f.pending.Store(3)
	var st stager
	// chunks: [0,100) then [100, size-10) (longer than the buffer) then
	// the last 10 bytes, delivered last first
	st.add(rs, f, size-10, data[size-10:])
	st.add(rs, f, 0, data[:100])
	st.add(rs, f, 100, data[100:size-10])
	st.flush(rs)
	if n := f.pending.Load(); n != 0 || len(rs.res.Errors) > 0 || rs.res.Files != 1 {
		t.Fatalf("pending %d errors %v files %d", n, rs.res.Errors, rs.res.Files)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, data) {
		t.Fatalf("content differs at %d (len %d, want %d)", firstDiff(got, data), len(got), len(data))
	}
}

// TestDirectFileWriteError: a write that fails is reported.
func TestDirectFileWriteError(t *testing.T) {
	skipWithoutDirect(t)
	old := pwriteDirect
	defer func() { pwriteDirect = old }()
	pwriteDirect = func(int, []byte, int64) error { return unix.EIO }
	path := filepath.Join(t.TempDir(), "f")
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	d := newDirectFile(fd, 1<<20)
	buf := directio.Buffer(1 << 20)
	if err := d.WriteRun(buf, 0, 1<<20); !errors.Is(err, unix.EIO) {
		t.Fatalf("writeRun: %v, want EIO", err)
	}
}

// directTree writes files around the direct-write threshold (sizes with
// 4095 and 4097 byte tails) and a sparse one whose holes adjoin data at
// unaligned offsets, and backs them up.
func directTree(t *testing.T, r *repo.Repository) (hash.Ref, string, []string) {
	t.Helper()
	src := t.TempDir()
	sizes := map[string]int64{
		"below":      directThreshold - 1,
		"at":         directThreshold,
		"above":      directThreshold + 1,
		"tail4095":   directThreshold + 2*directio.Align + 4095,
		"tail4097":   directThreshold + 2*directio.Align + 4097,
		"small.txt":  5000,
		"sub/inside": directThreshold + 12345,
	}
	var large []string
	if err := os.Mkdir(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, size := range sizes {
		testutil.WriteRandom(t, filepath.Join(src, name), size, uint64(size))
		if size >= directThreshold {
			large = append(large, name)
		}
	}
	// sparse: data, a 10 MiB hole, data, a hole, and a short tail
	sp := filepath.Join(src, "sparse.img")
	f, err := os.Create(sp)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	for _, p := range []struct{ off, n int64 }{{0, 1<<20 + 333}, {11<<20 + 77, 3<<20 + 5}, {30<<20 + 9, 100}} {
		b := make([]byte, p.n)
		for i := range b {
			b[i] = byte(rng.Uint32()) | 1
		}
		if _, err := f.WriteAt(b, p.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	large = append(large, "sparse.img")
	return backupDir(t, r, src), src, large
}

// cachedShare is the share of path's pages in the page cache.
func cachedShare(t *testing.T, path string) float64 {
	t.Helper()
	in, total, err := directio.CachedPages(path)
	if err != nil {
		t.Fatal(err)
	}
	if total == 0 {
		return 0
	}
	return float64(in) / float64(total)
}

// skipWithoutDirect skips a test that needs O_DIRECT in t.TempDir().
func skipWithoutDirect(t *testing.T) {
	t.Helper()
	testutil.SkipWithoutDirectIO(t, t.TempDir())
}

func TestRestoreDirect(t *testing.T) {
	skipWithoutDirect(t)
	ctx := context.Background()
	r := newRepo(t)
	tree, src, large := directTree(t, r)
	for _, buffered := range []bool{false, true} {
		target := t.TempDir()
		res, err := Run(ctx, r, tree, src, Options{Target: target, BufferedIO: buffered})
		if err != nil || len(res.Errors) > 0 {
			t.Fatalf("restore: %v %v", err, res.Errors)
		}
		for _, name := range large {
			// written around the page cache, or (buffered) through it
			share := cachedShare(t, filepath.Join(target, name))
			if name == "below" || name == "sparse.img" {
				continue
			}
			if !buffered && share > 0.1 || buffered && share < 0.9 {
				t.Errorf("buffered %v: %.0f%% of %s in the page cache", buffered, 100*share, name)
			}
		}
		testutil.CompareTrees(t, src, target)
		if buffered {
			continue
		}
		// sparse: the holes stay holes
		if !isHole(openT(t, filepath.Join(target, "sparse.img")), 2<<20, 8<<20) {
			t.Error("the sparse file's hole was written")
		}
		// resume: identical files are left alone and verified...
		res, err = Run(ctx, r, tree, src, Options{Target: target, Verify: true})
		if err != nil || len(res.Errors) > 0 || res.Files != 0 || res.Verified != uint64(len(large)+2) {
			t.Fatalf("resume: files %d verified %d, errors %v %v", res.Files, res.Verified, err, res.Errors)
		}
		// ...a damaged one is rewritten
		fd, err := os.OpenFile(filepath.Join(target, "tail4097"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		fd.WriteAt([]byte("damage"), 5<<20+3)
		fd.Close()
		res, err = Run(ctx, r, tree, src, Options{Target: target, Verify: true})
		if err != nil || len(res.Errors) > 0 || res.Files != 1 {
			t.Fatalf("damaged file: rewrote %d files (%v %v)", res.Files, err, res.Errors)
		}
		testutil.CompareTrees(t, src, target)
	}
}

func openT(t *testing.T, path string) *os.File {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestRestoreDirectRefused: where the file system refuses O_DIRECT, when
// it is turned on or at the first write, files are written buffered and
// are the same.
func TestRestoreDirectRefused(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	tree, src, _ := directTree(t, r)
	oldSet, oldWrite := setDirect, pwriteDirect
	defer func() { setDirect, pwriteDirect = oldSet, oldWrite }()
	for _, c := range []struct {
		name  string
		set   func(int, bool) error
		write func(int, []byte, int64) error
	}{
		{"at open", func(fd int, on bool) error {
			if on {
				return unix.EINVAL
			}
			return oldSet(fd, on)
		}, oldWrite},
		{"at the first write", oldSet, func(int, []byte, int64) error { return unix.EINVAL }},
	} {
		t.Run(c.name, func(t *testing.T) {
			setDirect, pwriteDirect = c.set, c.write
			target := t.TempDir()
			res, err := Run(ctx, r, tree, src, Options{Target: target})
			if err != nil || len(res.Errors) > 0 {
				t.Fatalf("restore: %v %v", err, res.Errors)
			}
			if share := cachedShare(t, filepath.Join(target, "above")); share < 0.9 {
				t.Errorf("only %.0f%% cached: not written buffered", 100*share)
			}
			testutil.CompareTrees(t, src, target)
		})
	}
}

// TestRestoreDirectWriteFails: a write failing mid-file is reported, the
// file is not left looking complete (emptied, no metadata), and the next
// restore writes it.
func TestRestoreDirectWriteFails(t *testing.T) {
	skipWithoutDirect(t)
	ctx := context.Background()
	r := newRepo(t)
	tree, src, _ := directTree(t, r)
	old := pwriteDirect
	defer func() { pwriteDirect = old }()
	var calls atomic.Int64
	pwriteDirect = func(fd int, p []byte, off int64) error {
		if calls.Add(1) == 3 {
			return unix.ENOSPC
		}
		return old(fd, p, off)
	}
	target := t.TempDir()
	res, err := Run(ctx, r, tree, src, Options{Target: target, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Errors) != 1 || !errors.Is(res.Errors[0], unix.ENOSPC) {
		t.Fatalf("errors %v, want one ENOSPC", res.Errors)
	}
	failed := ""
	for _, name := range []string{"at", "above", "below", "tail4095", "tail4097", "sub/inside", "sparse.img"} {
		if strings.Contains(res.Errors[0].Error(), "restore "+name+" ") {
			failed = name
		}
	}
	if failed == "" {
		t.Fatalf("error names no large file: %v", res.Errors[0])
	}
	if fi, err := os.Stat(filepath.Join(target, failed)); err != nil || fi.Size() != 0 {
		t.Errorf("%s after a failed write: %v, size %d, want empty", failed, err, fi.Size())
	}
	pwriteDirect = old
	res, err = Run(ctx, r, tree, src, Options{Target: target})
	if err != nil || len(res.Errors) > 0 || res.Files != 1 {
		t.Fatalf("second restore: files %d (%v %v), want 1", res.Files, err, res.Errors)
	}
	testutil.CompareTrees(t, src, target)
}

// TestPreallocateReservesOnlyData: the blocks data chunks touch are
// reserved, whole blocks at their ends, and the zero chunks between them
// stay holes.
func TestPreallocateReservesOnlyData(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 64 << 10
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, 4096) != nil {
		t.Skip("no fallocate on this file system")
	}
	if err := f.Truncate(0); err != nil { // drop the probe's block
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// chunks: data [0, 5000), data [5000, 9000), zeros [9000, 30000),
	// data [30000, 31000), zeros to the end
	sizes := []uint32{5000, 4000, 21000, 1000, size - 31000}
	offsets := []int64{0, 5000, 9000, 30000, 31000}
	preallocate(int(f.Fd()), []int{0, 1, 3}, offsets, sizes)
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	// [0, 12288) and [28672, 32768): three blocks and one
	if got, want := st.Blocks*512, int64(4*4096); got != want {
		t.Fatalf("%d bytes reserved, want %d", got, want)
	}
	if st.Size != size {
		t.Fatalf("size %d, want %d (unchanged)", st.Size, size)
	}
}
