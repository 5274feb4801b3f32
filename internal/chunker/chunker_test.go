package chunker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"math/bits"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/zeebo/blake3"
)

// smallParams cut small chunks so that tests see many of them quickly.
var smallParams = Params{Min: 1 << 10, Avg: 4 << 10, Max: 16 << 10, Seed: seedOf(1)}

func seedOf(n byte) (s [32]byte) {
	for i := range s {
		s[i] = n + byte(i)
	}
	return s
}

func randomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	r.Read(b)
	return b
}

// forEach cuts the input of rd and calls fn with each chunk.
func forEach(t testing.TB, rd io.Reader, p Params, fn func(chunk []byte)) {
	t.Helper()
	c := New(rd, p)
	var buf []byte
	for {
		var err error
		buf, err = c.Next(buf)
		if err == io.EOF {
			if len(buf) != 0 {
				t.Fatalf("io.EOF with %d bytes", len(buf))
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		fn(buf)
	}
}

// chunkAll cuts the input of rd and returns the chunks.
func chunkAll(t testing.TB, rd io.Reader, p Params) [][]byte {
	t.Helper()
	var chunks [][]byte
	forEach(t, rd, p, func(c []byte) { chunks = append(chunks, bytes.Clone(c)) })
	return chunks
}

func lengths(chunks [][]byte) []int {
	l := make([]int, len(chunks))
	for i, c := range chunks {
		l[i] = len(c)
	}
	return l
}

// refGear derives the gear table as docs/FORMAT.md states it, independently
// of the package.
func refGear(seed [32]byte) (g [256]uint64) {
	for i := range g {
		h, _ := blake3.NewKeyed(seed[:])
		h.Write(append([]byte("floe gear"), byte(i)))
		g[i] = binary.LittleEndian.Uint64(h.Sum(nil)[:8])
	}
	return g
}

var refGears = map[[32]byte][256]uint64{}

// refLengths is a plain transcription of the cut rule in the package
// comment, for comparison with the optimised Chunker.
func refLengths(data []byte, p Params) []int {
	g, ok := refGears[p.Seed]
	if !ok {
		g = refGear(p.Seed)
		refGears[p.Seed] = g
	}
	avgBits := bits.TrailingZeros32(p.Avg)
	mask := func(n int) (m uint64) {
		for j := 0; j < n; j++ {
			m |= 1 << (63 - j*48/n)
		}
		return m
	}
	strict, loose := mask(avgBits+2), mask(avgBits-2)
	var out []int
	for start := 0; start < len(data); {
		rest := data[start:]
		cut := len(rest)
		var h uint64
		for l := 1; l <= len(rest); l++ {
			h = h<<1 + g[rest[l-1]]
			if l == int(p.Max) {
				cut = l
				break
			}
			if l < int(p.Min) {
				continue
			}
			m := loose
			if l < int(p.Avg) {
				m = strict
			}
			if h&m == 0 {
				cut = l
				break
			}
		}
		out = append(out, cut)
		start += cut
	}
	return out
}

func checkInvariants(t testing.TB, data []byte, chunks [][]byte, p Params) {
	t.Helper()
	if got := bytes.Join(chunks, nil); !bytes.Equal(got, data) {
		t.Fatalf("concatenated chunks (%d bytes) differ from the input (%d bytes)", len(got), len(data))
	}
	for i, c := range chunks {
		last := i == len(chunks)-1
		if len(c) == 0 || len(c) > int(p.Max) || (!last && len(c) < int(p.Min)) {
			t.Fatalf("chunk %d of %d has %d bytes, params %d/%d/%d", i, len(chunks), len(c), p.Min, p.Avg, p.Max)
		}
	}
}

func TestValidate(t *testing.T) {
	good := []Params{
		DefaultParams([32]byte{}),
		{Min: 64, Avg: 128, Max: 129},
		{Min: 1 << 20, Avg: 32 << 20, Max: 64 << 20},
	}
	for _, p := range good {
		if err := p.Validate(); err != nil {
			t.Errorf("%d/%d/%d: %v", p.Min, p.Avg, p.Max, err)
		}
	}
	bad := []struct {
		p    Params
		want string
	}{
		{Params{Min: 512, Avg: 1000, Max: 4096}, "power of two"},
		{Params{Min: 0, Avg: 0, Max: 4096}, "power of two"},
		{Params{Min: 63, Avg: 1024, Max: 4096}, "minimum size 63 is below 64"},
		{Params{Min: 1024, Avg: 1024, Max: 4096}, "not below the average"},
		{Params{Min: 512, Avg: 4096, Max: 4096}, "not below the maximum"},
		{Params{Min: 512, Avg: 1 << 20, Max: 64<<20 + 1}, "above"},
		{Params{Min: 512, Avg: 64 << 20, Max: 128 << 20}, "above"},
	}
	for _, tc := range bad {
		err := tc.p.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%d/%d/%d: %v, want error containing %q", tc.p.Min, tc.p.Avg, tc.p.Max, err, tc.want)
		}
	}
}

func TestGear(t *testing.T) {
	for _, seed := range [][32]byte{{}, seedOf(7)} {
		if got, want := *gear(seed), refGear(seed); got != want {
			t.Errorf("gear table for seed %x differs from the reference", seed)
		}
	}
	if gear(seedOf(7)) != gear(seedOf(7)) {
		t.Error("gear table not cached")
	}
	if *gear(seedOf(7)) == *gear(seedOf(8)) {
		t.Error("different seeds give the same gear table")
	}
}

func TestMasks(t *testing.T) {
	for b := 7; b <= 25; b++ {
		p := Params{Min: 64, Avg: 1 << b, Max: 1<<b + 1}
		strict, loose := p.masks()
		if bits.OnesCount64(strict) != b+2 || bits.OnesCount64(loose) != b-2 {
			t.Errorf("avg 2^%d: masks %#x %#x have %d and %d one-bits", b, strict, loose,
				bits.OnesCount64(strict), bits.OnesCount64(loose))
		}
		for _, m := range []uint64{strict, loose} {
			if m>>63 != 1 || m&0xffff != 0 {
				t.Errorf("avg 2^%d: mask %#x not spread over the high 48 bits", b, m)
			}
		}
	}
	// Pin the default masks: they are part of the format.
	strict, loose := DefaultParams([32]byte{}).masks()
	if strict != 0xaaa554aaa5540000 || loose != 0xa4a4a4a4a4a40000 {
		t.Errorf("default masks %#x %#x changed", strict, loose)
	}
}

// TestGolden pins the cut points for fixed input: they are part of the
// repository format, so a change here breaks deduplication with existing
// repositories.
func TestGolden(t *testing.T) {
	data := randomData(42, 8<<20)
	got := lengths(chunkAll(t, bytes.NewReader(data), DefaultParams(seedOf(0))))
	want := []int{1290070, 1443208, 1546356, 1089256, 1433244, 1230062, 356412}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("default params: lengths %v, want %v", got, want)
	}
	got = lengths(chunkAll(t, bytes.NewReader(data[:100<<10]), smallParams))
	want = []int{6337, 4558, 6479, 2744, 5768, 4781, 4912, 6541, 5083, 5406, 2576, 4249,
		5415, 6596, 4300, 4869, 5708, 4440, 4439, 1497, 4340, 1362}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("small params: lengths %v, want %v", got, want)
	}
}

// lowEntropy returns data with long runs and repeats, where cuts are rare
// and forced cuts at Max happen.
func lowEntropy(n int) []byte {
	b := make([]byte, 0, n)
	r := rand.New(rand.NewPCG(1, 2))
	for len(b) < n {
		run := r.IntN(20000)
		c := byte(r.IntN(4))
		for i := 0; i < run && len(b) < n; i++ {
			b = append(b, c)
		}
	}
	return b
}

func TestMatchesReference(t *testing.T) {
	inputs := map[string][]byte{
		"random": randomData(1, 300<<10),
		"zeros":  make([]byte, 100<<10),
		"low":    lowEntropy(300 << 10),
		"short":  randomData(2, 700),
		"one":    {42},
	}
	params := []Params{
		smallParams,
		{Min: 64, Avg: 128, Max: 256, Seed: seedOf(3)},
		{Min: 100, Avg: 1024, Max: 1025, Seed: seedOf(4)},
		{Min: 4000, Avg: 8192, Max: 60000, Seed: seedOf(5)},
	}
	readers := map[string]func([]byte) io.Reader{
		"bytes":   func(b []byte) io.Reader { return bytes.NewReader(b) },
		"onebyte": func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) },
		"half":    func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) },
		"dataerr": func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) },
	}
	for name, data := range inputs {
		for _, p := range params {
			want := refLengths(data, p)
			for rname, mk := range readers {
				if rname == "onebyte" && len(data) > 100<<10 {
					data := data[:100<<10]
					want := refLengths(data, p)
					if got := lengths(chunkAll(t, mk(data), p)); fmt.Sprint(got) != fmt.Sprint(want) {
						t.Errorf("%s/%s %d/%d/%d: lengths %v, want %v", name, rname, p.Min, p.Avg, p.Max, got, want)
					}
					continue
				}
				chunks := chunkAll(t, mk(data), p)
				checkInvariants(t, data, chunks, p)
				if got := lengths(chunks); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s/%s %d/%d/%d: lengths %v, want %v", name, rname, p.Min, p.Avg, p.Max, got, want)
				}
			}
		}
	}
}

func TestForcedCuts(t *testing.T) {
	// Data without cut points is cut at Max.
	zeros := make([]byte, 20<<20)
	got := lengths(chunkAll(t, bytes.NewReader(zeros), DefaultParams(seedOf(9))))
	if want := []int{8 << 20, 8 << 20, 4 << 20}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("zeros: lengths %v, want %v", got, want)
	}
}

func TestSeedsDiffer(t *testing.T) {
	data := randomData(4, 1<<20)
	p1, p2 := smallParams, smallParams
	p2.Seed = seedOf(2)
	a := lengths(chunkAll(t, bytes.NewReader(data), p1))
	b := lengths(chunkAll(t, bytes.NewReader(data), p2))
	if fmt.Sprint(a) == fmt.Sprint(b) {
		t.Error("different seeds give the same boundaries")
	}
	if c := lengths(chunkAll(t, bytes.NewReader(data), p1)); fmt.Sprint(a) != fmt.Sprint(c) {
		t.Error("same input and params give different boundaries")
	}
}

func TestDedup(t *testing.T) {
	seed := maphash.MakeSeed()
	for _, tc := range []struct {
		name string
		size int
		p    Params
	}{
		{"default", 64 << 20, DefaultParams(seedOf(5))},
		{"small", 4 << 20, smallParams},
	} {
		a := randomData(5, tc.size)
		seen := make(map[uint64]bool)
		off, n := 0, 0
		forEach(t, bytes.NewReader(a), tc.p, func(c []byte) {
			if !bytes.Equal(c, a[off:off+len(c)]) || len(c) > int(tc.p.Max) ||
				(len(c) < int(tc.p.Min) && off+len(c) != len(a)) {
				t.Fatalf("%s: bad chunk of %d bytes at %d", tc.name, len(c), off)
			}
			seen[maphash.Bytes(seed, c)] = true
			off += len(c)
			n++
		})
		if off != len(a) {
			t.Fatalf("%s: chunks cover %d of %d bytes", tc.name, off, len(a))
		}
		// Random data has a cut point every 2^18 bytes after Avg:
		// chunks average Min + about 0.7 MiB.
		if avg := len(a) / n; tc.name == "default" && (avg < 1<<20 || avg > 3<<19) {
			t.Errorf("%s: %d chunks, average %d bytes, want about 1.2 MiB", tc.name, n, avg)
		}
		// changed counts the chunks of the input of rd not in a.
		changed := func(rd io.Reader) (changed int) {
			forEach(t, rd, tc.p, func(c []byte) {
				if !seen[maphash.Bytes(seed, c)] {
					changed++
				}
			})
			return changed
		}
		mid := tc.size / 2
		edit := randomData(6, 1024)
		if c := changed(io.MultiReader(bytes.NewReader(a[:mid]), bytes.NewReader(edit),
			bytes.NewReader(a[mid+len(edit):]))); c < 1 || c > 2 {
			t.Errorf("%s: 1 KiB changed, %d of %d chunks changed, want 1 or 2", tc.name, c, n)
		}
		// Inserted bytes shift the rest; the cuts must resynchronise (a
		// new cut point in the inserted bytes can split one chunk in two
		// before they do).
		if c := changed(io.MultiReader(bytes.NewReader(a[:mid]), bytes.NewReader(edit),
			bytes.NewReader(a[mid:]))); c < 1 || c > 3 {
			t.Errorf("%s: 1 KiB inserted, %d of %d chunks changed, want 1 to 3", tc.name, c, n)
		}
	}
}

func TestEmpty(t *testing.T) {
	c := New(bytes.NewReader(nil), smallParams)
	for range 2 {
		if b, err := c.Next(make([]byte, 10)); err != io.EOF || len(b) != 0 {
			t.Fatalf("Next on empty input: %d bytes, %v; want io.EOF", len(b), err)
		}
	}
}

type errAfter struct {
	r   io.Reader
	n   int
	err error
}

func (e *errAfter) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, e.err
	}
	p = p[:min(len(p), e.n, 777)]
	n, err := e.r.Read(p)
	e.n -= n
	return n, err
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestReadErrors(t *testing.T) {
	boom := errors.New("boom")
	data := randomData(8, 200<<10)
	for _, tc := range []struct {
		name string
		rd   io.Reader
		want error
	}{
		{"at once", iotest.ErrReader(boom), boom},
		{"after data", &errAfter{r: bytes.NewReader(data), n: 100 << 10, err: boom}, boom},
		{"timeout", iotest.TimeoutReader(bytes.NewReader(data)), iotest.ErrTimeout},
		{"no progress", zeroReader{}, io.ErrNoProgress},
	} {
		c := New(tc.rd, smallParams)
		var err error
		n := 0
		for ; err == nil; n++ {
			_, err = c.Next(nil)
		}
		if !errors.Is(err, tc.want) || !strings.HasPrefix(err.Error(), "chunker: read: ") {
			t.Errorf("%s: error %v after %d chunks, want wrapped %v", tc.name, err, n, tc.want)
		}
		if _, err2 := c.Next(nil); err2 != err {
			t.Errorf("%s: error not sticky: %v then %v", tc.name, err, err2)
		}
	}
}

func TestInvalidParams(t *testing.T) {
	c := New(bytes.NewReader([]byte("x")), Params{Min: 1, Avg: 3, Max: 2})
	if _, err := c.Next(nil); err == nil || !strings.Contains(err.Error(), "power of two") {
		t.Errorf("Next with invalid params: %v", err)
	}
	c.Reset(bytes.NewReader(nil))
	if _, err := c.Next(nil); err == nil || err == io.EOF {
		t.Errorf("Next with invalid params after Reset: %v", err)
	}
}

func TestReset(t *testing.T) {
	a, b := randomData(9, 100<<10), lowEntropy(100<<10)
	c := New(bytes.NewReader(a), smallParams)
	// Stop half way through a, then cut b and a again from the start.
	if _, err := c.Next(nil); err != nil {
		t.Fatal(err)
	}
	for _, data := range [][]byte{b, a} {
		c.Reset(bytes.NewReader(data))
		var got []int
		buf := make([]byte, 0, 100)
		for {
			var err error
			if buf, err = c.Next(buf); err == io.EOF {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			got = append(got, len(buf))
		}
		if want := refLengths(data, smallParams); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("after Reset: lengths %v, want %v", got, want)
		}
	}
}

func FuzzChunker(f *testing.F) {
	f.Add([]byte("hello"), uint32(64), uint8(0), uint32(1), byte(0))
	f.Add(randomData(1, 3000), uint32(100), uint8(1), uint32(300), byte(1))
	f.Add(lowEntropy(3000), uint32(200), uint8(2), uint32(0), byte(2))
	f.Fuzz(func(t *testing.T, data []byte, minSize uint32, avgBits uint8, extra uint32, seed byte) {
		// Map the inputs onto valid parameters with small chunks, so
		// that small inputs reach every rule.
		avg := uint32(1) << (7 + avgBits%5) // 128 B .. 2 KiB
		p := Params{
			Min:  64 + minSize%(avg-64),
			Avg:  avg,
			Max:  avg + 1 + extra%(4*avg),
			Seed: seedOf(seed % 4),
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("params %d/%d/%d: %v", p.Min, p.Avg, p.Max, err)
		}
		chunks := chunkAll(t, iotest.HalfReader(bytes.NewReader(data)), p)
		checkInvariants(t, data, chunks, p)
		if got, want := lengths(chunks), refLengths(data, p); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("lengths %v, want %v", got, want)
		}
	})
}

func BenchmarkChunker(b *testing.B) {
	data := randomData(10, 64<<20)
	for _, tc := range []struct {
		name string
		p    Params
	}{
		{"default", DefaultParams(seedOf(0))},
		{"small", smallParams},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			rd := bytes.NewReader(data)
			c := New(rd, tc.p)
			buf := make([]byte, 0, tc.p.Max)
			for b.Loop() {
				rd.Reset(data)
				c.Reset(rd)
				for {
					var err error
					if buf, err = c.Next(buf); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
