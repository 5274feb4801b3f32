package nbd

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readAll(t *testing.T, img Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOverlay(t *testing.T) {
	const size = 1<<20 + 1000 // a short last block
	base := newMemImage(size, [2]int64{64 << 10, 512 << 10})
	orig := bytes.Clone(base.data)
	want := bytes.Clone(base.data)
	path := filepath.Join(t.TempDir(), "ov")
	o, err := OpenOverlay(path, base, "test image")
	if err != nil {
		t.Fatal(err)
	}
	write := func(off int64, p []byte) {
		t.Helper()
		if _, err := o.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	write(0, bytes.Repeat([]byte{0xab}, 1<<16))
	write(5000, []byte("unaligned, inside one block"))
	write(OverlayBlock*3-10, bytes.Repeat([]byte{1}, 20)) // across two blocks
	write(size-10, []byte("end of it!"))
	write(100<<10, bytes.Repeat([]byte{7}, 3000)) // inside a hole of the image
	if err := o.Zero(200<<10+17, 3*OverlayBlock); err != nil {
		t.Fatal(err)
	}
	clear(want[200<<10+17 : 200<<10+17+3*OverlayBlock])
	if err := o.Zero(600<<10, 64<<10); err != nil {
		t.Fatal(err)
	}
	clear(want[600<<10 : 664<<10])
	if err := o.Zero(size-500, 500); err != nil {
		t.Fatal(err)
	}
	clear(want[size-500:])
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("overlay reads differ from what was written")
	}
	// zeroed whole blocks are holes, and so are the image's holes that
	// were not written; written blocks are data
	ex, err := extents(o, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	at := func(off int64) bool {
		var pos int64
		for _, e := range ex {
			if off < pos+e.Length {
				return e.Hole
			}
			pos += e.Length
		}
		t.Fatalf("extents end before %d", off)
		return false
	}
	for _, c := range []struct {
		off  int64
		hole bool
	}{{0, false}, {70 << 10, true}, {100 << 10, false}, {600 << 10, true}, {660 << 10, true}, {700 << 10, false}} {
		if at(c.off) != c.hole {
			t.Errorf("offset %d: hole %v, want %v (%v)", c.off, !c.hole, c.hole, ex)
		}
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(base.data, orig) {
		t.Fatal("the image changed")
	}

	// reopened: the writes are there
	o, err = OpenOverlay(path, base, "test image")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, o), want) {
		t.Fatal("reopened overlay differs")
	}
	// one user at a time
	if _, err := OpenOverlay(path, base, "test image"); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open: %v", err)
	}
	o.Close()

	if _, err := OpenOverlay(path, base, "another image"); err == nil || !strings.Contains(err.Error(), "belongs to") {
		t.Fatalf("open over another image: %v", err)
	}
	if _, err := OpenOverlay(path, newMemImage(4096), "test image"); err == nil {
		t.Fatal("open over an image of another size")
	}
	// A file that is not an overlay is never taken over.
	other := filepath.Join(t.TempDir(), "precious.img")
	os.WriteFile(other, []byte("do not touch"), 0o600)
	if _, err := OpenOverlay(other, base, "x"); !errors.Is(err, errNotOverlay) {
		t.Fatalf("open over a file that is not an overlay: %v", err)
	}
	if b, _ := os.ReadFile(other); string(b) != "do not touch" {
		t.Fatal("the file was changed")
	}
	// A damaged map is refused.
	m, _ := os.ReadFile(path + ".map")
	m[len(m)-6] ^= 1
	os.WriteFile(path+".map", m, 0o600)
	if _, err := OpenOverlay(path, base, "test image"); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("damaged map: %v", err)
	}
}

// Over the protocol: writes, FUA, zeroes, trim and flush on a writable
// export; reads see them; the image does not change.
func TestWritableExport(t *testing.T) {
	base := testImage()
	orig := bytes.Clone(base.data)
	o, err := OpenOverlay(filepath.Join(t.TempDir(), "ov"), base, "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	s := &Server{Exports: []Export{{Name: "disk", Image: o}}}
	want := bytes.Clone(base.data)
	for _, structured := range []bool{true, false} {
		tc, done := dialPipe(t, s)
		tc.handshake("disk", structured)
		if tc.tf&tflagReadOnly != 0 || tc.tf&tflagSendWriteZeroes == 0 || tc.tf&tflagSendTrim == 0 {
			t.Fatalf("flags %#x", tc.tf)
		}
		p := bytes.Repeat([]byte{0xcd}, 10000)
		if errno := tc.simple(cmdWrite, cmdFlagFUA, 777, uint32(len(p)), p); errno != 0 {
			t.Fatalf("write: %d", errno)
		}
		copy(want[777:], p)
		if errno := tc.simple(cmdWriteZeroes, 0, 300<<10, 8192, nil); errno != 0 {
			t.Fatalf("write zeroes: %d", errno)
		}
		clear(want[300<<10 : 300<<10+8192])
		if errno := tc.simple(cmdWriteZeroes, cmdFlagNoHole, 400<<10, 8192, nil); errno != 0 {
			t.Fatalf("write zeroes, no hole: %d", errno)
		}
		clear(want[400<<10 : 400<<10+8192])
		if errno := tc.simple(cmdWrite, 0, testSize-2, 4, []byte("abcd")); errno != errNoSpc {
			t.Fatalf("write past the end: %d", errno)
		}
		if errno := tc.simple(cmdTrim, 0, 0, 0, nil); errno != errInval {
			t.Fatalf("empty trim: %d", errno)
		}
		if errno := tc.simple(cmdFlush, 0, 0, 0, nil); errno != 0 {
			t.Fatalf("flush: %d", errno)
		}
		if structured {
			got, _, errno := tc.read(0, testSize)
			if errno != 0 || !bytes.Equal(got, want) {
				t.Fatal("read after writes differs")
			}
		} else {
			tc.request(cmdRead, 0, 3, 0, testSize, nil)
			if ch := tc.reply(testSize); ch.errno != 0 || !bytes.Equal(ch.data, want) {
				t.Fatal("simple read after writes differs")
			}
		}
		tc.disc(done)
	}
	if !bytes.Equal(base.data, orig) {
		t.Fatal("the image changed")
	}
	// zeroes with NO_HOLE are written (data), without it punched (a hole)
	for _, c := range []struct {
		off  int64
		hole bool
	}{{300 << 10, true}, {400 << 10, false}} {
		ex, err := o.Extents(c.off, 8192)
		if err != nil || len(ex) != 1 || ex[0].Hole != c.hole {
			t.Errorf("extents at %d: %v %v, want hole %v", c.off, ex, err, c.hole)
		}
	}
}

func FuzzOverlayMap(f *testing.F) {
	f.Add(encodeOverlayMap(overlayMap{origin: "snap:/disk.img", size: 1 << 20, bits: make([]uint64, 4)}))
	f.Add(encodeOverlayMap(overlayMap{origin: "", size: 5000, bits: []uint64{3}}))
	f.Add([]byte(overlayMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeOverlayMap(b)
		if err != nil {
			return
		}
		// what decodes encodes back to the same bytes
		if again := encodeOverlayMap(m); !bytes.Equal(again, b) {
			t.Fatalf("round trip differs")
		}
	})
}
