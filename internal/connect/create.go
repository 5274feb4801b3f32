package connect

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/repo"
)

// Create creates the repository t and returns it with the path of the key
// file it wrote, if any. With a KeyFile naming a file that does not exist,
// or for the default repository without a password, the first key is a key
// file, written with mode 0600; otherwise it is a password (Credential,
// PasswordFile, PasswordCommand, or asked for twice with Prompt).
func Create(ctx context.Context, t Target, opts repo.InitOptions) (*repo.Repository, string, error) {
	var cred repo.Credential
	keyPath := ""
	switch {
	case t.KeyFile != "":
		if _, err := os.Stat(t.KeyFile); err == nil {
			return nil, "", fmt.Errorf("key file %s exists already; init writes a new key file (give a new path)", t.KeyFile)
		}
		keyPath = t.KeyFile
	case t.Credential != nil || t.PasswordFile != "" || t.PasswordCommand != "":
		c, err := t.ReadCredential(ctx)
		if err != nil {
			return nil, "", err
		}
		cred = c
	case t.Default:
		p, err := DefaultKeyFile()
		if err != nil {
			return nil, "", err
		}
		keyPath = p
	default:
		pw, err := NewPassword("", t.Prompt)
		if err != nil {
			return nil, "", err
		}
		cred.Password = pw
	}
	if keyPath != "" {
		if err := os.MkdirAll(filepath.Dir(keyPath), 0o700); err != nil {
			return nil, "", fmt.Errorf("create key file directory: %w", err)
		}
		// fail before creating the repository if the key file cannot be written
		f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, "", fmt.Errorf("create key file: %w", err)
		}
		f.Close()
		os.Remove(keyPath)
	}
	be, err := location.CreateWith(ctx, t.Location, t.Server)
	if err != nil {
		return nil, "", err
	}
	be = t.Limits.Wrap(be)
	if opts.KDF == nil {
		opts.KDF = KDF()
	}
	r, kf, err := repo.Init(ctx, be, cred, opts)
	if err != nil {
		be.Close()
		return nil, "", err
	}
	if kf != nil {
		if err := repo.WriteKeyFile(keyPath, kf); err != nil {
			return nil, "", fmt.Errorf("repository created, but writing its key file failed (the repository cannot be opened without it; delete %s and init again): %w", t.Location, err)
		}
	}
	return r, keyPath, nil
}
