package repo

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// A key record asking for costlier argon2 than floe creates is skipped
// with a warning (before any derivation), and the next key opens.
func TestOpenSkipsCostlyKDF(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	// a name that sorts before the real key's, so that it is tried first
	var b []byte
	for i := 0; ; i++ {
		rec := KeyRecord{Version: keyVersion, Created: time.Unix(int64(i), 0).UTC(), KDF: kdfArgon2,
			Argon2: &crypto.KDFParams{Time: 20, MemoryKiB: 4 << 20, Threads: 4, Salt: make([]byte, 16)}, Sealed: make([]byte, 64)}
		b, _ = json.Marshal(rec)
		if hash.Sum(b).String() < r.KeyID() {
			break
		}
	}
	be.Set(storage.Handle{Type: storage.Key, Name: hash.Sum(b).String()}, b)
	var warnings []error
	start := time.Now()
	_, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{Warn: func(err error) { warnings = append(warnings, err) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !errors.Is(warnings[0], ErrKDFTooCostly) || !strings.Contains(warnings[0].Error(), hash.Sum(b).String()[:8]) {
		t.Fatalf("warnings %v, want one naming the costly key", warnings)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("open took %v: the costly key was derived", d)
	}
	// the parameters floe creates pass
	if err := checkKDFCost(crypto.DefaultKDFParams()); err != nil {
		t.Errorf("default parameters: %v", err)
	}
	if err := checkKDFCost(*cheapKDF()); err != nil {
		t.Errorf("test parameters: %v", err)
	}
}

// Keys over the size limit are skipped; a config over it is refused
// naming the limit; snapshot records over it do not decode.
func TestLoadLimits(t *testing.T) {
	ctx := context.Background()
	r, be := newRepo(t)
	big := make([]byte, maxKeySize+1)
	be.Set(storage.Handle{Type: storage.Key, Name: hash.Sum(big).String()}, big)
	if _, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{}); err != nil {
		t.Fatalf("a huge key blocks Open: %v", err)
	}
	snap := make([]byte, maxSnapshotSize+1)
	id := hash.Sum(snap)
	be.Set(storage.Handle{Type: storage.Snapshot, Name: id.String()}, snap)
	if _, err := r.LoadSnapshotRecord(ctx, id); !errors.Is(err, ErrDamagedSnapshot) || !errors.Is(err, storage.ErrTooLarge) {
		t.Errorf("huge snapshot record: %v", err)
	}
	be.Set(storage.Handle{Type: storage.Config}, make([]byte, maxConfigSize+1))
	_, err := Open(ctx, be, Credential{Password: []byte("pw")}, OpenOptions{})
	if !errors.Is(err, storage.ErrTooLarge) || !strings.Contains(err.Error(), "the config") {
		t.Errorf("huge config: %v", err)
	}
}
