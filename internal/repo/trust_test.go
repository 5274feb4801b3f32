package repo

// Attacks by a host that holds only a write-only key (and, like any
// backup host, can write to the storage): docs/FORMAT.md "Authority" and
// "Trust of index entries".

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
)

// writeOnly adds a write-only key to r's repository and opens it.
func writeOnly(t *testing.T, r *Repository, be storage.Backend) *Repository {
	t.Helper()
	ctx := context.Background()
	_, kf, err := r.AddKey(ctx, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	wo, err := Open(ctx, be, Credential{KeyFile: kf}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := wo.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	return wo
}

// forge stores, as the attacker, a pack that holds garbage under the ID
// id and an (unsigned) index file that lists it.
func forge(t *testing.T, wo *Repository, be storage.Backend, id hash.ID, size int) hash.ID {
	t.Helper()
	ctx := context.Background()
	garbage := bytes.Repeat([]byte{0xee}, size)
	pack := packfile.AppendHeader(bytes.Clone(garbage), [packfile.UniqueLen]byte{9}, []packfile.Blob{{Type: DataBlob, ID: id, Length: uint32(size)}})
	pid := hash.Sum(pack)
	if err := be.Save(ctx, storage.Handle{Type: storage.Pack, Name: pid.String()}, pack); err != nil {
		t.Fatal(err)
	}
	if _, err := wo.SaveIndexFile(ctx, &IndexFile{Packs: []PackInfo{{ID: pid, Blobs: []PackedBlob{{Type: DataBlob, ID: id, Length: uint32(size)}}}}}); err != nil {
		t.Fatal(err)
	}
	return pid
}

func reopen(t *testing.T, be storage.Backend) *Repository {
	t.Helper()
	r, err := Open(context.Background(), be, Credential{Password: []byte("pw")}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

// A forged copy under the ID of an existing blob: readers verify by hash
// and fall back to the genuine copy, whichever they try first.
func TestForgedCopyFallsBack(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	data := randomBytes(30 << 10)
	// the genuine copy from a write-only host too, so that neither copy
	// is vouched for and the order in which they are tried is the index's
	ref := save(t, wo, data)
	if err := flush(ctx, wo); err != nil {
		t.Fatal(err)
	}
	loc, _ := wo.Index().Lookup(BlobHandle{DataBlob, ref.ID})
	forged := forge(t, wo, be, ref.ID, int(loc.Length))

	r2 := reopen(t, be)
	h := BlobHandle{DataBlob, ref.ID}
	if n := len(r2.Index().Copies(h)); n != 2 {
		t.Fatalf("%d copies in the index, want both", n)
	}
	// whichever copy comes first, the read is byte-exact
	for i := 0; i < 2; i++ {
		got, err := r2.LoadBlob(ctx, DataBlob, ref, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("LoadBlob: %v", err)
		}
	}
	// once the forged copy has been tried it is reported and not tried again
	if first := r2.Index().Copies(h)[0]; first.Pack == forged {
		t.Fatal("the forged copy is still preferred")
	}
	// prefer the forged copy explicitly: still byte-exact, and reported
	r3 := reopen(t, be)
	r3.idx.markVerified(h, Location{Pack: forged, Offset: 0})
	if got, err := r3.LoadBlob(ctx, DataBlob, ref, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("LoadBlob with the forged copy first: %v", err)
	}
	if f := r3.ForgedCopies(); len(f) != 1 || f[0].Pack != forged {
		t.Fatalf("ForgedCopies = %+v, want the forged pack", f)
	}
}

// Dedup poisoning: the attacker guesses content an honest host will back
// up, and indexes garbage under its ID first. The honest host verifies the
// unvouched entry, finds it forged, and stores its own copy.
func TestDedupPoisoning(t *testing.T) {
	ctx := context.Background()
	for _, honestFull := range []bool{true, false} {
		r, be := newRepo(t)
		wo := writeOnly(t, r, be)
		guess := bytes.Repeat([]byte("/etc/passwd of every host "), 400)
		key := wo.BlobKey(guess)
		sealed := sealBlob(nil, compress.Auto, DataBlob, key, guess)
		id := StoredBlobID(DataBlob, sealed)
		forged := forge(t, wo, be, id, len(sealed))

		var honest *Repository
		if honestFull {
			honest = reopen(t, be)
		} else {
			honest = writeOnly(t, r, be)
		}
		ref, isNew, _, err := writerOf(honest).SaveBlob(ctx, DataBlob, honest.BlobKey(guess), guess)
		if err != nil || !isNew || ref.ID != id {
			t.Fatalf("honest SaveBlob: new=%v err=%v; it must store its own copy", isNew, err)
		}
		if f := honest.ForgedCopies(); len(f) != 1 || f[0].Pack != forged {
			t.Fatalf("ForgedCopies = %+v", f)
		}
		if err := flush(ctx, honest); err != nil {
			t.Fatal(err)
		}
		reader := reopen(t, be)
		if got, err := reader.LoadBlob(ctx, DataBlob, ref, nil); err != nil || !bytes.Equal(got, guess) {
			t.Fatalf("honest data after poisoning: %v", err)
		}
	}
}

// An honest host that finds a genuine copy listed only by an unsigned
// index file verifies it once and then relies on it: no second upload.
func TestUnsignedGenuineCopyIsVerifiedAndUsed(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	data := randomBytes(10 << 10)
	save(t, wo, data)
	if err := flush(ctx, wo); err != nil {
		t.Fatal(err)
	}
	r2 := reopen(t, be)
	if _, isNew, _, err := writerOf(r2).SaveBlob(ctx, DataBlob, r2.BlobKey(data), data); err != nil || isNew {
		t.Fatalf("SaveBlob: new=%v err=%v; the verified copy should serve", isNew, err)
	}
	if loc, _ := r2.Index().Lookup(BlobHandle{DataBlob, StoredBlobID(DataBlob, sealBlob(nil, compress.Auto, DataBlob, r2.BlobKey(data), data))}); !loc.Trusted {
		t.Fatal("the verified copy is not marked trusted")
	}
}

// A gc mark the attacker writes (unsigned, or signed with a key of its
// own, or backdated) is ignored: no pack counts as marked.
func TestForgedGCMarkIgnored(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	ref := save(t, r, randomBytes(1000))
	if err := flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	loc, _ := r.Index().Lookup(BlobHandle{DataBlob, ref.ID})
	if _, err := wo.SaveGCMark(ctx, &GCMark{Time: time.Now(), Packs: []hash.ID{loc.Pack}}); !errors.Is(err, ErrNotAuthority) {
		t.Fatalf("write-only SaveGCMark: %v", err)
	}
	plain := []byte(`{"time":"2000-01-01T00:00:00Z","packs":["` + loc.Pack.String() + `"]}`)
	other, _ := newRepo(t) // another repository's authority
	for _, data := range [][]byte{plain, append(bytes.Clone(plain), make([]byte, 64)...),
		append(bytes.Clone(plain), other.secrets.AuthorityPrivate.Sign(domainGCMark, plain)...)} {
		be.Save(ctx, storage.Handle{Type: storage.GCMark, Name: hash.Sum(data).String()}, data)
	}
	marks, damaged, err := r.LoadGCMarks(ctx)
	if err != nil || len(marks) != 0 || len(damaged) != 3 {
		t.Fatalf("LoadGCMarks: %d marks, %d damaged, %v", len(marks), len(damaged), err)
	}
	r2 := reopen(t, be)
	if r2.Index().Marked(loc.Pack) || !r2.HasBlob(BlobHandle{DataBlob, ref.ID}) {
		t.Fatal("a forged mark made a pack count as marked")
	}
}

// An unsigned index file that supersedes every other is not honoured.
func TestUnsignedSupersedeIgnored(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	ref := save(t, r, randomBytes(1000))
	if err := flush(ctx, r); err != nil {
		t.Fatal(err)
	}
	all, _ := r.ListIDs(ctx, storage.Index)
	if _, err := wo.SaveIndexFile(ctx, &IndexFile{Supersedes: all, Packs: []PackInfo{}}); err != nil {
		t.Fatal(err)
	}
	r2 := reopen(t, be)
	if !r2.Index().Has(BlobHandle{DataBlob, ref.ID}) {
		t.Fatal("an unsigned index file hid the others")
	}
	// a backend that verifies uploads vouches for entries, not for
	// supersedes (a floe server cannot check signatures)
	if r2 := reopen(t, verifyingBackend{be}); !r2.Index().Has(BlobHandle{DataBlob, ref.ID}) {
		t.Fatal("an unsigned index file hid the others on a backend that verifies uploads")
	}
	// the same file signed by a full key is honoured (prune relies on it)
	if _, err := r.SaveIndexFile(ctx, &IndexFile{Supersedes: all, Packs: []PackInfo{}}); err != nil {
		t.Fatal(err)
	}
	if r3 := reopen(t, be); r3.Index().Has(BlobHandle{DataBlob, ref.ID}) {
		t.Fatal("a signed index file's supersedes was ignored")
	}
}

// Key management needs a full key; the last full key cannot be removed.
func TestKeyManagementNeedsFullKey(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	if _, err := wo.RemoveKey(ctx, r.KeyID()); !errors.Is(err, ErrNotAuthority) || !errors.Is(err, ErrWriteOnly) {
		t.Fatalf("write-only RemoveKey: %v", err)
	}
	if _, _, err := wo.AddKey(ctx, nil, true); !errors.Is(err, ErrNotAuthority) {
		t.Fatalf("write-only AddKey: %v", err)
	}
	if _, err := wo.ChangePassword(ctx, []byte("x")); !errors.Is(err, ErrNotAuthority) {
		t.Fatalf("write-only ChangePassword: %v", err)
	}
	if _, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{}); err != nil {
		t.Fatalf("the full key is gone: %v", err)
	}
	// a second full key can remove the first, but not itself
	_, kf, err := r.AddKey(ctx, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := Open(ctx, be, Credential{KeyFile: kf}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.RemoveKey(ctx, r.KeyID()); err != nil {
		t.Fatalf("removing another full key: %v", err)
	}
	// now r2's key is the last full key: the write-only key is removable,
	// the full one (through another full key) would not be
	keys, _ := r2.Keys(ctx)
	for _, k := range keys {
		if k.WriteOnly {
			if _, err := r2.RemoveKey(ctx, k.ID); err != nil {
				t.Fatalf("removing a write-only key: %v", err)
			}
		}
	}
	if _, err := r2.RemoveKey(ctx, r2.KeyID()); err == nil {
		t.Fatal("removed the key in use")
	}
}

// The config is signed: a write-only key, which holds the config key,
// cannot make a config (say, with other chunker parameters) that others
// accept.
func TestForgedConfigRefused(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	cfg, _ := be.Get(storage.Handle{Type: storage.Config})
	env := cfg[:len(cfg)-64]
	be2 := mem.New()
	be.List(ctx, storage.Key, func(fi storage.FileInfo) error {
		b, _ := be.Get(storage.Handle{Type: storage.Key, Name: fi.Name})
		be2.Set(storage.Handle{Type: storage.Key, Name: fi.Name}, b)
		return nil
	})
	// a config re-sealed by the write-only key, with a made-up signature
	forged := append(bytes.Clone(env), make([]byte, 64)...)
	be2.Set(storage.Handle{Type: storage.Config}, forged)
	_ = wo
	if _, err := Open(ctx, be2, Credential{Password: []byte("pw")}, OpenOptions{}); err == nil {
		t.Fatal("an unsigned config was accepted")
	}
}

// FuzzOpenBlob encrypts a fuzzed payload under a blob key, so that the
// payload decoder behind the authentication (flag, raw length, bounded
// decompression, key check) is exercised: an error or the plaintext whose
// key the ref names, never a panic.
func FuzzOpenBlob(f *testing.F) {
	r, _ := newRepo(f)
	good := sealBlob(nil, compress.Auto, DataBlob, r.BlobKey([]byte("hello")), []byte("hello"))
	plain, _ := crypto.OpenBlob(nil, blobKey(r.BlobKey([]byte("hello"))), good, blobAD(DataBlob))
	f.Add(plain, false)
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x28, 0xb5, 0x2f, 0xfd}, true)
	f.Add([]byte{0, 5, 'h', 'e', 'l', 'l', 'o'}, false)
	f.Fuzz(func(t *testing.T, payload []byte, tree bool) {
		typ := DataBlob
		if tree {
			typ = TreeBlob
		}
		key := hash.Sum(payload) // some key; the check against it must fail or hold
		c := crypto.SealBlob(nil, blobKey(key), payload, blobAD(typ))
		out, err := r.openBlob(typ, hash.Ref{ID: StoredBlobID(typ, c), Key: key}, c, nil)
		if err == nil && r.BlobKey(out) != key {
			t.Fatal("accepted a plaintext that does not match its key")
		}
	})
}

// A repository of format version 1 is refused with a message that says so.
func TestFormatV1Refused(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	rec := []byte(`{"version":1,"created":"2026-11-21T20:30:00Z","write_only":false,"kdf":"argon2id","argon2":{"time":1,"memory_kib":8192,"threads":1,"salt":"AAAAAAAAAAAAAAAAAAAAAA=="},"sealed":"AAAA"}`)
	be.Set(storage.Handle{Type: storage.Key, Name: hash.Sum(rec).String()}, rec)
	be.Set(storage.Handle{Type: storage.Config}, []byte("a v1 config envelope"))
	_, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
	if !errors.Is(err, ErrFormatV1) || !strings.Contains(err.Error(), "version 1") {
		t.Fatalf("Open of a v1 repository: %v", err)
	}
}

// verifyingBackend declares that it checks uploads (as the floe server
// will), through a wrapper.
type verifyingBackend struct{ storage.Backend }

func (verifyingBackend) VerifiesUploads() bool { return true }

type plainWrapper struct{ storage.Backend }

func (w plainWrapper) Unwrap() storage.Backend { return w.Backend }

// Entries read from a backend that verifies uploads are trusted, so dedup
// relies on them without reading them back.
func TestBackendThatVerifiesUploads(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	ref := save(t, wo, randomBytes(2000))
	if err := flush(ctx, wo); err != nil {
		t.Fatal(err)
	}
	h := BlobHandle{DataBlob, ref.ID}
	if loc, _ := reopen(t, be).Index().Lookup(h); loc.Trusted {
		t.Fatal("an unsigned entry is trusted on a plain backend")
	}
	if loc, _ := reopen(t, plainWrapper{verifyingBackend{be}}).Index().Lookup(h); !loc.Trusted {
		t.Fatal("an entry from a backend that verifies uploads is not trusted")
	}
}

// A key record of version 1 beside the real keys does not lock anyone out.
func TestStrayV1KeyRecordIgnored(t *testing.T) {
	ctx := context.Background()
	_, be := newRepo(t)
	rec := []byte(`{"version":1,"kdf":"keyfile","sealed":"AAAA"}`)
	be.Set(storage.Handle{Type: storage.Key, Name: hash.Sum(rec).String()}, rec)
	if _, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{}); err != nil {
		t.Fatalf("a stray v1 key record locked the repository: %v", err)
	}
}
