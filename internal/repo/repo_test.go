package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
)

func cheapKDF() *crypto.KDFParams {
	return &crypto.KDFParams{Time: 1, MemoryKiB: 8 * 1024, Threads: 1, Salt: make([]byte, 16)}
}

func newRepo(t testing.TB) (*Repository, *mem.Backend) {
	t.Helper()
	be := mem.New()
	r, _, err := Init(context.Background(), be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	return r, be
}

// save stores data as a data blob and returns its ref.
func save(t testing.TB, r *Repository, data []byte) hash.Ref {
	t.Helper()
	ref, _, _, err := writerOf(r).SaveBlob(context.Background(), DataBlob, r.BlobKey(data), data)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// writerOf returns the Writer that save and SaveBlob in these tests use
// for r, started on first use and ended by flush.
func writerOf(r *Repository) *Writer {
	r.wmu.Lock()
	for w := range r.writers {
		r.wmu.Unlock()
		return w
	}
	r.wmu.Unlock()
	return r.StartWriting()
}

// flush finishes r's writers.
func flush(ctx context.Context, r *Repository) error {
	r.wmu.Lock()
	var ws []*Writer
	for w := range r.writers {
		ws = append(ws, w)
	}
	r.wmu.Unlock()
	for _, w := range ws {
		if err := w.Finish(ctx); err != nil {
			return err
		}
	}
	return nil
}

// saveFlushed saves each of datas as a data blob and flushes the packs
// and index: their refs, in order.
func saveFlushed(t testing.TB, r *Repository, datas [][]byte) []hash.Ref {
	t.Helper()
	refs := make([]hash.Ref, len(datas))
	for i, d := range datas {
		refs[i] = save(t, r, d)
	}
	if err := flush(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return refs
}

// randomChunks returns n random byte slices of size bytes each.
func randomChunks(n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = randomBytes(size)
	}
	return out
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestOpenCredentials(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	if _, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{}); err != nil {
		t.Fatalf("open with the right password: %v", err)
	}
	if _, err := Open(ctx, be, Credential{Password: []byte("wrong")}, OpenOptions{}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong password: err = %v, want ErrWrongKey", err)
	}
	if _, err := Open(ctx, mem.New(), Credential{Password: []byte("pw")}, OpenOptions{}); !errors.Is(err, ErrNoRepository) {
		t.Fatalf("empty backend: err = %v, want ErrNoRepository", err)
	}
	// key file key
	_, kf, err := r.AddKey(ctx, nil, false)
	if err != nil || kf == nil {
		t.Fatalf("AddKey: %v", err)
	}
	r2, err := Open(ctx, be, Credential{KeyFile: kf}, OpenOptions{})
	if err != nil || r2.WriteOnly() {
		t.Fatalf("open with key file: %v", err)
	}
	bad := *kf
	bad.Secret = randomBytes(32)
	if _, err := Open(ctx, be, Credential{KeyFile: &bad}, OpenOptions{}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key file secret: %v", err)
	}
	// the key in use cannot be removed; another can
	if _, err := r.RemoveKey(ctx, r.KeyID()); err == nil {
		t.Fatal("removed the key in use")
	}
	if _, err := r.RemoveKey(ctx, kf.Key[:10]); err != nil {
		t.Fatalf("RemoveKey: %v", err)
	}
	if _, err := Open(ctx, be, Credential{KeyFile: kf}, OpenOptions{}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("removed key file still opens: %v", err)
	}
}

func TestChangePassword(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	r.kdf = *cheapKDF()
	if _, err := r.ChangePassword(ctx, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("old password still works: %v", err)
	}
	if _, err := Open(ctx, be, Credential{Password: []byte("new")}, OpenOptions{}); err != nil {
		t.Fatalf("new password: %v", err)
	}
}

// bufferedBackend hides the backend's StreamSaver, so packs are built in
// memory (as for backends that cannot stream).
type bufferedBackend struct{ storage.Backend }

func TestBlobRoundTripAndReopen(t *testing.T) {
	for _, streamed := range []bool{true, false} {
		t.Run(fmt.Sprintf("streamed=%v", streamed), func(t *testing.T) { testBlobRoundTrip(t, streamed) })
	}
}

// newSmallPackRepo makes a repository of 1 MiB packs on a memory backend
// that streams packs, or (!streamed) takes them whole.
func newSmallPackRepo(t *testing.T, streamed bool) (*Repository, *mem.Backend) {
	t.Helper()
	be := mem.New()
	var sb storage.Backend = be
	if !streamed {
		sb = bufferedBackend{be}
	}
	r, _, err := Init(context.Background(), sb, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	r.cfg.PackSize = 1 << 20
	return r, be
}

func testBlobRoundTrip(t *testing.T, streamed bool) {
	ctx := context.Background()
	r, be := newSmallPackRepo(t, streamed) // several packs
	blobs := map[hash.Ref][]byte{}
	for i := 0; i < 40; i++ {
		var data []byte
		if i%2 == 0 {
			data = randomBytes(100 << 10)
		} else {
			data = bytes.Repeat([]byte("compressible text "), 5000+i)
		}
		ref, isNew, _, err := writerOf(r).SaveBlob(ctx, DataBlob, r.BlobKey(data), data)
		if err != nil || !isNew {
			t.Fatalf("SaveBlob %d: new=%v err=%v", i, isNew, err)
		}
		if again, isNew, _, _ := writerOf(r).SaveBlob(ctx, DataBlob, r.BlobKey(data), data); isNew || again != ref {
			t.Fatal("duplicate blob stored twice, or named differently")
		}
		// convergent: the same plaintext always gives the same stored bytes
		if sealBlob(nil, compress.Auto, DataBlob, ref.Key, data); StoredBlobID(DataBlob, sealBlob(nil, compress.Auto, DataBlob, ref.Key, data)) != ref.ID {
			t.Fatal("sealing is not deterministic")
		}
		blobs[ref] = data
	}
	if err := flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	st := r.SavedStats()
	if st.Blobs != 40 || st.Packs < 2 || st.StoredBytes >= st.RawBytes {
		t.Fatalf("stats %+v: want 40 blobs, several packs, compression", st)
	}
	r2, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	for ref, want := range blobs {
		got, err := r2.LoadBlob(ctx, DataBlob, ref, nil)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("LoadBlob %s: %v", ref.Short(), err)
		}
		// a ref with another key does not open it
		bad := ref
		bad.Key[0] ^= 1
		if _, err := r2.LoadBlob(ctx, DataBlob, bad, nil); err == nil {
			t.Fatal("LoadBlob with a wrong key succeeded")
		}
	}
	// every pack header agrees with the index
	for _, p := range r2.Index().Packs() {
		fi, err := be.Stat(ctx, storage.Handle{Type: storage.Pack, Name: p.String()})
		if err != nil {
			t.Fatal(err)
		}
		hdr, err := r2.LoadPackHeader(ctx, p, fi.Size)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range hdr.Blobs {
			loc, ok := r2.Index().Lookup(BlobHandle{b.Type, b.ID})
			if !ok || loc.Pack != p || loc.Offset != b.Offset || loc.Length != b.Length {
				t.Fatalf("header entry %+v disagrees with index %+v", b, loc)
			}
		}
	}
}

func TestDamageIsDetected(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	data := randomBytes(50 << 10)
	ref := save(t, r, data)
	if err := flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	loc, _ := r.Index().Lookup(BlobHandle{DataBlob, ref.ID})
	h := storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}
	orig, _ := be.Get(h)
	damaged := bytes.Clone(orig)
	damaged[loc.Offset+100] ^= 0x40
	be.Set(h, damaged)
	if _, err := r.LoadBlob(ctx, DataBlob, ref, nil); !errors.Is(err, ErrForged) {
		t.Fatalf("flipped bit: err = %v, want ErrForged", err)
	}
	if f := r.ForgedCopies(); len(f) != 1 || f[0].Pack != loc.Pack {
		t.Fatalf("ForgedCopies = %+v", f)
	}
	be.Set(h, orig[:len(orig)-3])
	if _, err := r.LoadPackHeader(ctx, loc.Pack, int64(len(orig)-3)); err == nil {
		t.Fatal("truncated pack header accepted")
	}
}

func TestWriteOnlyKey(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	full := []byte("written with the full key")
	fullRef := save(t, r, full)
	if err := flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	snapID, err := r.SaveSnapshotRecord(ctx, []byte(`{"version":1}`))
	if err != nil {
		t.Fatal(err)
	}
	wo := writeOnly(t, r, be)
	if !wo.WriteOnly() {
		t.Fatal("write-only key opened as full")
	}
	// It deduplicates against existing data and can add new data...
	if !wo.HasBlob(BlobHandle{DataBlob, fullRef.ID}) {
		t.Fatal("write-only key cannot see the index")
	}
	if again, isNew, _, err := writerOf(wo).SaveBlob(ctx, DataBlob, wo.BlobKey(full), full); err != nil || isNew || again != fullRef {
		t.Fatalf("write-only key does not deduplicate against the full key's blob: %v %v", isNew, err)
	}
	mine := []byte("written with the write-only key")
	mineRef := save(t, wo, mine)
	if err := flush(ctx, wo); err != nil {
		t.Fatal(err)
	}
	woSnap, err := wo.SaveSnapshotRecord(ctx, []byte(`{"version":1}`))
	if err != nil {
		t.Fatal(err)
	}
	// ...but reads nothing, its own data included.
	for _, ref := range []hash.Ref{fullRef, mineRef} {
		if _, err := wo.LoadBlob(ctx, DataBlob, ref, nil); !errors.Is(err, ErrWriteOnly) {
			t.Fatalf("write-only LoadBlob: %v", err)
		}
	}
	for _, id := range []hash.ID{snapID, woSnap} {
		if _, err := wo.LoadSnapshotRecord(ctx, id); !errors.Is(err, ErrWriteOnly) {
			t.Fatalf("write-only LoadSnapshotRecord: %v", err)
		}
	}
	if _, _, err := wo.AddKey(ctx, nil, false); !errors.Is(err, ErrWriteOnly) {
		t.Fatalf("write-only key added a full key: %v", err)
	}
	// Even with the secrets in hand, the private keys are not there.
	if wo.secrets.DataPrivate != nil || wo.secrets.AuthorityPrivate != nil || wo.Authority() {
		t.Fatal("write-only secrets hold a private key")
	}
	// The full key reads what the write-only key wrote.
	r2, _ := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
	r2.LoadIndex(ctx)
	if got, err := r2.LoadBlob(ctx, DataBlob, mineRef, nil); err != nil || !bytes.Equal(got, mine) {
		t.Fatalf("full key reading write-only data: %v", err)
	}
	if _, err := r2.LoadSnapshotRecord(ctx, woSnap); err != nil {
		t.Fatal(err)
	}
}

func TestIndexFileSignature(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	f := &IndexFile{Supersedes: []hash.ID{{1}}, Packs: []PackInfo{{ID: hash.ID{2},
		Blobs: []PackedBlob{{Type: TreeBlob, ID: hash.ID{4}, Offset: 0, Length: 100}}}}}
	id, err := r.SaveIndexFile(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.LoadIndexFile(ctx, id)
	if err != nil || !got.Trusted || len(got.Packs) != 1 || got.Supersedes[0] != (hash.ID{1}) {
		t.Fatalf("signed index: %+v, %v", got, err)
	}
	// a flipped signature bit is an error, not a quiet downgrade
	data, _ := be.Get(storage.Handle{Type: storage.Index, Name: id.String()})
	data = bytes.Clone(data)
	data[len(data)-1] ^= 1
	if _, err := r.DecodeIndexFile(data); err == nil {
		t.Fatal("a bad signature was accepted")
	}
}

// FuzzOpen feeds damaged config and key objects to Open: it must fail
// cleanly, never panic.
func FuzzOpen(f *testing.F) {
	ctx := context.Background()
	be := mem.New()
	_, _, err := Init(ctx, be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		f.Fatal(err)
	}
	var keyName string
	be.List(ctx, storage.Key, func(fi storage.FileInfo) error { keyName = fi.Name; return nil })
	cfg, _ := be.Get(storage.Handle{Type: storage.Config})
	key, _ := be.Get(storage.Handle{Type: storage.Key, Name: keyName})
	f.Add(cfg, key)
	f.Add([]byte{}, []byte("{}"))
	f.Fuzz(func(t *testing.T, cfgBytes, keyBytes []byte) {
		var rec KeyRecord
		if json.Unmarshal(keyBytes, &rec) == nil && rec.Argon2 != nil && (rec.Argon2.MemoryKiB > 64*1024 || rec.Argon2.Time > 3) {
			return // valid but slow parameters: not what this target explores
		}
		b := mem.New()
		b.Set(storage.Handle{Type: storage.Config}, cfgBytes)
		b.Set(storage.Handle{Type: storage.Key, Name: hash.Sum(keyBytes).String()}, keyBytes)
		Open(ctx, b, Credential{Password: []byte("pw")}, OpenOptions{})
	})
}

// FuzzLoadGCMark signs fuzzed plaintext as a gc mark, so the decoder
// behind the signature is exercised, and also feeds it unsigned: it must
// fail cleanly, never panic, and never accept an unsigned mark.
func FuzzLoadGCMark(f *testing.F) {
	ctx := context.Background()
	r, be := newRepo(f)
	f.Add([]byte(`{"time":"2026-11-21T00:00:00Z","packs":["` + hash.ID{1}.String() + `"]}`))
	f.Add([]byte(`{"packs":[1,2,3]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, plain []byte) {
		data := append(bytes.Clone(plain), r.secrets.AuthorityPrivate.Sign(domainGCMark, plain)...)
		id := hash.Sum(data)
		be.Set(storage.Handle{Type: storage.GCMark, Name: id.String()}, data)
		r.LoadGCMark(ctx, id)
		if _, err := r.DecodeGCMark(plain); err == nil {
			t.Fatal("an unsigned mark was accepted")
		}
	})
}

// FuzzDecodeIndexFile: a stored index file of any content gives an error or
// an index, never a panic, and is trusted only with a valid signature.
func FuzzDecodeIndexFile(f *testing.F) {
	r, _ := newRepo(f)
	signed, _ := r.encodeIndexFile(&IndexFile{Packs: []PackInfo{{Blobs: []PackedBlob{{Length: 40}}}}})
	f.Add(signed)
	f.Add([]byte("FLIX\x02\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := r.DecodeIndexFile(data)
		if err == nil && x.Trusted && !bytes.Equal(data, signed) {
			// only the one file signed here can verify
			t.Fatal("a fuzzed index file verified")
		}
	})
}

// FuzzReadKeyFile: a local key file of any content gives an error or a
// valid key file, never a panic.
func FuzzReadKeyFile(f *testing.F) {
	f.Add([]byte(`{"version":1,"repository":"x","key":"` + hash.ID{2}.String() + `","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`))
	f.Add([]byte(`{}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, content []byte) {
		p := filepath.Join(dir, "key")
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		kf, err := ReadKeyFile(p)
		if err == nil && (len(kf.Secret) != 32 || kf.Version != 1) {
			t.Fatalf("accepted an invalid key file: %+v", kf)
		}
	})
}

// A config that does not verify is told apart from a wrong password by
// ErrDamagedConfig, not by its message.
func TestDamagedConfig(t *testing.T) {
	ctx := context.Background()
	_, be := newRepo(t)
	if _, err := Open(ctx, be, Credential{Password: []byte("wrong")}, OpenOptions{}); errors.Is(err, ErrDamagedConfig) || !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong password: %v", err)
	}
	h := storage.Handle{Type: storage.Config}
	orig, _ := be.Get(h)
	for name, damage := range map[string][]byte{
		"flipped":   append(append([]byte(nil), orig[:20]...), append([]byte{orig[20] ^ 1}, orig[21:]...)...),
		"truncated": orig[:10],
	} {
		be.Set(h, damage)
		if _, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{}); !errors.Is(err, ErrDamagedConfig) {
			t.Fatalf("%s config: %v, want ErrDamagedConfig", name, err)
		}
	}
}
