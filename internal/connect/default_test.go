package connect

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
)

// A missing default repository is ErrNoRepoGiven (backup creates it) only
// when no credential of another repository was given.
func TestMissingDefaultWithCredential(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	def, err := DefaultKeyFile()
	if err != nil {
		t.Fatal(err)
	}
	loc := filepath.Join(dir, "data", "floe", "repository")
	for _, c := range []struct {
		t    Target
		want error
	}{
		{Target{}, ErrNoRepoGiven},
		{Target{KeyFile: def}, ErrNoRepoGiven},
		{Target{PasswordFile: "/pw"}, ErrCredentialWithoutRepo},
		{Target{PasswordCommand: "echo x"}, ErrCredentialWithoutRepo},
		{Target{KeyFile: filepath.Join(dir, "other.key")}, ErrCredentialWithoutRepo},
	} {
		c.t.Location, c.t.Default = loc, true
		if _, err := Open(context.Background(), c.t, Options{}); !errors.Is(err, c.want) {
			t.Errorf("%+v: %v, want %v", c.t, err, c.want)
		}
	}
}
