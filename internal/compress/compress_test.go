package compress

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func randomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(b)
	return b
}

var (
	corpusOnce sync.Once
	corpus     []byte
)

// textCorpus returns up to n bytes of Go source from GOROOT, or synthetic
// text if there is none.
func textCorpus(tb testing.TB, n int) []byte {
	tb.Helper()
	corpusOnce.Do(func() {
		const size = 16 << 20
		root := filepath.Join(runtime.GOROOT(), "src")
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || len(corpus) >= size {
				return filepath.SkipDir
			}
			if !d.IsDir() && strings.HasSuffix(path, ".go") {
				if b, err := os.ReadFile(path); err == nil {
					corpus = append(corpus, b...)
				}
			}
			return nil
		})
		if len(corpus) < 1<<20 {
			// No GOROOT sources: words from a small vocabulary.
			r := rand.New(rand.NewPCG(1, 1))
			words := strings.Fields("the of and to in is for that func return if err nil int string byte range go")
			for len(corpus) < size {
				corpus = append(corpus, words[r.IntN(len(words))]...)
				corpus = append(corpus, " \n"[r.IntN(2)])
			}
		}
	})
	return corpus[:min(n, len(corpus))]
}

// compressing lists the levels that compress.
var compressing = []Level{Auto, Fastest, Better, Default}

func roundTrip(t *testing.T, src []byte) (compressed int, ok bool) {
	t.Helper()
	return roundTripAt(t, Auto, src)
}

func roundTripAt(t *testing.T, l Level, src []byte) (compressed int, ok bool) {
	t.Helper()
	prefix := []byte("prefix")
	out, ok := l.Compress(bytes.Clone(prefix), src)
	if !bytes.HasPrefix(out, prefix) {
		t.Fatalf("Compress lost the prefix of dst")
	}
	if !ok {
		if len(out) != len(prefix) {
			t.Fatalf("ok=false but dst grew from %d to %d bytes", len(prefix), len(out))
		}
		return len(src), false
	}
	if len(out)-len(prefix) >= len(src) {
		t.Fatalf("ok=true but %d bytes compressed to %d", len(src), len(out)-len(prefix))
	}
	got, err := Decompress([]byte("other"), out[len(prefix):], len(src))
	if err != nil {
		t.Fatalf("Decompress: %v", err)
	}
	if !bytes.Equal(got, append([]byte("other"), src...)) {
		t.Fatalf("round trip of %d bytes differs", len(src))
	}
	return len(out) - len(prefix), true
}

func TestRoundTrip(t *testing.T) {
	text := textCorpus(t, 8<<20)
	sizes := map[Level]int{}
	for _, l := range compressing {
		for _, n := range []int{1000, 4096, trialSize - 1, trialSize, trialSize + 1, 1 << 20, 8 << 20} {
			c, ok := roundTripAt(t, l, text[:n])
			// SpeedFastest saves less than 1/16 of 1000 bytes of text,
			// and so stores them raw.
			if !ok && !(l == Fastest && n < 4096) {
				t.Errorf("%s: text, %d bytes: not compressed", l, n)
			}
			t.Logf("%s: text, %d bytes: %d compressed (%.3f)", l, n, c, float64(c)/float64(n))
		}
		if _, ok := roundTripAt(t, l, make([]byte, 3<<20)); !ok {
			t.Errorf("%s: zeros not compressed", l)
		}
		// Text compresses well.
		c, _ := roundTripAt(t, l, text[:1<<20])
		if c > 1<<20/3 {
			t.Errorf("%s: 1 MiB of Go source compressed to %d bytes, want < 1/3", l, c)
		}
		sizes[l] = c
	}
	// The levels are what they say: each one trades speed for size.
	if !(sizes[Better] < sizes[Auto] && sizes[Auto] < sizes[Fastest]) {
		t.Errorf("1 MiB of Go source: better %d, auto %d, fastest %d bytes; want better < auto < fastest",
			sizes[Better], sizes[Auto], sizes[Fastest])
	}
}

// Off stores everything raw, however compressible.
func TestOff(t *testing.T) {
	for _, src := range [][]byte{make([]byte, 3<<20), textCorpus(t, 1<<20), []byte("hello")} {
		if out, ok := Off.Compress([]byte("x"), src); ok || string(out) != "x" {
			t.Errorf("off: %d bytes compressed (ok=%v, dst %d bytes)", len(src), ok, len(out))
		}
	}
}

// TestFor pins the policy of docs/FORMAT.md "config": at auto, disk images
// are compressed at fastest and everything else at default; every other
// level compresses both kinds alike.
func TestFor(t *testing.T) {
	for _, tc := range []struct {
		l            Level
		files, image Level
	}{
		{Auto, Auto, Fastest},
		{Default, Default, Default},
		{Fastest, Fastest, Fastest},
		{Better, Better, Better},
		{Off, Off, Off},
	} {
		if got := tc.l.For(Files); got != tc.files {
			t.Errorf("%v.For(Files) = %v, want %v", tc.l, got, tc.files)
		}
		if got := tc.l.For(Image); got != tc.image {
			t.Errorf("%v.For(Image) = %v, want %v", tc.l, got, tc.image)
		}
	}
	// Auto's file data is Default's, byte for byte: repositories made
	// before images had their own level keep their file blobs' IDs.
	text := textCorpus(t, 3<<20)
	for _, in := range [][]byte{text[:1<<20], text[1<<20:], text[:30<<10]} {
		a, _ := Auto.For(Files).Compress(nil, in)
		d, _ := Default.For(Image).Compress(nil, in)
		f, _ := Auto.For(Image).Compress(nil, in)
		if !bytes.Equal(a, d) {
			t.Errorf("%d bytes: auto (files) and default (image) gave %d and %d bytes", len(in), len(a), len(d))
		}
		if bytes.Equal(a, f) || len(f) <= len(a) {
			t.Errorf("%d bytes: auto gave files %d bytes and the image %d: want the image at fastest, larger", len(in), len(a), len(f))
		}
	}
}

func TestParseLevel(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Level
	}{{"", Auto}, {"auto", Auto}, {"fastest", Fastest}, {"better", Better}, {"off", Off}, {"default", Default}} {
		got, err := ParseLevel(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if tc.in != "" && got.String() != tc.in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tc.in)
		}
	}
	for _, bad := range []string{"Auto", "zstd", "fast", "9", " off", "best"} {
		if l, err := ParseLevel(bad); err == nil || !strings.Contains(err.Error(), "unknown compression level") {
			t.Errorf("ParseLevel(%q) = %v, %v; want an unknown level error", bad, l, err)
		}
	}
}

func TestDoesNotPay(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  []byte
	}{
		{"empty", nil},
		{"tiny", []byte("hello, world")},
		{"random small", randomData(1, 1000)},
		{"random", randomData(2, 1<<20)},
		// Incompressible (random) at every sample, however compressible
		// between them: the trial decides.
		{"random at the samples", randomAtSamples(1 << 20)},
		// Saves less than 1/16: random bytes mixed with a few zeros.
		{"barely", append(randomData(4, 60<<10), make([]byte, 3<<10)...)},
	} {
		for _, l := range compressing {
			if _, ok := roundTripAt(t, l, tc.src); ok {
				t.Errorf("%s: %s: compressed, want ok=false", l, tc.name)
			}
		}
	}
	// With more zeros the trial saves more than 1/16.
	for _, l := range compressing {
		if _, ok := roundTripAt(t, l, append(randomData(4, 56<<10), make([]byte, 12<<10)...)); !ok {
			t.Errorf("%s: 56 KiB random + 12 KiB zeros not compressed", l)
		}
	}
}

// randomAtSamples returns n bytes that are random where the trial samples
// them and zero elsewhere.
func randomAtSamples(n int) []byte {
	b := make([]byte, n)
	r := randomData(5, n)
	for i := 0; i < samples; i++ {
		off := (n - sampleSize) * i / (samples - 1)
		copy(b[off:off+sampleSize], r[off:])
	}
	return b
}

// A blob that starts (or ends) incompressible and goes on compressible, as
// the chunks of a disk image do where a compressed file is followed by text,
// is compressed: the trial samples the whole blob, not its head.
func TestMixedBlobCompressed(t *testing.T) {
	text := textCorpus(t, 1<<20)
	for _, tc := range []struct {
		name string
		src  []byte
	}{
		{"random head", append(randomData(3, 256<<10), text[:768<<10]...)},
		{"random tail", append(bytes.Clone(text[:768<<10]), randomData(6, 256<<10)...)},
		{"text in the middle", append(append(randomData(7, 448<<10), text[:128<<10]...), randomData(8, 448<<10)...)},
		{"zero tail", append(randomData(9, trialSize), make([]byte, 1<<20)...)},
	} {
		c, ok := roundTrip(t, tc.src)
		if !ok {
			t.Errorf("%s: not compressed", tc.name)
		}
		t.Logf("%s: %d bytes compressed to %d", tc.name, len(tc.src), c)
	}
}

// The decision and the output depend on the input and the level alone:
// the same blob gives the same bytes at a level whichever pooled encoder
// compresses it and whatever it compressed before, at this level or
// another (blob IDs are convergent, docs/FORMAT.md "Blobs").
func TestDeterministic(t *testing.T) {
	text := textCorpus(t, 4<<20)
	inputs := [][]byte{text[:1<<20], append(randomData(10, 300<<10), text[:700<<10]...), text[1<<20 : 3<<20], randomData(11, 1<<20), text[:30<<10]}
	want := map[Level][][]byte{}
	for _, l := range compressing {
		want[l] = make([][]byte, len(inputs))
		for i, in := range inputs {
			want[l][i], _ = l.Compress(nil, in)
		}
	}
	if bytes.Equal(want[Auto][0], want[Fastest][0]) || bytes.Equal(want[Auto][0], want[Better][0]) {
		t.Fatal("the levels give the same bytes for 1 MiB of text")
	}
	for i := range inputs {
		if !bytes.Equal(want[Auto][i], want[Default][i]) {
			t.Errorf("input %d: auto and default compress differently", i)
		}
	}
	var wg sync.WaitGroup
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rep := 0; rep < 3; rep++ {
				for j := range inputs {
					i := (j + g + rep) % len(inputs)
					// Interleave the levels, so that every goroutine
					// takes encoders of each pool in turn.
					l := compressing[(g+j+rep)%len(compressing)]
					if got, _ := l.Compress(nil, inputs[i]); !bytes.Equal(got, want[l][i]) {
						t.Errorf("%s: input %d compressed differently (%d bytes, then %d)", l, i, len(want[l][i]), len(got))
					}
				}
			}
		}()
	}
	wg.Wait()
	// A fresh encoder, with or without the lower-memory tables, gives the
	// same bytes as the pooled ones at every level.
	for _, l := range compressing {
		zl, _ := l.zstd()
		for _, low := range []bool{false, true} {
			e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zl), zstd.WithEncoderConcurrency(1),
				zstd.WithEncoderCRC(false), zstd.WithWindowSize(windowSize), zstd.WithLowerEncoderMem(low))
			if err != nil {
				t.Fatal(err)
			}
			for i, in := range inputs {
				if want[l][i] == nil {
					continue
				}
				if got := e.EncodeAll(in, nil); !bytes.Equal(got, want[l][i]) {
					t.Errorf("%s, lower memory %v: input %d compressed to %d bytes, pooled encoder %d", l, low, i, len(got), len(want[l][i]))
				}
			}
		}
	}
}

func TestMaxSize(t *testing.T) {
	src := textCorpus(t, 200<<10)
	c, ok := Compress(nil, src)
	if !ok {
		t.Fatal("not compressed")
	}
	for _, max := range []int{0, 1000, len(src) - 1} {
		out, err := Decompress([]byte("x"), c, max)
		if err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
			t.Errorf("maxSize %d: %v, want exceeds the limit", max, err)
		}
		if string(out) != "x" {
			t.Errorf("maxSize %d: dst changed on error", max)
		}
	}
	if _, err := Decompress(nil, c, -1); err == nil {
		t.Error("negative maxSize accepted")
	}
	if out, err := Decompress(nil, c, len(src)); err != nil || !bytes.Equal(out, src) {
		t.Errorf("maxSize = size: %v", err)
	}

	// A frame that does not declare its size is bounded too.
	var buf bytes.Buffer
	w, _ := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
	w.Write(src)
	w.Close()
	if h := (zstd.Header{}); h.Decode(buf.Bytes()) != nil || h.HasFCS {
		t.Fatal("stream frame declares its size; test needs another frame")
	}
	if _, err := Decompress(nil, buf.Bytes(), len(src)-1); err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Errorf("frame without size, maxSize too small: %v", err)
	}
	if out, err := Decompress(nil, buf.Bytes(), len(src)); err != nil || !bytes.Equal(out, src) {
		t.Errorf("frame without size: %v", err)
	}
}

func TestCorrupt(t *testing.T) {
	src := textCorpus(t, 300<<10)
	c, _ := Compress(nil, src)
	cases := map[string][]byte{
		"empty":     nil,
		"garbage":   randomData(5, 1000),
		"truncated": c[:len(c)/2],
		"header":    c[:6],
		"trailing":  append(bytes.Clone(c), 1, 2, 3, 4, 5, 6, 7, 8),
		"twice":     append(bytes.Clone(c), c...),
	}
	for name, data := range cases {
		out, err := Decompress([]byte("x"), data, len(src))
		if err == nil {
			t.Errorf("%s: no error", name)
		} else if !strings.HasPrefix(err.Error(), "compress: ") {
			t.Errorf("%s: error %q lacks the package prefix", name, err)
		}
		if string(out) != "x" {
			t.Errorf("%s: dst changed on error", name)
		}
	}
	// Flipped bits: the AEAD around blobs catches these; here Decompress
	// must only fail cleanly or return no more than maxSize bytes.
	r := rand.New(rand.NewPCG(2, 2))
	for range 300 {
		d := bytes.Clone(c)
		d[r.IntN(len(d))] ^= byte(1 << r.IntN(8))
		if out, err := Decompress(nil, d, len(src)); err == nil && len(out) > len(src) {
			t.Fatalf("corrupt input decompressed to %d bytes, limit %d", len(out), len(src))
		}
	}
}

func TestConcurrent(t *testing.T) {
	text := textCorpus(t, 4<<20)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			var c, d []byte
			for i := range 8 {
				src := text[(g*8+i)*100<<10:][:100<<10]
				var ok bool
				if c, ok = Compress(c[:0], src); !ok {
					t.Error("not compressed")
					return
				}
				var err error
				if d, err = Decompress(d[:0], c, len(src)); err != nil || !bytes.Equal(d, src) {
					t.Errorf("round trip: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func FuzzDecompress(f *testing.F) {
	text := textCorpus(f, 100<<10)
	c, _ := Compress(nil, text[:20<<10])
	f.Add(c, uint32(20<<10))
	f.Add(c, uint32(100))
	f.Add([]byte("\x28\xb5\x2f\xfd\x00\x00\x00"), uint32(10))
	f.Add([]byte{}, uint32(0))
	f.Fuzz(func(t *testing.T, data []byte, max uint32) {
		max %= 4 << 20
		out, err := Decompress([]byte("x"), data, int(max))
		if err != nil {
			if string(out) != "x" {
				t.Fatalf("dst changed on error %v", err)
			}
		} else if len(out) > 1+int(max) || out[0] != 'x' {
			t.Fatalf("%d bytes out, limit %d", len(out)-1, max)
		}
		// Whatever the bytes, they survive a round trip.
		if c, ok := Compress(nil, data); ok {
			got, err := Decompress(nil, c, len(data))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("round trip of %d bytes: %v", len(data), err)
			}
		}
	})
}

// inputs are the benchmark inputs, in 1 MiB blobs as the chunker cuts them.
func inputs(b *testing.B) map[string][]byte {
	m := map[string][]byte{
		"text":   textCorpus(b, 16<<20),
		"random": randomData(9, 16<<20),
	}
	if exe, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "pkg", "tool", runtime.GOOS+"_"+runtime.GOARCH, "compile")); err == nil {
		m["binary"] = exe[:min(len(exe), 16<<20)]
	}
	return m
}

const blobSize = 1 << 20

func benchCompress(b *testing.B, data []byte, compress func(dst, src []byte) ([]byte, bool)) {
	b.SetBytes(int64(len(data)))
	var dst []byte
	var stored int
	for b.Loop() {
		stored = 0
		for off := 0; off < len(data); off += blobSize {
			src := data[off:min(off+blobSize, len(data))]
			var ok bool
			if dst, ok = compress(dst[:0], src); ok {
				stored += len(dst)
			} else {
				stored += len(src)
			}
		}
	}
	b.ReportMetric(float64(stored)/float64(len(data)), "ratio")
}

func BenchmarkCompress(b *testing.B) {
	for name, data := range inputs(b) {
		b.Run(name, func(b *testing.B) { benchCompress(b, data, Compress) })
	}
}

func BenchmarkDecompress(b *testing.B) {
	for name, data := range inputs(b) {
		var blobs [][]byte
		for off := 0; off < len(data); off += blobSize {
			if c, ok := Compress(nil, data[off:min(off+blobSize, len(data))]); ok {
				blobs = append(blobs, c)
			}
		}
		if len(blobs) == 0 {
			continue
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(blobs) * blobSize))
			var dst []byte
			for b.Loop() {
				for _, c := range blobs {
					var err error
					if dst, err = Decompress(dst[:0], c, blobSize); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkLevels compares encoder levels and windows, with the same trial;
// the package comment records the results.
func BenchmarkLevels(b *testing.B) {
	in := inputs(b)
	for _, lv := range []struct {
		name   string
		level  zstd.EncoderLevel
		window int
	}{
		{"fastest", zstd.SpeedFastest, windowSize},
		{"default", zstd.SpeedDefault, windowSize}, // floe
		{"restic", zstd.SpeedDefault, 512 << 10},   // restic's "auto"
		{"better", zstd.SpeedBetterCompression, windowSize},
	} {
		e := &encoder{Encoder: newEncoder(lv.level, lv.window)}
		for _, name := range []string{"text", "binary"} {
			if data, ok := in[name]; ok {
				b.Run(fmt.Sprintf("%s/%s", lv.name, name), func(b *testing.B) {
					benchCompress(b, data, func(dst, src []byte) ([]byte, bool) { return e.compress(dst, src) })
				})
			}
		}
	}
}

// BenchmarkHistory compares the encoder's lower-memory history (window +
// one block) with the full one that newEncoder keeps, on chunks of the
// sizes a backup cuts (0.6-3 MiB, not only 1 MiB): with the smaller one,
// every block past the first ~1.1 MiB of a chunk moves the window down.
// Both give the same bytes (TestDeterministic); the package comment
// records the results.
func BenchmarkHistory(b *testing.B) {
	sizes := []int{600 << 10, 1 << 20, 1536 << 10, 2560 << 10, 800 << 10, 3 << 20}
	in := inputs(b)
	for _, lv := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault} {
		for _, low := range []bool{true, false} {
			e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(lv), zstd.WithEncoderConcurrency(1),
				zstd.WithEncoderCRC(false), zstd.WithWindowSize(windowSize), zstd.WithLowerEncoderMem(low))
			if err != nil {
				b.Fatal(err)
			}
			for _, name := range []string{"text", "binary"} {
				data, ok := in[name]
				if !ok {
					continue
				}
				b.Run(fmt.Sprintf("%s/lowmem=%v/%s", lv, low, name), func(b *testing.B) {
					b.SetBytes(int64(len(data)))
					var dst []byte
					for b.Loop() {
						for off, i := 0, 0; off < len(data); i++ {
							n := min(sizes[i%len(sizes)], len(data)-off)
							dst = e.EncodeAll(data[off:off+n], dst[:0])
							off += n
						}
					}
				})
			}
		}
	}
}

// withCounts returns sampleSize bytes in which byte b occurs counts[b]
// times, in runs.
func withCounts(counts [256]int) []byte {
	var p []byte
	for b, c := range counts {
		p = append(p, bytes.Repeat([]byte{byte(b)}, c)...)
	}
	if len(p) != sampleSize {
		panic(fmt.Sprintf("counts sum to %d", len(p)))
	}
	return p
}

// countsWithSquares returns counts of sampleSize bytes whose squares sum to
// 65536 + 2*sum(a^2): a pair of bins 16+a and 16-a for each a.
func countsWithSquares(as ...int) [256]int {
	var c [256]int
	for i := range c {
		c[i] = 16
	}
	for i, a := range as {
		c[2*i] += a
		c[2*i+1] -= a
	}
	return c
}

// TestLooksRandom pins the rule of docs/FORMAT.md "Blobs" that counts a
// trial sample as incompressible without compressing it: 67584 <= sum of
// the squares of its byte counts <= 71680.
func TestLooksRandom(t *testing.T) {
	if randomMin != 67584 || randomMax != 71680 {
		t.Fatalf("bounds %d, %d: the format says 67584 and 71680", randomMin, randomMax)
	}
	eights := func(n int, more ...int) []int {
		as := slices.Repeat([]int{8}, n)
		return append(as, more...)
	}
	for _, tc := range []struct {
		name string
		p    []byte
		want bool
	}{
		{"sum 67582", withCounts(countsWithSquares(eights(15, 7, 3, 2, 1)...)), false},
		{"sum 67584", withCounts(countsWithSquares(eights(16)...)), true},
		{"sum 71680", withCounts(countsWithSquares(eights(48)...)), true},
		{"sum 71682", withCounts(countsWithSquares(eights(48, 1)...)), false},
		{"0-255 over and over", bytes.Repeat(func() []byte {
			b := make([]byte, 256)
			for i := range b {
				b[i] = byte(i)
			}
			return b
		}(), 16), false},
		{"text", textCorpus(t, sampleSize), false},
		{"zeros", make([]byte, sampleSize), false},
	} {
		if got := looksRandom(tc.p); got != tc.want {
			t.Errorf("%s: looksRandom = %v, want %v", tc.name, got, tc.want)
		}
	}
	// Random samples: all of these 4096 look random.
	r := randomData(12, 4096*sampleSize)
	for off := 0; off < len(r); off += sampleSize {
		if !looksRandom(r[off : off+sampleSize]) {
			t.Fatalf("random sample at %d does not look random", off)
		}
	}
}

// trialWithoutHistogram is the trial as it was before looksRandom: every
// sample compressed.
func trialWithoutHistogram(l Level, src []byte) ([]byte, bool) {
	zl, _ := l.zstd()
	e := &encoder{Encoder: newEncoder(zl, windowSize)}
	if len(src) > trialSize {
		paid := false
		for i := 0; i < samples && !paid; i++ {
			off := (len(src) - sampleSize) * i / (samples - 1)
			paid = pays(len(e.EncodeAll(src[off:off+sampleSize], nil)), sampleSize)
		}
		if !paid {
			return nil, false
		}
	}
	out := e.EncodeAll(src, nil)
	if len(out) >= len(src) || (len(src) <= trialSize && !pays(len(out), len(src))) {
		return nil, false
	}
	return out, true
}

// sampleRegions returns a blob of n random bytes in which each trial
// sample holds fill(sample).
func sampleRegions(seed uint64, n int, fill func(sample []byte)) []byte {
	b := randomData(seed, n)
	for i := 0; i < samples; i++ {
		off := (n - sampleSize) * i / (samples - 1)
		fill(b[off : off+sampleSize])
	}
	return b
}

// The histogram decides only for samples that look random: the trial of a
// random blob fails, that of a random blob with one compressible sample
// passes, and the edge case of docs/FORMAT.md "Blobs", a random string
// repeated within a sample, fails although zstd would save 1/16 of that
// sample.
func TestTrialRule(t *testing.T) {
	text := textCorpus(t, 1<<20)
	const n = 1 << 20
	at := func(i int) int { return (n - sampleSize) * i / (samples - 1) }
	region := func(off int, fill []byte) []byte {
		b := randomData(13, n)
		copy(b[off:off+sampleSize], fill)
		return b
	}
	// twice: a random string of k bytes, then the same again.
	twice := func(k int) func([]byte) {
		return func(s []byte) { copy(s[k:2*k], s[:k]) }
	}
	fourTimes := func(s []byte) {
		for off := 1 << 10; off < len(s); off += 1 << 10 {
			copy(s[off:off+1<<10], s[:1<<10])
		}
	}
	ramp := func(s []byte) {
		for i := range s {
			s[i] = byte(i)
		}
	}
	for _, tc := range []struct {
		name string
		src  []byte
		want bool
	}{
		{"random", randomData(14, n), false},
		{"random, text at sample 7", region(at(7), text), true},
		{"random, text at the last sample", region(at(samples-1), text), true},
		{"random, text over 3/4 of sample 3", region(at(3)+sampleSize/4, text), true},
		// The counts of 1 KiB of random bytes, times 4, sum to about
		// 81900: not random.
		{"1 KiB random four times in every sample", sampleRegions(15, n, fourTimes), true},
		// Flatter than random: sum 65536.
		{"0-255 over and over in every sample", sampleRegions(16, n, ramp), true},
		// The edge case.
		{"512 random bytes twice in every sample", sampleRegions(17, n, twice(512)), false},
	} {
		for _, l := range compressing {
			zl, _ := l.zstd()
			e := &encoder{Encoder: newEncoder(zl, windowSize)}
			if got := e.samplesPay(tc.src); got != tc.want {
				t.Errorf("%s: %s: trial passes %v, want %v", l, tc.name, got, tc.want)
			}
			// What the trial says is what Compress does (the whole blob
			// must then save something too, which text among random
			// bytes does not always).
			if _, ok := roundTripAt(t, l, tc.src); ok && !tc.want {
				t.Errorf("%s: %s: compressed", l, tc.name)
			}
		}
	}
	// A 4 KiB region of zeros at a sample: the blob is compressed.
	for _, l := range compressing {
		if _, ok := roundTripAt(t, l, region(at(9), make([]byte, sampleSize))); !ok {
			t.Errorf("%s: random with zeros at sample 9: not compressed", l)
		}
	}
	// The edge case is one: the samples look random, yet zstd saves 1/16
	// of each.
	for _, zl := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBetterCompression} {
		s := sampleRegions(17, n, twice(512))[at(5):][:sampleSize]
		if c := newEncoder(zl, windowSize).EncodeAll(s, nil); !looksRandom(s) || !pays(len(c), sampleSize) {
			t.Errorf("%s: 512 bytes twice: looks random %v, %d bytes compressed to %d: not the edge case", zl, looksRandom(s), sampleSize, len(c))
		}
	}
}

// TestTrialAsBefore: on text, a binary, random data, gzip'd text and blobs
// that mix them, the histogram changes no decision and no stored byte
// (docs/FORMAT.md "Blobs" names the data that was measured at scale).
func TestTrialAsBefore(t *testing.T) {
	text := textCorpus(t, 4<<20)
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(textCorpus(t, 16<<20))
	w.Close()
	blobs := [][]byte{randomData(18, 1<<20), randomData(19, 300<<10)}
	for off := 0; off+(1<<20) <= len(text); off += 1 << 20 {
		blobs = append(blobs, text[off:off+1<<20])
	}
	for off := 0; off+(1<<20) <= gz.Len(); off += 1 << 20 {
		blobs = append(blobs, gz.Bytes()[off:off+1<<20])
	}
	if exe, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "pkg", "tool", runtime.GOOS+"_"+runtime.GOARCH, "compile")); err == nil {
		for off := 0; off+(1<<20) <= len(exe) && off < 4<<20; off += 1 << 20 {
			blobs = append(blobs, exe[off:off+1<<20])
		}
	}
	rnd := randomData(20, 1<<20)
	for _, split := range []int{4 << 10, 100 << 10, 512<<10 + 1000, 1<<20 - 70<<10, 1<<20 - 3<<10} {
		blobs = append(blobs,
			append(bytes.Clone(rnd[:split]), text[:1<<20-split]...),
			append(bytes.Clone(text[:split]), rnd[:1<<20-split]...))
	}
	// Random blobs of 100 KiB with 4 KiB of text at every multiple of
	// 512 bytes: some overlap a sample by only as much as it takes to
	// save 1/16 (a few hundred bytes), where the sample's histogram is
	// closest to random data's.
	const small = 100 << 10
	for off := 0; off+sampleSize <= small; off += 512 {
		b := randomData(77, 2<<20)[:small]
		copy(b[off:off+sampleSize], text)
		blobs = append(blobs, b)
	}
	compressed := 0
	for _, l := range compressing {
		for i, b := range blobs {
			want, wantOK := trialWithoutHistogram(l, b)
			got, ok := l.Compress(nil, b)
			if ok != wantOK || !bytes.Equal(got, want) {
				t.Errorf("%s: blob %d (%d bytes): compressed %v to %d bytes, before %v to %d", l, i, len(b), ok, len(got), wantOK, len(want))
			}
			if ok {
				compressed++
			}
		}
	}
	if compressed == 0 || compressed == len(blobs)*len(compressing) {
		t.Fatalf("%d of %d compressed: the inputs do not test the trial", compressed, len(blobs)*len(compressing))
	}
}

// BenchmarkTrial compares the trial of random 1 MiB blobs with and without
// looksRandom: every sample compressed, or every sample's histogram. On
// this benchmark both are fast, because the encoder's tables stay in
// cache; in a backup they do not, and compressing the samples costs about
// 4 times as much (the package comment has the figures of profiled
// backups).
func BenchmarkTrial(b *testing.B) {
	data := randomData(9, 16<<20)
	e := &encoder{Encoder: newEncoder(zstd.SpeedDefault, windowSize)}
	for _, tc := range []struct {
		name  string
		trial func(src []byte) bool
	}{
		{"zstd", func(src []byte) bool {
			for i := 0; i < samples; i++ {
				off := (len(src) - sampleSize) * i / (samples - 1)
				if e.trial = e.EncodeAll(src[off:off+sampleSize], e.trial[:0]); pays(len(e.trial), sampleSize) {
					return true
				}
			}
			return false
		}},
		{"histogram", e.samplesPay},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				for off := 0; off < len(data); off += blobSize {
					if tc.trial(data[off : off+blobSize]) {
						b.Fatal("random data passes the trial")
					}
				}
			}
		})
	}
}
