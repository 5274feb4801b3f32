package directio

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFileDevice: on a device (a regular file stands in for it, larger
// than the image, as a disk is), the bytes past the image's size are never
// written, even where its last block is partial, and nothing is cut; the
// same when the device refuses direct writes part-way.
func TestFileDevice(t *testing.T) {
	for _, size := range []int64{1, Align - 1, Align, 5*Align + 123, 40*Align + 4095} {
		for _, refuseAfter := range []int64{-1, 0, 3} {
			const slack = 3 * Align
			path := filepath.Join(t.TempDir(), "dev")
			if err := os.WriteFile(path, bytes.Repeat([]byte{0xAA}, int(size+slack)), 0o600); err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			bfd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			var writes atomic.Int64
			d := NewFile(fd, size, Options{Device: true, BufferedFD: bfd, PwriteDirect: func(fd int, p []byte, off int64) error {
				if refuseAfter >= 0 && writes.Add(1) > refuseAfter {
					return unix.EINVAL
				}
				return PwriteFull(fd, p, off)
			}})
			if d == nil {
				unix.Close(fd)
				unix.Close(bfd)
				t.Skip("the test directory's file system has no O_DIRECT")
			}
			rng := rand.New(rand.NewPCG(uint64(size), 5))
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(rng.Uint32()) | 1
			}
			// runs of unaligned lengths, written last first; every
			// third one a zero range the device holds already
			type run struct {
				off, n int64
				zero   bool
			}
			var runs []run
			for off := int64(0); off < size; {
				n := min(1+rng.Int64N(3*Align), size-off)
				z := rng.IntN(3) == 0
				if z {
					clear(data[off : off+n])
					if err := PwriteFull(bfd, data[off:off+n], off); err != nil {
						t.Fatal(err)
					}
				}
				runs = append(runs, run{off, n, z})
				off += n
			}
			for i := len(runs) - 1; i >= 0; i-- {
				r := runs[i]
				if r.zero {
					if err := d.Zero(r.off, r.n); err != nil {
						t.Fatal(err)
					}
					continue
				}
				base := r.off &^ alignMask
				buf := Buffer(RoundUp(int(r.off + r.n - base)))
				copy(buf[r.off-base:], data[r.off:r.off+r.n])
				if err := d.WriteRun(buf, r.off, int(r.n)); err != nil {
					t.Fatalf("size %d: WriteRun at %d: %v", size, r.off, err)
				}
			}
			if err := d.Finish(); err != nil {
				t.Fatal(err)
			}
			unix.Close(fd)
			unix.Close(bfd)
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(got)) != size+slack {
				t.Fatalf("size %d: the device was cut to %d bytes", size, len(got))
			}
			if !bytes.Equal(got[:size], data) {
				t.Errorf("size %d, refused after %d: the image differs", size, refuseAfter)
			}
			if !bytes.Equal(got[size:], bytes.Repeat([]byte{0xAA}, slack)) {
				t.Errorf("size %d, refused after %d: bytes past the image were written", size, refuseAfter)
			}
			if refuseAfter >= 0 && writes.Load() > refuseAfter && d.Direct() {
				t.Errorf("size %d: refused, still direct", size)
			}
		}
	}
}
