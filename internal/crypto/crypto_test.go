package crypto

import (
	"bytes"
	"errors"
	"testing"
)

func TestAEADRoundTripAndTamper(t *testing.T) {
	a := NewAEAD(RandomKey())
	msg := []byte("the quick brown fox")
	env := a.Seal(nil, msg, []byte("ad"))
	if len(env) != len(msg)+Overhead {
		t.Fatalf("envelope size %d, want %d", len(env), len(msg)+Overhead)
	}
	got, err := a.Open(nil, env, []byte("ad"))
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	cases := map[string]func() ([]byte, []byte){
		"flipped bit": func() ([]byte, []byte) { e := bytes.Clone(env); e[15] ^= 1; return e, []byte("ad") },
		"other ad":    func() ([]byte, []byte) { return env, []byte("da") },
		"truncated":   func() ([]byte, []byte) { return env[:len(env)-1], []byte("ad") },
		"too short":   func() ([]byte, []byte) { return env[:10], []byte("ad") },
		"other key":   func() ([]byte, []byte) { return NewAEAD(RandomKey()).Seal(nil, msg, []byte("ad")), []byte("ad") },
	}
	for name, mk := range cases {
		e, ad := mk()
		if _, err := a.Open(nil, e, ad); !errors.Is(err, ErrAuth) {
			t.Errorf("%s: err = %v, want ErrAuth", name, err)
		}
	}
}

func TestSealUnseal(t *testing.T) {
	pub, priv, err := GenerateKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	eph, k1, err := SealTo(pub)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := Unseal(priv, pub, eph)
	if err != nil || k1 != k2 {
		t.Fatalf("Unseal gave another key (%v)", err)
	}
	_, otherPriv, _ := GenerateKeyPair()
	if k3, _ := Unseal(otherPriv, pub, eph); k3 == k1 {
		t.Fatal("a different private key derived the same key")
	}
	if _, err := Unseal(priv, pub, PublicKey{}); err == nil {
		t.Fatal("low-order ephemeral key accepted")
	}
	if p2, _ := PublicFromPrivate(priv); p2 != pub {
		t.Fatal("PublicFromPrivate mismatch")
	}
}

func TestKDFBounds(t *testing.T) {
	p := DefaultKDFParams()
	p.MemoryKiB = 8 * 1024
	p.Time = 1
	k1, err := DeriveKey([]byte("pw"), p)
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := DeriveKey([]byte("pw"), p)
	k3, _ := DeriveKey([]byte("pW"), p)
	if k1 != k2 || k1 == k3 {
		t.Fatal("derivation not deterministic or not passphrase-dependent")
	}
	for _, bad := range []KDFParams{
		{Time: 0, MemoryKiB: 65536, Threads: 1, Salt: p.Salt},
		{Time: 1, MemoryKiB: 1 << 30, Threads: 1, Salt: p.Salt},
		{Time: 1, MemoryKiB: 65536, Threads: 0, Salt: p.Salt},
		{Time: 1, MemoryKiB: 65536, Threads: 1, Salt: nil},
	} {
		if _, err := DeriveKey([]byte("pw"), bad); err == nil {
			t.Errorf("params %+v accepted", bad)
		}
	}
}

func BenchmarkAEADSeal1MiB(b *testing.B) {
	a := NewAEAD(RandomKey())
	buf := make([]byte, 1<<20)
	out := make([]byte, 0, len(buf)+Overhead)
	b.SetBytes(int64(len(buf)))
	for i := 0; i < b.N; i++ {
		a.Seal(out[:0], buf, nil)
	}
}

func BenchmarkAEADOpen1MiB(b *testing.B) {
	a := NewAEAD(RandomKey())
	buf := make([]byte, 1<<20)
	env := a.Seal(nil, buf, nil)
	out := make([]byte, 0, len(buf))
	b.SetBytes(int64(len(buf)))
	for i := 0; i < b.N; i++ {
		if _, err := a.Open(out[:0], env, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzOpen(f *testing.F) {
	a := NewAEAD(Key{1})
	f.Add(a.Seal(nil, []byte("hello"), nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, env []byte) {
		_, _ = a.Open(nil, env, nil) // must not panic
	})
}

func TestSealBlobConvergent(t *testing.T) {
	k := RandomKey()
	a := SealBlob(nil, k, []byte("payload"), []byte("ad"))
	b := SealBlob(nil, k, []byte("payload"), []byte("ad"))
	if string(a) != string(b) || len(a) != len("payload")+BlobOverhead {
		t.Fatal("SealBlob is not deterministic")
	}
	p, err := OpenBlob(nil, k, a, []byte("ad"))
	if err != nil || string(p) != "payload" {
		t.Fatalf("OpenBlob = %q, %v", p, err)
	}
	if _, err := OpenBlob(nil, k, a, []byte("other")); err == nil {
		t.Fatal("OpenBlob accepted other AD")
	}
	a[0] ^= 1
	if _, err := OpenBlob(nil, k, a, []byte("ad")); err == nil {
		t.Fatal("OpenBlob accepted a flipped bit")
	}
	if _, err := OpenBlob(nil, k, a[:3], []byte("ad")); err == nil {
		t.Fatal("OpenBlob accepted a short input")
	}
}

func TestAuthority(t *testing.T) {
	pub, seed, err := GenerateAuthority()
	if err != nil {
		t.Fatal(err)
	}
	if seed.Public() != pub {
		t.Fatal("Public of seed differs")
	}
	sig := seed.Sign("d1", []byte("m"))
	if !pub.Verify("d1", []byte("m"), sig) {
		t.Fatal("valid signature rejected")
	}
	if pub.Verify("d2", []byte("m"), sig) || pub.Verify("d1", []byte("n"), sig) || pub.Verify("d1", []byte("m"), sig[:10]) {
		t.Fatal("signature verified in another domain, for another message, or truncated")
	}
	other, _, _ := GenerateAuthority()
	if other.Verify("d1", []byte("m"), sig) {
		t.Fatal("signature verified under another key")
	}
}

// FuzzEnvelopes: the other envelopes a reader opens from storage, of any
// bytes: a sealed blob opens only if it is exactly what SealBlob makes of
// its plaintext, an ephemeral key of any value (low-order points
// included) gives a key or an error, and a signature of any length
// verifies only if it is the one the authority made.
func FuzzEnvelopes(f *testing.F) {
	k := Key{7}
	pub, priv, err := GenerateKeyPair()
	if err != nil {
		f.Fatal(err)
	}
	apub, aseed, err := GenerateAuthority()
	if err != nil {
		f.Fatal(err)
	}
	signed := aseed.Sign("index", []byte("msg"))
	f.Add(SealBlob(nil, k, []byte("payload"), []byte("ad")), make([]byte, 32), signed)
	f.Add([]byte{1, 2, 3}, append([]byte{1}, make([]byte, 31)...), []byte{})
	f.Fuzz(func(t *testing.T, sealed, ephemeral, sig []byte) {
		if plain, err := OpenBlob(nil, k, sealed, []byte("ad")); err == nil {
			if again := SealBlob(nil, k, plain, []byte("ad")); !bytes.Equal(again, sealed) {
				t.Fatalf("opened %x, which does not seal to it", sealed)
			}
		}
		var e PublicKey
		copy(e[:], ephemeral)
		Unseal(priv, pub, e)
		if apub.Verify("index", []byte("msg"), sig) && !bytes.Equal(sig, signed) {
			// Ed25519 signatures are not malleable in Go's verifier
			t.Fatalf("signature %x verified", sig)
		}
	})
}
