package connect

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/floe-backup/floe/internal/crypto"
)

func xdgDir(env, fallback string) (string, error) {
	if d := os.Getenv(env); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a home directory for the default repository (set %s or use -r): %w", env, err)
	}
	return filepath.Join(home, fallback), nil
}

// DefaultRepository is where the default repository lives:
// $XDG_DATA_HOME/floe/repository.
func DefaultRepository() (string, error) {
	d, err := xdgDir("XDG_DATA_HOME", ".local/share")
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "floe", "repository"), nil
}

// DefaultKeyFile is the key file of the default repository:
// $XDG_CONFIG_HOME/floe/repository.key.
func DefaultKeyFile() (string, error) {
	d, err := xdgDir("XDG_CONFIG_HOME", ".config")
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "floe", "repository.key"), nil
}

// KDF returns cheap argon2 parameters when FLOE_INSECURE_TEST_KDF=1
// (the test suite creates hundreds of keys); nil means the secure default.
func KDF() *crypto.KDFParams {
	if os.Getenv("FLOE_INSECURE_TEST_KDF") != "1" {
		return nil
	}
	p := crypto.DefaultKDFParams()
	p.Time, p.MemoryKiB, p.Threads = 1, 8*1024, 1
	return &p
}
