package testutil

import (
	"context"
	"testing"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
)

// Password opens the repositories NewRepo makes.
const Password = "pw"

// CheapKDF returns argon2 parameters cheap enough for tests that make many
// keys (never for real keys).
func CheapKDF() *crypto.KDFParams {
	return &crypto.KDFParams{Time: 1, MemoryKiB: 8 * 1024, Threads: 1, Salt: make([]byte, 16)}
}

// NewRepo creates a repository on an in-memory backend, opened with
// Password. The backend is returned so tests can open it again or damage it.
func NewRepo(t testing.TB) (*repo.Repository, *mem.Backend) {
	t.Helper()
	be := mem.New()
	r, _, err := repo.Init(context.Background(), be, repo.Credential{Password: []byte(Password)}, repo.InitOptions{KDF: CheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	return r, be
}

// Reopen opens a NewRepo repository again on be (its backend, or a wrapper
// of it that counts or streams requests), with its index loaded.
func Reopen(t testing.TB, be storage.Backend) *repo.Repository {
	t.Helper()
	r, err := repo.Open(context.Background(), be, repo.Credential{Password: []byte(Password)}, repo.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.LoadIndex(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

// WriteOnly adds a write-only key to r's repository and opens the
// repository with it on r's backend, its index loaded: the view of a host
// that may add backups and read none.
func WriteOnly(t testing.TB, r *repo.Repository) *repo.Repository {
	t.Helper()
	ctx := context.Background()
	_, kf, err := r.AddKey(ctx, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	wo, err := repo.Open(ctx, r.Backend(), repo.Credential{KeyFile: kf}, repo.OpenOptions{KDF: CheapKDF()})
	if err != nil {
		t.Fatal(err)
	}
	if err := wo.LoadIndex(ctx); err != nil {
		t.Fatal(err)
	}
	return wo
}
