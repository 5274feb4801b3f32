package repo

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
)

// scanRepos returns an empty repository on a local backend (range reads)
// and one on the memory backend (whole loads), to run a test on both of
// PackScanner's paths.
func scanRepos(t testing.TB) map[string]*Repository {
	t.Helper()
	lb, err := local.Create(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	lr, _, err := Init(context.Background(), lb, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := lr.Backend().(storage.RangeOpener); !ok {
		t.Fatal("the local backend no longer reads ranges: this test would not cover the windowed path")
	}
	mr, _ := newRepo(t)
	return map[string]*Repository{"local": lr, "mem": mr}
}

// storeRawPack stores a pack of the given stored blob bytes (IDs computed
// from them, type data) and returns its ID, its bytes and its entries.
func storeRawPack(t testing.TB, r *Repository, blobs [][]byte) (hash.ID, []byte, []PackedBlob) {
	t.Helper()
	var body []byte
	var entries []PackedBlob
	for _, c := range blobs {
		entries = append(entries, PackedBlob{Type: DataBlob, ID: packfile.BlobID(DataBlob, c), Offset: uint32(len(body)), Length: uint32(len(c))})
		body = append(body, c...)
	}
	data := packfile.AppendHeader(body, [packfile.UniqueLen]byte{1}, entries)
	id := hash.Sum(data)
	if err := r.Backend().Save(context.Background(), storage.Handle{Type: storage.Pack, Name: id.String()}, data); err != nil {
		t.Fatal(err)
	}
	return id, data, entries
}

type scanned struct {
	b   PackedBlob
	c   []byte
	err error
}

func scanAll(t testing.TB, s *PackScanner, id hash.ID, blobs []PackedBlob, whole bool) ([]scanned, ScanResult, error) {
	t.Helper()
	var got []scanned
	fn := func(b PackedBlob, c []byte, err error) error {
		got = append(got, scanned{b, slices.Clone(c), err})
		return nil
	}
	if whole {
		res, err := s.Scan(context.Background(), id, blobs, true, fn)
		return got, res, err
	}
	err := s.Blobs(context.Background(), id, blobs, fn)
	return got, ScanResult{}, err
}

// TestPackScanner reads packs whose blobs straddle the scanner's windows,
// with damaged, duplicated, overlapping and truncated entries, on both
// paths, and checks every blob's bytes and verdict and the pack's hash.
func TestPackScanner(t *testing.T) {
	for name, r := range scanRepos(t) {
		t.Run(name, func(t *testing.T) {
			var blobs [][]byte
			for i := range 40 {
				blobs = append(blobs, randomBytes(1+i*97%3000))
			}
			id, data, entries := storeRawPack(t, r, blobs)
			s := r.NewPackScanner()
			s.window, s.gap = 1000, 500
			for round := range 2 { // the second reuses the buffers
				got, res, err := scanAll(t, s, id, entries, true)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				if res.Sum != id || res.Size != int64(len(data)) {
					t.Fatalf("round %d: sum %s size %d, want %s %d", round, res.Sum.Short(), res.Size, id.Short(), len(data))
				}
				if len(got) != len(entries) {
					t.Fatalf("round %d: %d blobs, want %d", round, len(got), len(entries))
				}
				for i, g := range got {
					if g.err != nil || g.b != entries[i] || !bytes.Equal(g.c, blobs[i]) {
						t.Fatalf("round %d blob %d: err %v, entry %v, bytes equal %v", round, i, g.err, g.b == entries[i], bytes.Equal(g.c, blobs[i]))
					}
				}
			}

			// Without hashing the pack: the same verdicts, no sum.
			var n int
			res0, err := s.Scan(context.Background(), id, entries, false, func(b PackedBlob, c []byte, err error) error {
				if err != nil || !bytes.Equal(c, blobs[n]) {
					t.Fatalf("blob %d without the pack hash: %v", n, err)
				}
				n++
				return nil
			})
			if err != nil || n != len(entries) || !res0.Sum.IsNull() || res0.Size != int64(len(data)) {
				t.Fatalf("without the pack hash: %v, %d blobs, sum %s, size %d", err, n, res0.Sum.Short(), res0.Size)
			}

			// Hostile entries: a duplicate, one whose bytes are another's,
			// one overlapping two blobs, one past the end.
			hostile := slices.Clone(entries)
			hostile = append(hostile, entries[3])
			hostile = append(hostile, PackedBlob{Type: DataBlob, ID: entries[5].ID, Offset: entries[6].Offset, Length: entries[6].Length})
			hostile = append(hostile, PackedBlob{Type: DataBlob, ID: hash.ID{9}, Offset: entries[7].Offset + 1, Length: entries[8].Length + entries[9].Length})
			hostile = append(hostile, PackedBlob{Type: DataBlob, ID: hash.ID{8}, Offset: uint32(len(data)) - 10, Length: 11})
			rand.Shuffle(len(hostile), func(i, j int) { hostile[i], hostile[j] = hostile[j], hostile[i] })
			got, res, err := scanAll(t, s, id, hostile, true)
			if err != nil || res.Sum != id {
				t.Fatalf("hostile entries: %v, sum %s", err, res.Sum.Short())
			}
			if len(got) != len(entries)+3 {
				t.Fatalf("hostile entries: %d calls, want %d (the duplicate once)", len(got), len(entries)+3)
			}
			last := got[len(got)-1]
			if last.b.ID != (hash.ID{8}) || last.err == nil || !strings.Contains(last.err.Error(), "past the end") || last.c != nil {
				t.Fatalf("the entry past the end is reported last as truncated, got %v: %v", last.b, last.err)
			}
			forged := 0
			for _, g := range got[:len(got)-1] {
				if g.err != nil {
					if !errors.Is(g.err, ErrForged) {
						t.Fatalf("%v: %v, want ErrForged", g.b, g.err)
					}
					forged++
				}
			}
			if forged != 2 {
				t.Fatalf("%d entries forged, want 2", forged)
			}

			// Blobs reads only what is asked for, across gaps.
			want := []PackedBlob{entries[0], entries[1], entries[20], entries[39], entries[25]}
			got, _, err = scanAll(t, s, id, want, false)
			if err != nil || len(got) != len(want) {
				t.Fatalf("Blobs: %v, %d blobs", err, len(got))
			}
			for _, g := range got {
				i := slices.Index(entries, g.b)
				if g.err != nil || !bytes.Equal(g.c, blobs[i]) {
					t.Fatalf("Blobs: blob %d: %v", i, g.err)
				}
			}
			for i := 1; i < len(got); i++ {
				if got[i].b.Offset < got[i-1].b.Offset {
					t.Fatal("Blobs: not in offset order")
				}
			}

			// A flipped bit: the blob is forged, the pack does not match its
			// name, the others are intact.
			bad := slices.Clone(data)
			bad[entries[10].Offset+3] ^= 1
			badID := hash.Sum(bad)
			if err := r.Backend().Save(context.Background(), storage.Handle{Type: storage.Pack, Name: badID.String()}, bad); err != nil {
				t.Fatal(err)
			}
			got, res, err = scanAll(t, s, badID, entries, true)
			if err != nil {
				t.Fatal(err)
			}
			if res.Sum != badID {
				t.Fatal("sum of the damaged pack's bytes is wrong")
			}
			for i, g := range got {
				if (g.err != nil) != (i == 10) {
					t.Fatalf("damaged pack, blob %d: %v", i, g.err)
				}
			}

			// fn's error stops the scan
			stop := errors.New("stop")
			calls := 0
			_, err = s.Scan(context.Background(), id, entries, false, func(PackedBlob, []byte, error) error { calls++; return stop })
			if !errors.Is(err, stop) || calls != 1 {
				t.Fatalf("fn's error: %v after %d calls", err, calls)
			}
			// a missing pack is an error
			if _, err := s.Scan(context.Background(), hash.ID{7}, entries, true, func(PackedBlob, []byte, error) error { return nil }); !storage.IsNotExist(err) {
				t.Fatalf("missing pack: %v", err)
			}
		})
	}
}

// TestPackScannerOpen decrypts what a Writer stored, through Scan and
// Open, and refuses a ref with another key or ID.
func TestPackScannerOpen(t *testing.T) {
	ctx := context.Background()
	for name, r := range scanRepos(t) {
		t.Run(name, func(t *testing.T) {
			var datas [][]byte
			refs := map[hash.ID]hash.Ref{}
			for i := range 12 {
				d := randomBytes(100 + i*1500)
				if i%3 == 0 {
					d = bytes.Repeat([]byte("compressible "), 50+i*40)
				}
				datas = append(datas, d)
				ref := save(t, r, d)
				refs[ref.ID] = ref
			}
			if err := flush(ctx, r); err != nil {
				t.Fatal(err)
			}
			plain := map[hash.ID][]byte{}
			for _, d := range datas {
				plain[r.BlobKey(d)] = d
			}
			packs := map[hash.ID][]PackedBlob{}
			for id := range refs {
				loc, _ := r.Index().Lookup(BlobHandle{DataBlob, id})
				packs[loc.Pack] = append(packs[loc.Pack], PackedBlob{Type: DataBlob, ID: id, Offset: loc.Offset, Length: loc.Length})
			}
			s := r.NewPackScanner()
			s.window = 2000
			opened := 0
			for pack, blobs := range packs {
				res, err := s.Scan(ctx, pack, blobs, true, func(b PackedBlob, c []byte, err error) error {
					if err != nil {
						return err
					}
					ref := refs[b.ID]
					p, err := s.Open(b, ref, c)
					if err != nil {
						return err
					}
					if !bytes.Equal(p, plain[ref.Key]) {
						t.Errorf("blob %s: wrong plaintext", b.ID.Short())
					}
					opened++
					if _, err := s.Open(b, hash.Ref{ID: b.ID, Key: hash.ID{1}}, c); err == nil {
						t.Errorf("blob %s opens with another key", b.ID.Short())
					}
					if _, err := s.Open(b, hash.Ref{ID: hash.ID{2}, Key: ref.Key}, c); err == nil {
						t.Errorf("blob %s opens with a ref to another blob", b.ID.Short())
					}
					return nil
				})
				if err != nil || res.Sum != pack {
					t.Fatalf("pack %s: %v (sum %s)", pack.Short(), err, res.Sum.Short())
				}
			}
			if opened != len(datas) {
				t.Fatalf("opened %d blobs, want %d", opened, len(datas))
			}
		})
	}
}

// FuzzPackScanner scans a pack of blobs with entries made from the input
// (any offsets and lengths, any order, tiny windows) and checks every
// verdict against hashing the entry's bytes directly.
func FuzzPackScanner(f *testing.F) {
	f.Add([]byte{0, 0, 10, 0, 10, 0, 5, 0}, uint8(7), uint8(3))
	f.Add([]byte{0, 1, 0xff, 0xff, 3, 0, 200, 0, 0, 0, 0, 0}, uint8(1), uint8(1))
	repos := scanRepos(f)
	var blobs [][]byte
	for i := range 16 {
		blobs = append(blobs, randomBytes(1+i*37))
	}
	var id hash.ID
	var data []byte
	var entries []PackedBlob
	var scanners []*PackScanner
	for _, r := range repos {
		id, data, entries = storeRawPack(f, r, blobs) // the same pack in both
		scanners = append(scanners, r.NewPackScanner())
	}
	f.Fuzz(func(t *testing.T, spec []byte, window, gap uint8) {
		list := slices.Clone(entries)
		for len(spec) >= 4 {
			off := binary.LittleEndian.Uint16(spec)
			n := binary.LittleEndian.Uint16(spec[2:])
			spec = spec[4:]
			e := PackedBlob{Type: DataBlob, Offset: uint32(off), Length: uint32(n)}
			if end := int(off) + int(n); end <= len(data) {
				e.ID = packfile.BlobID(DataBlob, data[off:end]) // some hostile entries are right
				if n%2 == 1 {
					e.ID[0] ^= 1
				}
			}
			list = append(list, e)
		}
		for _, s := range scanners {
			s.window, s.gap = int64(window)+1, int64(gap)
			fuzzScan(t, s, id, data, list)
		}
	})
}

// fuzzScan checks one scanner's verdicts on list against hashing the
// entries' bytes directly, reading the whole pack and only the blobs.
func fuzzScan(t *testing.T, s *PackScanner, id hash.ID, data []byte, list []PackedBlob) {
	{
		for _, whole := range []bool{true, false} {
			seen := map[PackedBlob]bool{}
			res, err := s.read(context.Background(), id, list, whole, whole, func(b PackedBlob, c []byte, err error) error {
				if seen[b] {
					t.Fatalf("%v reported twice", b)
				}
				seen[b] = true
				end := int(b.Offset) + int(b.Length)
				switch {
				case end > len(data):
					if err == nil {
						t.Fatalf("%v past the end is not an error", b)
					}
				case !bytes.Equal(c, data[b.Offset:end]):
					t.Fatalf("%v: wrong bytes", b)
				case (packfile.BlobID(DataBlob, c) == b.ID) != (err == nil):
					t.Fatalf("%v: verdict %v", b, err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if whole && res.Sum != id {
				t.Fatalf("sum %s, want %s", res.Sum.Short(), id.Short())
			}
			for _, b := range list {
				if !seen[b] {
					t.Fatalf("%v not reported", b)
				}
			}
		}
	}
}

// countingRanges counts the bytes read through a RangeOpener.
type countingRanges struct {
	storage.RangeOpener
	n *int64
}

func (c countingRanges) OpenRange(ctx context.Context, h storage.Handle) (storage.ObjectReader, error) {
	o, err := c.RangeOpener.OpenRange(ctx, h)
	if err != nil {
		return nil, err
	}
	return countingReader{o, c.n}, nil
}

type countingReader struct {
	storage.ObjectReader
	n *int64
}

func (c countingReader) ReadAt(p []byte, off int64) (int, error) {
	got, err := c.ObjectReader.ReadAt(p, off)
	*c.n += int64(got)
	return got, err
}

// TestPackScannerBlobsSkipsGaps: on a backend that reads ranges, Blobs
// reads the wanted blobs and not the unwanted ones between them (prune's
// repack reads packs that are half garbage), and still verifies them.
func TestPackScannerBlobsSkipsGaps(t *testing.T) {
	r := scanRepos(t)["local"]
	var blobs [][]byte
	for range 8 {
		blobs = append(blobs, randomBytes(100<<10))
	}
	id, _, entries := storeRawPack(t, r, blobs)
	s := r.NewPackScanner()
	var n int64
	s.ranges = countingRanges{s.ranges, &n}
	want := []PackedBlob{entries[0], entries[3], entries[4], entries[7]}
	var got int
	err := s.Blobs(context.Background(), id, want, func(b PackedBlob, c []byte, err error) error {
		if err != nil {
			t.Errorf("%v: %v", b, err)
		}
		if !bytes.Equal(c, blobs[slices.Index(entries, b)]) {
			t.Errorf("%v: wrong bytes", b)
		}
		got++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != len(want) {
		t.Fatalf("%d blobs reported, want %d", got, len(want))
	}
	if n != 4*100<<10 {
		t.Fatalf("read %d bytes for 4 blobs of 100 KiB with gaps of 200 KiB and more between them", n)
	}
}
