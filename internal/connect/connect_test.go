package connect

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
)

func init() { os.Setenv("FLOE_INSECURE_TEST_KDF", "1") }

func writePassword(t *testing.T, pw string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(p, []byte(pw+"\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCreateAndOpen(t *testing.T) {
	ctx := context.Background()
	loc := filepath.Join(t.TempDir(), "repo")
	pw := writePassword(t, "secret")
	tg := Target{Location: loc, PasswordFile: pw, Limits: NewLimits(1<<30, 1<<30)}
	r, keyPath, err := Create(ctx, tg, repo.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if keyPath != "" {
		t.Errorf("a password repository wrote a key file %s", keyPath)
	}
	id := r.Config().ID
	r.Close()

	r, err = Open(ctx, tg, Options{LoadIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Config().ID != id {
		t.Errorf("opened %s, created %s", r.Config().ID, id)
	}
	// the limits apply, and streamed saves stay streamed through them
	if _, ok := r.Backend().(storage.StreamSaver); !ok {
		t.Errorf("the limited backend %T does not stream saves", r.Backend())
	}
	// limited once: a second limiter would halve the rate
	if u, ok := r.Backend().(storage.Unwrapper); !ok {
		t.Errorf("the backend %T is not limited", r.Backend())
	} else if _, twice := u.Unwrap().(storage.Unwrapper); twice {
		t.Errorf("the backend is limited twice: %T in %T", u.Unwrap(), r.Backend())
	}
	r.Close()

	// a credential given directly, and the first line of a command's output
	cred := repo.Credential{Password: []byte("secret")}
	for _, other := range []Target{
		{Location: loc, Credential: &cred, PasswordFile: "/nonexistent"},
		{Location: loc, PasswordCommand: "printf 'secret\\nx\\n'"},
	} {
		r, err := Open(ctx, other, Options{})
		if err != nil {
			t.Fatalf("open with %+v: %v", other, err)
		}
		r.Close()
	}
	wrong := Target{Location: loc, PasswordFile: writePassword(t, "wrong")}
	if _, err := Open(ctx, wrong, Options{}); !errors.Is(err, repo.ErrWrongKey) {
		t.Errorf("wrong password: %v, want ErrWrongKey", err)
	}
	if _, err := Open(ctx, Target{Location: loc}, Options{}); !errors.Is(err, errNoPrompt) {
		t.Errorf("no credential and no prompt: %v", err)
	}
	if _, _, err := Create(ctx, tg, repo.InitOptions{}); err == nil {
		t.Error("created a repository over an existing one")
	}
}

func TestMissingRepository(t *testing.T) {
	ctx := context.Background()
	loc := filepath.Join(t.TempDir(), "none")
	if _, err := Open(ctx, Target{Location: loc}, Options{}); !errors.Is(err, repo.ErrNoRepository) {
		t.Errorf("missing repository: %v, want ErrNoRepository", err)
	}
	if _, err := Open(ctx, Target{Location: loc, Default: true}, Options{}); !errors.Is(err, ErrNoRepoGiven) {
		t.Errorf("missing default repository: %v, want ErrNoRepoGiven", err)
	}
}

func TestDefaultRepositoryKeyFile(t *testing.T) {
	ctx := context.Background()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	loc, err := DefaultRepository()
	if err != nil {
		t.Fatal(err)
	}
	tg := Target{Location: loc, Default: true}
	r, keyPath, err := Create(ctx, tg, repo.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	want, _ := DefaultKeyFile()
	if keyPath != want {
		t.Fatalf("key file %s, want %s", keyPath, want)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
	}
	r, err = Open(ctx, tg, Options{})
	if err != nil {
		t.Fatalf("the default key file does not open the default repository: %v", err)
	}
	r.Close()
	// a key file path that exists is refused by Create
	if _, _, err := Create(ctx, Target{Location: filepath.Join(t.TempDir(), "r"), KeyFile: keyPath}, repo.InitOptions{}); err == nil {
		t.Error("Create overwrote an existing key file")
	}
}

func TestNewPassword(t *testing.T) {
	answers := [][]byte{[]byte("a"), []byte("b")}
	ask := func(string) ([]byte, error) { a := answers[0]; answers = answers[1:]; return a, nil }
	if _, err := NewPassword("", ask); err == nil {
		t.Error("passwords that differ were accepted")
	}
	pw, err := NewPassword(writePassword(t, "p"), nil)
	if err != nil || string(pw) != "p" {
		t.Errorf("NewPassword(file) = %q, %v", pw, err)
	}
}
