package server_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/remote"
)

// sealedLike returns n bytes that stand for a sealed blob: the server
// never decrypts, it only hashes.
func sealedLike(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	return b
}

// buildPack lays out blobs as a pack; forge, if >= 0, makes the header
// claim for that blob the ID of other bytes.
func buildPack(forge int, contents ...[]byte) ([]byte, []packfile.Blob) {
	var body []byte
	var blobs []packfile.Blob
	for i, c := range contents {
		id := packfile.BlobID(packfile.Data, c)
		if i == forge {
			id = packfile.BlobID(packfile.Data, append([]byte("other "), c...))
		}
		blobs = append(blobs, packfile.Blob{Type: packfile.Data, ID: id, Offset: uint32(len(body)), Length: uint32(len(c))})
		body = append(body, c...)
	}
	return packfile.AppendHeader(body, [packfile.UniqueLen]byte{byte(forge + 1)}, blobs), blobs
}

func indexOf(t *testing.T, pid hash.ID, blobs []packfile.Blob) []byte {
	t.Helper()
	b, err := packfile.EncodeIndex(&packfile.Index{Packs: []packfile.Pack{{ID: pid, Blobs: blobs}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The format verifier, through the real HTTP server with a backup token:
// a pack with a forged blob, an index entry pointing at another offset of
// a stored pack, one past its end, one of the wrong type and one of a pack
// that is not stored are refused (422 rejected), leave nothing and are in
// the audit log; an honest pack (with a blob larger than one read of the
// streaming check) and its index file are stored, and the server says
// that it verifies uploads.
func TestFormatVerifierRefusesForgeries(t *testing.T) {
	// packs above 1 MiB are held in memory and verified in the pass that
	// hashes their name, or (over the memory budget, larger than
	// 64 MiB) spooled and read back: both must refuse the same
	for _, mode := range []struct {
		name string
		mem  int64
	}{{"memory", 0}, {"spool", -1}} {
		t.Run(mode.name, func(t *testing.T) { testFormatVerifier(t, mode.mem) })
	}
}

func testFormatVerifier(t *testing.T, mem int64) {
	ctx := context.Background()
	root := t.TempDir()
	repos, err := server.NewRootDir(root)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, repos, server.Options{Verifier: server.NewFormatVerifier(), SpoolDir: t.TempDir(), UploadMemory: mem})
	admin, err := remote.Create(ctx, s.url+"/fleet", remote.Options{Token: s.token(t, "fleet", "admin"), Fingerprint: s.fp, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Save(ctx, storage.Handle{Type: storage.Config}, []byte("config")); err != nil {
		t.Fatal(err)
	}
	b, err := remote.Open(ctx, s.url+"/fleet", remote.Options{Token: s.token(t, "fleet", "backup"), Fingerprint: s.fp, Retries: 1})
	if err != nil {
		t.Fatal(err)
	}
	save := func(typ storage.FileType, data []byte) (storage.Handle, error) {
		h := storage.Handle{Type: typ, Name: hash.Sum(data).String()}
		return h, b.Save(ctx, h, data)
	}
	refused := func(what string, typ storage.FileType, data []byte, reason string) {
		t.Helper()
		h, err := save(typ, data)
		if !errors.Is(err, remote.ErrRejected) || !strings.Contains(err.Error(), reason) {
			t.Fatalf("%s: %v, want ErrRejected (422) naming %q", what, err, reason)
		}
		if _, err := b.Stat(ctx, h); !errors.Is(err, storage.ErrNotExist) {
			t.Fatalf("%s: the refused upload is stored: %v", what, err)
		}
		audit, _ := os.ReadFile(filepath.Join(s.state, "audit.log"))
		if !strings.Contains(string(audit), `"object":"`+h.String()+`"`) || !strings.Contains(string(audit), `"status":422`) {
			t.Fatalf("%s: not in the audit log:\n%s", what, audit)
		}
	}

	big, small := sealedLike(1, 3<<20+5), sealedLike(2, 4000)
	forged, _ := buildPack(1, big, small)
	refused("a pack with a forged blob", storage.Pack, forged, "do not hash to their IDs")
	// a pack whose bytes are not its name: 422 name_mismatch, nothing stored
	other, _ := buildPack(-1, small, big)
	misnamed := storage.Handle{Type: storage.Pack, Name: hash.Sum(forged).String()}
	if err := b.Save(ctx, misnamed, other); !errors.Is(err, remote.ErrRejected) || !strings.Contains(err.Error(), "hash to") {
		t.Fatalf("a pack under another name: %v, want ErrRejected naming the hash", err)
	}
	refused("garbage as a pack", storage.Pack, []byte("not a pack at all, but named by its hash"), "not a floe v2 pack")

	pack, blobs := buildPack(-1, big, small)
	pid := hash.Sum(pack)
	if _, err := save(storage.Pack, pack); err != nil {
		t.Fatalf("honest pack: %v", err)
	}
	if _, err := save(storage.Index, indexOf(t, pid, blobs)); err != nil {
		t.Fatalf("honest index file: %v", err)
	}
	wrongOffset := []packfile.Blob{{Type: packfile.Data, ID: blobs[1].ID, Offset: 0, Length: blobs[1].Length}}
	refused("an index entry at another offset", storage.Index, indexOf(t, pid, wrongOffset), "does not hash to its ID")
	pastEnd := []packfile.Blob{{Type: packfile.Data, ID: blobs[1].ID, Offset: blobs[1].Offset, Length: uint32(len(pack))}}
	refused("an index entry past the end of its pack", storage.Index, indexOf(t, pid, pastEnd), "past the end")
	huge := []packfile.Blob{{Type: packfile.Data, ID: blobs[1].ID, Offset: blobs[1].Offset, Length: 1 << 30}}
	refused("an index entry longer than any blob", storage.Index, indexOf(t, pid, huge), "more than the limit")
	wrongType := []packfile.Blob{{Type: packfile.Tree, ID: blobs[1].ID, Offset: blobs[1].Offset, Length: blobs[1].Length}}
	refused("an index entry of the wrong type", storage.Index, indexOf(t, pid, wrongType), "does not hash to its ID")
	refused("an index entry of a pack not stored", storage.Index, indexOf(t, hash.Sum([]byte("later")), blobs), "upload packs before the index file")
	refused("garbage as an index file", storage.Index, []byte("FLIX garbage"), "decode index")
	if !b.VerifiesUploads() {
		t.Fatal("a server with the format verifier does not say so")
	}
	// a verifier that did not see the pack uploaded (a restarted server)
	// reads the entries back and hashes them
	be, err := repos.Open(ctx, "fleet")
	if err != nil {
		t.Fatal(err)
	}
	fresh := server.NewFormatVerifier()
	for _, c := range []struct {
		idx  []byte
		good bool
	}{{indexOf(t, pid, blobs[1:]), true}, {indexOf(t, pid, wrongOffset), false}} {
		err := fresh.VerifyUpload(ctx, be, storage.Handle{Type: storage.Index, Name: hash.Sum(c.idx).String()}, bytes.NewReader(c.idx), int64(len(c.idx)))
		if (err == nil) != c.good {
			t.Errorf("fresh verifier, good=%v: %v", c.good, err)
		}
	}
	// snapshot records and the like are not the verifier's business
	if _, err := save(storage.Snapshot, []byte("sealed snapshot record")); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkFormatVerifierPack verifies a 16 MiB pack of 1 MiB blobs read
// from a spool file, as the server does for every upload.
func BenchmarkFormatVerifierPack(b *testing.B) {
	var contents [][]byte
	for i := 0; i < 16; i++ {
		contents = append(contents, sealedLike(byte(i), 1<<20))
	}
	pack, _ := buildPack(-1, contents...)
	f, err := os.CreateTemp(b.TempDir(), "spool")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	f.Write(pack)
	h := storage.Handle{Type: storage.Pack, Name: hash.Sum(pack).String()}
	v := server.NewFormatVerifier()
	b.SetBytes(int64(len(pack)))
	for i := 0; i < b.N; i++ {
		if err := v.VerifyUpload(context.Background(), nil, h, f, int64(len(pack))); err != nil {
			b.Fatal(err)
		}
	}
}
