package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/compress"
	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
)

// rewriteConfig replaces be's config with r's config changed by edit,
// sealed under the config key (which every key, write-only ones included,
// holds) and signed with seed.
func rewriteConfig(t testing.TB, r *Repository, be *mem.Backend, seed *crypto.AuthoritySeed, edit func(map[string]any)) {
	t.Helper()
	plain, err := json.Marshal(r.Config())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(plain, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if plain, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	env := crypto.NewAEAD(r.secrets.ConfigKey).Seal(nil, plain, []byte(adConfig))
	be.Set(storage.Handle{Type: storage.Config}, append(env, seed.Sign(domainConfig, env)...))
}

// The level chosen at init is in the config, survives opening, and is the
// one blobs are stored at: off stores raw, the others compress, and one
// plaintext gets one ID per level (what convergent IDs across hosts need).
func TestCompressionLevelConfig(t *testing.T) {
	ctx := context.Background()
	// ~1 MiB of text from a small vocabulary: each level compresses it
	// to other bytes (a repeated line would give auto and better alike)
	rnd := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("floe backs up a fleet of servers into one repository and every host deduplicates against the others at the level of the repository")
	var data []byte
	for len(data) < 1<<20 {
		data = append(append(data, words[rnd.IntN(len(words))]...), " \n"[rnd.IntN(2)])
	}
	chunkIDKey := crypto.RandomKey()
	ids := map[compress.Level]string{}
	for _, l := range []compress.Level{compress.Auto, compress.Fastest, compress.Better, compress.Off} {
		be := mem.New()
		r, _, err := Init(ctx, be, Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF(), Compression: l, ChunkIDKey: &chunkIDKey})
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Config().CompressionLevel; got != l.String() {
			t.Errorf("%s: config says compression_level %q", l, got)
		}
		r, err = Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
		if err != nil {
			t.Fatalf("%s: open: %v", l, err)
		}
		if r.Config().CompressionLevel != l.String() || r.level != l {
			t.Errorf("%s: reopened with %q (%s)", l, r.Config().CompressionLevel, r.level)
		}
		if err := r.LoadIndex(ctx); err != nil {
			t.Fatal(err)
		}
		ref, _, stored, err := writerOf(r).SaveBlob(ctx, DataBlob, r.BlobKey(data), data)
		if err != nil {
			t.Fatal(err)
		}
		if err := flush(ctx, r); err != nil {
			t.Fatal(err)
		}
		if ref != r.RefOf(DataBlob, data) {
			t.Errorf("%s: RefOf differs from the stored ref", l)
		}
		if raw := len(data) + crypto.BlobOverhead; l == compress.Off && stored < raw || l != compress.Off && stored > len(data)/3 {
			t.Errorf("%s: %d bytes stored as %d", l, len(data), stored)
		}
		got, err := r.LoadBlob(ctx, DataBlob, ref, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s: load: %v", l, err)
		}
		if err := r.CheckConfig(ctx); err != nil {
			t.Errorf("%s: check config: %v", l, err)
		}
		for other, id := range ids {
			if id == ref.ID.String() {
				t.Errorf("%s and %s give the same ID", l, other)
			}
		}
		ids[l] = ref.ID.String()
	}
}

// A config written before levels existed has no compression_level: auto.
func TestConfigWithoutLevelIsAuto(t *testing.T) {
	r, be := newRepo(t)
	rewriteConfig(t, r, be, r.secrets.AuthorityPrivate, func(m map[string]any) { delete(m, "compression_level") })
	r2, err := Open(context.Background(), be, Credential{Password: []byte("pw")}, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r2.level != compress.Auto || r2.Config().CompressionLevel != "" {
		t.Errorf("level %s, config %q; want auto from an absent field", r2.level, r2.Config().CompressionLevel)
	}
}

// An unknown level, even in a config the authority signed (a newer floe),
// is refused with an error naming it, not taken for auto.
func TestUnknownLevelRefused(t *testing.T) {
	r, be := newRepo(t)
	for _, bad := range []any{"ultra", "AUTO", 3, ""} {
		rewriteConfig(t, r, be, r.secrets.AuthorityPrivate, func(m map[string]any) { m["compression_level"] = bad })
		_, err := Open(context.Background(), be, Credential{Password: []byte("pw")}, OpenOptions{})
		switch {
		case bad == "":
			if err != nil {
				t.Errorf("empty level: %v", err)
			}
		case err == nil:
			t.Errorf("level %v accepted", bad)
		case bad == 3:
			// not a string: the decoder says so
		case !strings.Contains(err.Error(), `unknown compression level "`+bad.(string)+`"`):
			t.Errorf("level %v: unclear error %q", bad, err)
		}
	}
	if _, _, err := Init(context.Background(), mem.New(), Credential{Password: []byte("pw")}, InitOptions{KDF: cheapKDF(), Compression: compress.Level(99)}); err == nil {
		t.Error("Init accepted an invalid level")
	}
}

// A write-only key holds the config key but not the authority's: the level
// it writes into a config of its own (to make others store raw, say) is
// refused, and the repository keeps its level.
func TestWriteOnlyCannotChangeLevel(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	wo := writeOnly(t, r, be)
	if wo.secrets.AuthorityPrivate != nil {
		t.Fatal("a write-only key holds the authority key")
	}
	_, seed, err := crypto.GenerateAuthority()
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := be.Get(storage.Handle{Type: storage.Config})
	rewriteConfig(t, wo, be, &seed, func(m map[string]any) { m["compression_level"] = "off" })
	if _, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{}); !errors.Is(err, ErrDamagedConfig) {
		t.Errorf("a config signed by another key: %v, want ErrDamagedConfig", err)
	}
	if err := r.CheckConfig(ctx); err == nil {
		t.Error("check accepted the rewritten config")
	}
	be.Set(storage.Handle{Type: storage.Config}, orig)
	if r2, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{}); err != nil || r2.level != compress.Auto {
		t.Errorf("original config: %v", err)
	}
}

// FuzzConfigLevel signs configs with fuzzed compression levels, so that the
// decoding behind the signature is exercised: Open refuses a level it does
// not know, or opens with exactly the level named ("" is auto).
func FuzzConfigLevel(f *testing.F) {
	r, be := newRepo(f)
	for _, s := range []string{"", "auto", "fastest", "better", "off", "ultra", "\x00", "fastest "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, level string) {
		rewriteConfig(t, r, be, r.secrets.AuthorityPrivate, func(m map[string]any) { m["compression_level"] = level })
		r2, err := Open(context.Background(), be, Credential{Password: []byte("pw")}, OpenOptions{})
		if err != nil {
			if l, perr := compress.ParseLevel(level); perr == nil {
				t.Fatalf("level %q (%s) refused: %v", level, l, err)
			}
			return
		}
		if want, _ := compress.ParseLevel(level); r2.CompressionLevel() != want || (level != "" && want.String() != level) {
			t.Fatalf("level %q opened as %s", level, r2.CompressionLevel())
		}
	})
}
