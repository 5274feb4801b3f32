package repo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
	"github.com/floe-backup/floe/internal/storage/mem"
)

// loadAll reads every range through l and returns each tag's plaintext
// (copied) or error.
func loadAll(t *testing.T, l *BlobLoader, ranges []PackRange) (map[int][]byte, map[int]error) {
	t.Helper()
	got, errs := map[int][]byte{}, map[int]error{}
	for _, rg := range ranges {
		err := l.LoadRange(context.Background(), DataBlob, rg, func(b RangeBlob, plain []byte, err error) error {
			if _, dup := got[b.Tag]; dup {
				t.Fatalf("blob %d handed out twice", b.Tag)
			}
			if err != nil {
				errs[b.Tag] = err
				got[b.Tag] = nil
				return nil
			}
			got[b.Tag] = bytes.Clone(plain)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return got, errs
}

// localRepo makes a repository on a local backend (which reads ranges
// into the loader's buffers) and returns it with its directory.
func localRepo(t *testing.T) (*Repository, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "repo")
	lb, err := local.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	r, _, err := Init(context.Background(), lb, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	return r, dir
}

// streamBackend streams ranges as S3 does (OpenStream); a stream breaks
// off with an error after breakAfter bytes (<0: never).
type streamBackend struct {
	storage.Backend
	breakAfter int64
	opened     int
}

func (b *streamBackend) OpenStream(ctx context.Context, h storage.Handle, offset, length int64) (io.ReadCloser, error) {
	b.opened++
	data, err := b.Load(ctx, h, offset, length)
	if err != nil {
		return nil, err
	}
	var r io.Reader = bytes.NewReader(data)
	if b.breakAfter >= 0 {
		r = io.MultiReader(io.LimitReader(r, b.breakAfter), iotest.ErrReader(errors.New("connection reset")))
	}
	return io.NopCloser(r), nil
}

// wholeStreamBackend is a streamBackend that says whole objects are
// cheaper (S3), and records what it was asked for.
type wholeStreamBackend struct {
	streamBackend
	asked [][2]int64
}

func (b *wholeStreamBackend) WholeObjectsCheaper() bool { return true }

func (b *wholeStreamBackend) OpenStream(ctx context.Context, h storage.Handle, offset, length int64) (io.ReadCloser, error) {
	b.asked = append(b.asked, [2]int64{offset, length})
	return b.streamBackend.OpenStream(ctx, h, offset, length)
}

// exactStreamBackend streams as a floe server does: it records what it
// was asked for and says nothing about whole objects.
type exactStreamBackend struct {
	streamBackend
	asked [][2]int64
}

func (b *exactStreamBackend) OpenStream(ctx context.Context, h storage.Handle, offset, length int64) (io.ReadCloser, error) {
	b.asked = append(b.asked, [2]int64{offset, length})
	return b.streamBackend.OpenStream(ctx, h, offset, length)
}

// A streamed range near a pack's start is asked for as the whole pack
// only from a backend that sends whole objects more cheaply (S3), and
// only when it is long (streamWholeMin); short ones, and every range from
// other backends (a floe server, which over HTTP/2 sends ahead what the
// reader then throws away), exactly as planned.
func TestStreamRangeAsked(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		whole bool
		size  int // of each of seven blobs; the middle five are read
		asked string
	}{
		{true, 10 << 10, "exact"},
		{true, 900 << 10, "whole"},
		{false, 10 << 10, "exact"},
		{false, 900 << 10, "exact"},
	} {
		var be storage.Backend
		var asked func() [][2]int64
		if c.whole {
			w := &wholeStreamBackend{streamBackend: streamBackend{Backend: mem.New(), breakAfter: -1}}
			be, asked = w, func() [][2]int64 { return w.asked }
		} else {
			e := &exactStreamBackend{streamBackend: streamBackend{Backend: mem.New(), breakAfter: -1}}
			be, asked = e, func() [][2]int64 { return e.asked }
		}
		r, _, err := Init(ctx, be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
		if err != nil {
			t.Fatal(err)
		}
		if !r.StreamsRanges() {
			t.Fatal("StreamsRanges false on a streaming backend")
		}
		datas := randomChunks(7, c.size)
		refs := saveFlushed(t, r, datas)
		// the middle five: a range that starts and ends inside the pack
		ranges, _ := r.PlanReads(DataBlob, refs[1:6], RangeLimits{MaxGap: 1 << 10, MaxRange: 1 << 40})
		if len(ranges) != 1 {
			t.Fatalf("want one range, got %d", len(ranges))
		}
		rg := ranges[0]
		if long := c.size > 100<<10; rg.Start > streamSkip || long != (rg.End-rg.Start >= streamWholeMin) {
			t.Fatalf("%+v: range %d-%d does not test what it should", c, rg.Start, rg.End)
		}
		l := r.NewBlobLoader()
		got, errs := loadAll(t, l, ranges)
		l.Close()
		for i := range got {
			if errs[i] != nil || !bytes.Equal(got[i], datas[1+i]) {
				t.Fatalf("%+v: blob %d: %v", c, i, errs[i])
			}
		}
		want := [2]int64{rg.Start, rg.End - rg.Start}
		if c.asked == "whole" {
			want = [2]int64{0, 0}
		}
		if a := asked(); len(a) != 1 || a[0] != want {
			t.Fatalf("%+v: asked for %v, want %v", c, a, want)
		}
	}
}

// streamRepo makes a repository on a backend that streams ranges.
func streamRepo(t *testing.T, breakAfter int64) (*Repository, *streamBackend) {
	t.Helper()
	be := &streamBackend{Backend: mem.New(), breakAfter: breakAfter}
	r, _, err := Init(context.Background(), be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	return r, be
}

// A stream that breaks off in the middle of a range: the blobs read
// before the break come from it, the rest are loaded by themselves, all
// whole; a blob asked for twice is handed out twice.
func TestLoadRangeStreamBreaks(t *testing.T) {
	r, be := streamRepo(t, -1)
	datas := randomChunks(6, 10<<10)
	refs := saveFlushed(t, r, datas)
	ask := append(refs[:3:3], refs[2])
	ask = append(ask, refs[3:]...)
	want := append(datas[:3:3], datas[2])
	want = append(want, datas[3:]...)
	ranges, _ := r.PlanReads(DataBlob, ask, RangeLimits{MaxGap: 1 << 10, MaxRange: 1 << 40})
	if len(ranges) != 1 || len(ranges[0].Blobs) != 7 {
		t.Fatalf("want one range of seven blobs, got %+v", ranges)
	}
	for _, cut := range []int64{-1, 0, int64(ranges[0].Blobs[4].Offset) + 100} {
		be.breakAfter, be.opened = cut, 0
		l := r.NewBlobLoader()
		got, errs := loadAll(t, l, ranges)
		l.Close()
		for i := range ask {
			if errs[i] != nil || !bytes.Equal(got[i], want[i]) {
				t.Fatalf("break after %d: blob %d: %v", cut, i, errs[i])
			}
		}
		if be.opened != 1 {
			t.Fatalf("break after %d: %d streams, want 1", cut, be.opened)
		}
	}
}

// PlanReads coalesces the blobs of a pack within the limits, in offset
// order, and LoadRange hands out exactly what LoadBlob would, on a backend
// that reads ranges into the loader's buffers and on one that does not.
func TestPlanReadsAndLoadRange(t *testing.T) {
	ctx := context.Background()
	lr, _ := localRepo(t)
	mr, _ := newRepo(t)
	sr, _ := streamRepo(t, -1)
	if !sr.StreamsRanges() || mr.StreamsRanges() || lr.StreamsRanges() {
		t.Fatal("StreamsRanges wrong")
	}
	for name, r := range map[string]*Repository{"local": lr, "mem": mr, "stream": sr} {
		t.Run(name, func(t *testing.T) {
			var datas [][]byte
			var refs []hash.Ref
			for i := range 40 {
				d := randomBytes(1000 + i*700)
				if i%3 == 0 {
					d = bytes.Repeat([]byte("compressible "), 50+i*20)
				}
				datas = append(datas, d)
				refs = append(refs, save(t, r, d))
			}
			if err := flush(ctx, r); err != nil {
				t.Fatal(err)
			}
			// asked for in reverse, and every other one, to see sorting
			// and gaps
			var ask []hash.Ref
			var want [][]byte
			for i := len(refs) - 1; i >= 0; i -= 2 {
				ask = append(ask, refs[i])
				want = append(want, datas[i])
			}
			lim := RangeLimits{MaxGap: 4 << 10, MaxRange: 40 << 10, MaxBlobs: 6}
			ranges, unplaced := r.PlanReads(DataBlob, ask, lim)
			if len(unplaced) != 0 {
				t.Fatalf("unplaced %v", unplaced)
			}
			if len(ranges) < 2 || len(ranges) >= len(ask) {
				t.Fatalf("%d ranges for %d blobs: not coalesced as the limits allow", len(ranges), len(ask))
			}
			seen := 0
			for _, rg := range ranges {
				if len(rg.Blobs) > lim.MaxBlobs || (len(rg.Blobs) > 1 && rg.End-rg.Start > lim.MaxRange) {
					t.Fatalf("range %d-%d with %d blobs exceeds the limits", rg.Start, rg.End, len(rg.Blobs))
				}
				for i, b := range rg.Blobs {
					if int64(b.Offset) < rg.Start || int64(b.Offset)+int64(b.Length) > rg.End {
						t.Fatalf("blob outside its range")
					}
					if i > 0 {
						prev := rg.Blobs[i-1]
						if b.Offset < prev.Offset {
							t.Fatal("blobs of a range not in offset order")
						}
						if gap := int64(b.Offset) - int64(prev.Offset) - int64(prev.Length); gap > lim.MaxGap {
							t.Fatalf("gap of %d bytes inside a range", gap)
						}
					}
				}
				seen += len(rg.Blobs)
			}
			if seen != len(ask) {
				t.Fatalf("%d blobs in the ranges, want %d", seen, len(ask))
			}
			l := r.NewBlobLoader()
			defer l.Close()
			for round := 0; round < 2; round++ { // buffers reused
				got, errs := loadAll(t, l, ranges)
				for i := range ask {
					if errs[i] != nil || !bytes.Equal(got[i], want[i]) {
						t.Fatalf("blob %d: %v, content equal %v", i, errs[i], bytes.Equal(got[i], want[i]))
					}
				}
			}
			// A blob the index does not have is not placed; Load says why.
			missing := hash.Ref{ID: hash.ID{1}, Key: hash.ID{2}}
			_, unplaced = r.PlanReads(DataBlob, []hash.Ref{refs[0], missing}, lim)
			if len(unplaced) != 1 || unplaced[0] != 1 {
				t.Fatalf("unplaced = %v, want [1]", unplaced)
			}
			if _, err := l.Load(ctx, DataBlob, missing, nil); !errors.Is(err, ErrBlobNotFound) {
				t.Fatalf("missing blob: %v", err)
			}
		})
	}
}

// A forged copy in the middle of a coalesced range: the blobs around it
// come from the range, the forged one is reported and read from its
// genuine copy, and it is not planned from the forged pack again.
func TestLoadRangeForgedCopyFallsBack(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	datas := [][]byte{randomBytes(20 << 10), randomBytes(30 << 10), randomBytes(25 << 10)}
	var refs []hash.Ref
	for _, d := range datas {
		refs = append(refs, save(t, wo, d))
	}
	if err := flush(ctx, wo); err != nil {
		t.Fatal(err)
	}
	// The attacker's pack: genuine copies of blobs 0 and 2 around garbage
	// under blob 1's ID.
	var body []byte
	var blobs []packfile.Blob
	for i, ref := range refs {
		loc, _ := wo.Index().Lookup(BlobHandle{DataBlob, ref.ID})
		c, err := be.Load(ctx, storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}, int64(loc.Offset), int64(loc.Length))
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			c = bytes.Repeat([]byte{0xee}, len(c))
		}
		blobs = append(blobs, packfile.Blob{Type: DataBlob, ID: ref.ID, Offset: uint32(len(body)), Length: uint32(len(c))})
		body = append(body, c...)
	}
	pack := packfile.AppendHeader(bytes.Clone(body), [packfile.UniqueLen]byte{7}, blobs)
	forged := hash.Sum(pack)
	if err := be.Save(ctx, storage.Handle{Type: storage.Pack, Name: forged.String()}, pack); err != nil {
		t.Fatal(err)
	}
	if _, err := wo.SaveIndexFile(ctx, &IndexFile{Packs: []PackInfo{{ID: forged, Blobs: blobs}}}); err != nil {
		t.Fatal(err)
	}

	// on the backend as it is, and streaming (S3)
	for _, rbe := range []storage.Backend{be, &streamBackend{Backend: be, breakAfter: -1}} {
		r2 := reopen(t, rbe)
		for i, ref := range refs { // prefer the attacker's copies
			r2.idx.markVerified(BlobHandle{DataBlob, ref.ID}, Location{Pack: forged, Offset: blobs[i].Offset})
		}
		ranges, unplaced := r2.PlanReads(DataBlob, refs, RangeLimits{MaxGap: 1 << 10, MaxRange: 1 << 20})
		if len(unplaced) != 0 || len(ranges) != 1 || ranges[0].Pack != forged || len(ranges[0].Blobs) != 3 {
			t.Fatalf("plan: %d ranges (%+v), unplaced %v; want one range of the forged pack", len(ranges), ranges, unplaced)
		}
		l := r2.NewBlobLoader()
		defer l.Close()
		got, errs := loadAll(t, l, ranges)
		for i := range refs {
			if errs[i] != nil || !bytes.Equal(got[i], datas[i]) {
				t.Fatalf("blob %d: %v", i, errs[i])
			}
		}
		if f := r2.ForgedCopies(); len(f) != 1 || f[0].Pack != forged || f[0].Blob.ID != refs[1].ID {
			t.Fatalf("ForgedCopies = %+v, want blob 1 in the forged pack", f)
		}
		ranges, _ = r2.PlanReads(DataBlob, refs[1:2], RangeLimits{MaxGap: 1 << 10, MaxRange: 1 << 20})
		if len(ranges) != 1 || ranges[0].Pack == forged {
			t.Fatal("the forged copy is still planned")
		}
	}
}

// A pack that breaks off in the middle of a range (truncated, or a read
// error): the range read fails, and each blob is read by itself, so those
// before the break are still restored and those after it fail with an
// error, not garbage.
func TestLoadRangePackReadError(t *testing.T) {
	r, dir := localRepo(t)
	datas := randomChunks(6, 10<<10)
	refs := saveFlushed(t, r, datas)
	ranges, _ := r.PlanReads(DataBlob, refs, RangeLimits{MaxGap: 1 << 10, MaxRange: 1 << 20})
	if len(ranges) != 1 || len(ranges[0].Blobs) != 6 {
		t.Fatalf("want one range of six blobs, got %+v", ranges)
	}
	// cut the pack in the middle of the fourth blob
	cut := ranges[0].Blobs[3]
	p := filepath.Join(dir, string(storage.Pack), ranges[0].Pack.String()[:2], ranges[0].Pack.String())
	os.Chmod(p, 0o600)
	if err := os.Truncate(p, int64(cut.Offset)+int64(cut.Length)/2); err != nil {
		t.Fatal(err)
	}
	l := r.NewBlobLoader()
	defer l.Close()
	got, errs := loadAll(t, l, ranges)
	for _, b := range ranges[0].Blobs {
		i := b.Tag
		if b.Offset < cut.Offset {
			if errs[i] != nil || !bytes.Equal(got[i], datas[i]) {
				t.Fatalf("blob %d before the cut: %v", i, errs[i])
			}
		} else if errs[i] == nil {
			t.Fatalf("blob %d after the cut: no error", i)
		}
	}
	if f := r.ForgedCopies(); len(f) != 0 {
		t.Fatalf("a read error is not forgery: %+v", f)
	}
}

// LoadRange decrypts a copy before it hashes it (docs/SECURITY.md "How
// readers verify blobs"): what it hands out is the plaintext whose keyed
// hash is the ref's K, whatever the stored bytes; a copy that does not
// open is read again by itself, which tells a forged copy (reported) from
// a wrong ref (an error, nothing reported). On a local backend the range
// is decrypted in place, so a blob that a range holds twice, or after one
// that failed, is read again too.
func TestLoadRangeVerifiesByKey(t *testing.T) {
	ctx := context.Background()
	text := bytes.Repeat([]byte("restore hands out what K names. "), 2048)
	dirBE, err := local.Create(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	for name, be := range map[string]storage.Backend{"local": dirBE, "mem": mem.New(), "stream": &streamBackend{Backend: mem.New(), breakAfter: -1}} {
		t.Run(name, func(t *testing.T) {
			r, _, err := Init(ctx, be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
			if err != nil {
				t.Fatal(err)
			}
			random := randomBytes(40 << 10)
			ref0, ref1 := save(t, r, text), save(t, r, random)
			if err := flush(ctx, r); err != nil {
				t.Fatal(err)
			}
			// Other stored bytes for the text: its payload stored
			// uncompressed, sealed under its K. Only a holder of K and
			// the plaintext can make such a copy, and it opens to
			// exactly that plaintext.
			other := sealBlob(nil, compress.Off, DataBlob, ref0.Key, text)
			if hash.SumTyped(byte(DataBlob), other) == ref0.ID {
				t.Fatal("the re-encoded copy has the blob's stored bytes")
			}
			blobs := []packfile.Blob{{Type: DataBlob, ID: ref0.ID, Length: uint32(len(other))}}
			pack := packfile.AppendHeader(bytes.Clone(other), [packfile.UniqueLen]byte{5}, blobs)
			pid := hash.Sum(pack)
			if err := be.Save(ctx, storage.Handle{Type: storage.Pack, Name: pid.String()}, pack); err != nil {
				t.Fatal(err)
			}
			if _, err := r.SaveIndexFile(ctx, &IndexFile{Packs: []PackInfo{{ID: pid, Blobs: blobs}}}); err != nil {
				t.Fatal(err)
			}
			r2 := reopen(t, be)
			wrong := hash.Ref{ID: ref1.ID, Key: ref0.Key} // a hostile tree's ref
			ranges, unplaced := r2.PlanReads(DataBlob, []hash.Ref{wrong, ref1, ref1}, RangeLimits{MaxGap: 1 << 20, MaxRange: 1 << 20})
			if len(unplaced) != 0 || len(ranges) != 1 || len(ranges[0].Blobs) != 3 {
				t.Fatalf("plan: %+v, unplaced %v; want one range", ranges, unplaced)
			}
			// and the text from the copy of other bytes
			ranges = append(ranges, PackRange{Pack: pid, Start: 0, End: int64(len(other)),
				Blobs: []RangeBlob{{Ref: ref0, Length: uint32(len(other)), Tag: 3}}})
			l := r2.NewBlobLoader()
			defer l.Close()
			got, errs := loadAll(t, l, ranges)
			if errs[0] == nil || errors.Is(errs[0], ErrForged) {
				t.Fatalf("wrong ref: error %v, want one about the ref", errs[0])
			}
			for i, want := range map[int][]byte{1: random, 2: random, 3: text} {
				if errs[i] != nil || !bytes.Equal(got[i], want) {
					t.Fatalf("blob %d: %v", i, errs[i])
				}
			}
			if f := r2.ForgedCopies(); len(f) != 0 {
				t.Fatalf("nothing forged, got %+v", f)
			}
		})
	}
}

// RangeBytes returns a range's stored bytes to keep, on a backend that
// reads ranges into the loader's buffers, one that loads and one that
// streams; LoadRangeFrom opens the blobs of any range within them, as
// often as asked (the bytes are not decrypted in place), and refuses a
// range they do not cover.
func TestRangeBytesLoadRangeFrom(t *testing.T) {
	ctx := context.Background()
	lr, _ := localRepo(t)
	mr, _ := newRepo(t)
	sr, _ := streamRepo(t, -1)
	for name, r := range map[string]*Repository{"local": lr, "mem": mr, "stream": sr} {
		t.Run(name, func(t *testing.T) {
			datas := randomChunks(8, 3<<10)
			refs := saveFlushed(t, r, datas)
			ranges, _ := r.PlanReads(DataBlob, refs, RangeLimits{MaxGap: 1 << 20, MaxRange: 1 << 30})
			if len(ranges) != 1 {
				t.Fatalf("want one range, got %d", len(ranges))
			}
			whole := ranges[0]
			l := r.NewBlobLoader()
			defer l.Close()
			data, err := l.RangeBytes(ctx, whole)
			if err != nil || int64(len(data)) != whole.End-whole.Start {
				t.Fatalf("RangeBytes: %d bytes, %v", len(data), err)
			}
			kept := bytes.Clone(data)
			// a loader's next range must not overwrite the bytes kept
			if _, err := l.RangeBytes(ctx, PackRange{Pack: whole.Pack, Start: int64(whole.Blobs[1].Offset), End: whole.End, Blobs: whole.Blobs[1:]}); err != nil {
				t.Fatal(err)
			}
			part, _ := r.PlanReads(DataBlob, refs[2:5], RangeLimits{MaxGap: 1 << 20, MaxRange: 1 << 30})
			for round := 0; round < 2; round++ {
				for _, rg := range []PackRange{whole, part[0]} {
					n := 0
					err := l.LoadRangeFrom(ctx, DataBlob, rg, whole.Start, data, func(b RangeBlob, plain []byte, err error) error {
						want := datas[b.Tag]
						if rg.Start != whole.Start {
							want = datas[2+b.Tag]
						}
						if err != nil || !bytes.Equal(plain, want) {
							t.Fatalf("round %d: blob %d: %v", round, b.Tag, err)
						}
						n++
						return nil
					})
					if err != nil || n != len(rg.Blobs) {
						t.Fatalf("round %d: LoadRangeFrom: %d blobs, %v", round, n, err)
					}
				}
			}
			if !bytes.Equal(data, kept) {
				t.Fatal("LoadRangeFrom changed the bytes it was given")
			}
			if err := l.LoadRangeFrom(ctx, DataBlob, whole, whole.Start+1, data, func(RangeBlob, []byte, error) error { return nil }); err == nil {
				t.Fatal("a range the bytes do not cover: no error")
			}
		})
	}
}

// ReadRanges: a backend that opens ranges (a local directory) gets short
// ranges of few blobs, one that streams them (S3, a floe server) ranges
// as long as a pack, and one that does neither (a wrapper that meters
// loads) short ranges of any number of blobs.
func TestReadRanges(t *testing.T) {
	ctx := context.Background()
	dirBE, err := local.Create(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		be       storage.Backend
		want     RangeLimits
		streamed bool
	}{
		{"local", dirBE, localRanges, false},
		{"stream", &streamBackend{Backend: mem.New(), breakAfter: -1}, streamRanges, true},
		{"plain", mem.New(), remoteRanges, false},
	} {
		r, _, err := Init(ctx, tc.be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
		if err != nil {
			t.Fatal(err)
		}
		lim, streamed := r.ReadRanges()
		if lim != tc.want || streamed != tc.streamed || streamed != r.StreamsRanges() {
			t.Errorf("%s: ReadRanges = %+v, %v; want %+v, %v", tc.name, lim, streamed, tc.want, tc.streamed)
		}
		if !streamed && (lim.MaxRange > 4<<20 || lim.MaxRange <= 0) {
			t.Errorf("%s: a range held whole may be %d bytes", tc.name, lim.MaxRange)
		}
	}
}

// smallReads hands out at most n bytes per Read, as a network stream does.
type smallReads struct {
	io.ReadCloser
	n int
}

func (s smallReads) Read(p []byte) (int, error) { return s.ReadCloser.Read(p[:min(len(p), s.n)]) }

type smallReadStreamBackend struct{ streamBackend }

func (b *smallReadStreamBackend) OpenStream(ctx context.Context, h storage.Handle, offset, length int64) (io.ReadCloser, error) {
	rc, err := b.streamBackend.OpenStream(ctx, h, offset, length)
	if err != nil {
		return nil, err
	}
	return smallReads{rc, 16 << 10}, nil
}

// OnFetched hears of a streamed range's bytes read by read, before the
// blob they belong to is delivered: a progress line then moves while a
// large blob is still arriving over a slow link.
func TestLoadRangeCountsFetchedBytes(t *testing.T) {
	be := &smallReadStreamBackend{streamBackend{Backend: mem.New(), breakAfter: -1}}
	r, _, err := Init(context.Background(), be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	datas := randomChunks(3, 256<<10)
	refs := saveFlushed(t, r, datas)
	ranges, _ := r.PlanReads(DataBlob, refs, RangeLimits{MaxGap: 1 << 10, MaxRange: 1 << 40})
	if len(ranges) != 1 {
		t.Fatalf("want one range, got %+v", ranges)
	}
	l := r.NewBlobLoader()
	defer l.Close()
	var fetched, calls int64
	l.OnFetched(func(n int64) { fetched += n; calls++ })
	var atFirst int64 = -1
	err = l.LoadRange(context.Background(), DataBlob, ranges[0], func(b RangeBlob, plain []byte, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if atFirst < 0 {
			atFirst, calls = fetched, 0
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	first := ranges[0].Blobs[0]
	if atFirst < int64(first.Offset)+int64(first.Length)-ranges[0].Start {
		t.Fatalf("when the first blob was delivered %d bytes were counted, want its %d and those before it", atFirst, first.Length)
	}
	if calls < 2 {
		t.Fatalf("the next blobs' bytes were counted in %d calls, want one per read of 16 KiB", calls)
	}
	if want := ranges[0].End - ranges[0].Start; fetched < want {
		t.Fatalf("fetched %d, want at least the range's %d bytes", fetched, want)
	}
	// a loader nobody listens to streams as before
	l2 := r.NewBlobLoader()
	defer l2.Close()
	if err := l2.LoadRange(context.Background(), DataBlob, ranges[0], func(RangeBlob, []byte, error) error { return nil }); err != nil {
		t.Fatal(err)
	}
}
