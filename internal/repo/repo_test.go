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

func testBlobRoundTrip(t *testing.T, streamed bool) {
	ctx := context.Background()
	be := mem.New()
	var sb storage.Backend = be
	if !streamed {
		sb = bufferedBackend{be}
	}
	r, _, err := Init(ctx, sb, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	r.cfg.PackSize = 1 << 20 // several packs
	blobs := map[hash.ID][]byte{}
	for i := 0; i < 40; i++ {
		var data []byte
		if i%2 == 0 {
			data = randomBytes(100 << 10)
		} else {
			data = bytes.Repeat([]byte("compressible text "), 5000+i)
		}
		id := r.BlobID(data)
		isNew, _, err := r.SaveBlob(ctx, DataBlob, id, data)
		if err != nil || !isNew {
			t.Fatalf("SaveBlob %d: new=%v err=%v", i, isNew, err)
		}
		if again, _, _ := r.SaveBlob(ctx, DataBlob, id, data); again {
			t.Fatal("duplicate blob stored twice")
		}
		blobs[id] = data
	}
	if err := r.Flush(ctx); err != nil {
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
	for id, want := range blobs {
		got, err := r2.LoadBlob(ctx, BlobHandle{DataBlob, id}, nil)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("LoadBlob %s: %v", id.Short(), err)
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
	id := r.BlobID(data)
	if _, _, err := r.SaveBlob(ctx, DataBlob, id, data); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	loc, _ := r.Index().Lookup(BlobHandle{DataBlob, id})
	h := storage.Handle{Type: storage.Pack, Name: loc.Pack.String()}
	orig, _ := be.Get(h)
	damaged := bytes.Clone(orig)
	damaged[loc.Offset+100] ^= 0x40
	be.Set(h, damaged)
	if _, err := r.LoadBlob(ctx, BlobHandle{DataBlob, id}, nil); !errors.Is(err, crypto.ErrAuth) {
		t.Fatalf("flipped bit: err = %v, want ErrAuth", err)
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
	fullID := r.BlobID(full)
	r.SaveBlob(ctx, DataBlob, fullID, full)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	snapID, err := r.SaveSnapshotRecord(ctx, []byte(`{"version":1}`))
	if err != nil {
		t.Fatal(err)
	}
	_, kf, err := r.AddKey(ctx, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	wo, err := Open(ctx, be, Credential{KeyFile: kf}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !wo.WriteOnly() {
		t.Fatal("write-only key opened as full")
	}
	if err := wo.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	// It deduplicates against existing data and can add new data...
	if !wo.HasBlob(BlobHandle{DataBlob, fullID}) {
		t.Fatal("write-only key cannot see the index")
	}
	mine := []byte("written with the write-only key")
	mineID := wo.BlobID(mine)
	if mineID != fullID && wo.BlobID(full) != fullID {
		t.Fatal("write-only key names chunks differently")
	}
	if _, _, err := wo.SaveBlob(ctx, DataBlob, mineID, mine); err != nil {
		t.Fatal(err)
	}
	if err := wo.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	woSnap, err := wo.SaveSnapshotRecord(ctx, []byte(`{"version":1}`))
	if err != nil {
		t.Fatal(err)
	}
	// ...but reads nothing, its own data included.
	for _, id := range []hash.ID{fullID, mineID} {
		if _, err := wo.LoadBlob(ctx, BlobHandle{DataBlob, id}, nil); !errors.Is(err, ErrWriteOnly) {
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
	// Even with the secrets in hand, the data private key is not there.
	if wo.secrets.DataPrivate != nil {
		t.Fatal("write-only secrets hold the data private key")
	}
	// The full key reads what the write-only key wrote.
	r2, _ := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
	r2.LoadIndex(ctx)
	if got, err := r2.LoadBlob(ctx, BlobHandle{DataBlob, mineID}, nil); err != nil || !bytes.Equal(got, mine) {
		t.Fatalf("full key reading write-only data: %v", err)
	}
	if _, err := r2.LoadSnapshotRecord(ctx, woSnap); err != nil {
		t.Fatal(err)
	}
}

func TestIndexFileRoundTrip(t *testing.T) {
	f := &IndexFile{Supersedes: []hash.ID{{1}}, Packs: []PackInfo{{ID: hash.ID{2}, Ephemeral: crypto.PublicKey{3},
		Blobs: []PackedBlob{{Type: TreeBlob, ID: hash.ID{4}, Offset: 0, Length: 100, RawLength: 90}, {Type: DataBlob, ID: hash.ID{5}, Offset: 100, Length: 1 << 20, RawLength: 1 << 20}}}}}
	got, err := DecodeIndexFile(encodeIndexFile(f))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Packs) != 1 || len(got.Packs[0].Blobs) != 2 || got.Packs[0].Blobs[1] != f.Packs[0].Blobs[1] || got.Supersedes[0] != f.Supersedes[0] {
		t.Fatalf("round trip: %+v", got)
	}
}

func FuzzDecodeIndexFile(f *testing.F) {
	f.Add(encodeIndexFile(&IndexFile{Packs: []PackInfo{{Blobs: []PackedBlob{{Length: 40, RawLength: 3}}}}}))
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := DecodeIndexFile(data)
		if err != nil {
			return
		}
		again, err := DecodeIndexFile(encodeIndexFile(idx))
		if err != nil || len(again.Packs) != len(idx.Packs) {
			t.Fatalf("re-encoded index does not decode: %v", err)
		}
	})
}

func FuzzDecodePackHeader(f *testing.F) {
	f.Add(encodePackHeader(&PackHeader{Blobs: []PackedBlob{{Length: 40, RawLength: 3}}}), int64(40))
	f.Add([]byte{1}, int64(0))
	f.Fuzz(func(t *testing.T, data []byte, body int64) {
		h, err := DecodePackHeader(data, body)
		if err != nil {
			return
		}
		var end int64
		for _, b := range h.Blobs {
			end += int64(b.Length)
		}
		if end != body {
			t.Fatalf("accepted header covering %d of %d bytes", end, body)
		}
	})
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

// FuzzLoadGCMark seals fuzzed plaintext as a gc mark, so the decoder
// behind the authentication is exercised: it must fail cleanly, never panic.
func FuzzLoadGCMark(f *testing.F) {
	ctx := context.Background()
	r, be := newRepo(f)
	f.Add([]byte(`{"time":"2026-11-21T00:00:00Z","packs":["` + hash.ID{1}.String() + `"]}`))
	f.Add([]byte(`{"packs":[1,2,3]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, plain []byte) {
		data := r.meta.Seal(nil, plain, []byte(adGCMark))
		id := hash.Sum(data)
		be.Set(storage.Handle{Type: storage.GCMark, Name: id.String()}, data)
		r.LoadGCMark(ctx, id)
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
