// Package connect opens repositories: a Target says where a repository is
// (its location), what opens it (a password file or command, a key file, a
// credential given directly, or a prompt), which local cache it uses and
// which bandwidth limits apply. The CLI and the agent open repositories
// only through Open and Create, so that every front end finds
// credentials, applies limits and reports missing repositories alike. (The
// server holds no keys: it opens storage with package location.)
package connect

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/floe-backup/floe/internal/cache"
	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
)

// ErrNoRepoGiven is returned by Open for the default repository (Target.Default)
// before it has been created.
var ErrNoRepoGiven = errors.New("no repository given and no default repository yet")

// ErrCredentialWithoutRepo is returned by Open for the default repository
// before it has been created when a credential was given (a password file
// or command, a key file other than the default one): that credential
// belongs to another repository, which the user forgot to name, so the
// default repository is not created (backup would otherwise create it
// quietly with that password). It is wrong usage, not a missing repository.
var ErrCredentialWithoutRepo = errors.New("no repository given (a password or key file was given, so floe does not create its default repository)")

// Target is a repository and what opens it.
type Target struct {
	// Location is the repository's location (a directory, or a scheme:
	// location; see package location).
	Location string
	// Default says Location is the default repository (DefaultRepository):
	// a missing one is ErrNoRepoGiven rather than ErrNoRepository, and
	// its key file (DefaultKeyFile) opens it when no credential is given.
	Default bool

	// The credential, in this order: Credential if set (resolved already,
	// e.g. to open a second repository with the same one), KeyFile,
	// PasswordFile (its first line), PasswordCommand (the first line it
	// prints; run with sh -c), the default key file, and last Prompt.
	Credential      *repo.Credential
	KeyFile         string
	PasswordFile    string
	PasswordCommand string
	// Prompt asks for a password with label; nil: no prompt, an error.
	Prompt func(label string) ([]byte, error)

	// CacheDir is the base of the local cache (default cache.DefaultDir);
	// NoCache turns the cache off.
	CacheDir string
	NoCache  bool

	// Server is what a floe server location (https://) needs besides
	// the location: the token file and the server's fingerprint.
	Server location.Options

	// Limits, if set, applies to every backend opened for the target.
	Limits *Limits
	// Warn, if set, gets warnings (a damaged index file, no cache): the
	// command goes on.
	Warn func(msg string)
	// Hint, if set, says what to do about the error of a warning (a
	// damaged index file: check the repository) in the front end's terms
	// (its commands); "" for nothing.
	Hint func(err error) string
}

func (t Target) warn(format string, args ...any) {
	if t.Warn != nil {
		t.Warn(fmt.Sprintf(format, args...))
	}
}

// warnErr warns of err, with what to do about it if t.Hint knows.
func (t Target) warnErr(err error) {
	if t.Hint != nil {
		if h := t.Hint(err); h != "" {
			t.warn("warning: %v; %s", err, h)
			return
		}
	}
	t.warn("warning: %v", err)
}

// Options tune Open.
type Options struct {
	// LoadIndex loads the repository's index too. A damaged index file is
	// a warning (Target.Warn), not an error: the others are loaded.
	LoadIndex bool
}

// OpenBackend opens the storage of the existing repository at t.Location,
// with t's limits applied.
func OpenBackend(t Target) (storage.Backend, error) {
	be, err := location.OpenWith(context.Background(), t.Location, t.Server)
	if err != nil {
		return nil, err
	}
	return t.Limits.Wrap(be), nil
}

// Open opens the repository t; with o.LoadIndex, also its index.
func Open(ctx context.Context, t Target, o Options) (*repo.Repository, error) {
	be, err := OpenBackend(t)
	if err != nil {
		missing := errors.Is(err, os.ErrNotExist) || errors.Is(err, storage.ErrNotExist)
		if t.Default && missing {
			if t.credentialGiven() {
				return nil, ErrCredentialWithoutRepo
			}
			return nil, ErrNoRepoGiven
		}
		if missing {
			// the backend's message says where and why already
			return nil, repo.NoRepository(err)
		}
		return nil, err
	}
	r, err := openOn(ctx, be, t)
	if err != nil {
		return nil, err
	}
	if o.LoadIndex {
		if dir := t.indexCacheDir(r); dir != "" {
			r.SetIndexCache(dir)
		}
		if err := r.LoadIndex(ctx); err != nil {
			var ile *repo.IndexLoadError
			if !errors.As(err, &ile) {
				r.Close()
				return nil, err
			}
			t.warnErr(err)
		}
	}
	return r, nil
}

// OpenOn opens the repository stored on be (opened already, e.g. an export
// directory) with t's credential and limits; t.Location is not used. On
// failure be is closed.
func OpenOn(ctx context.Context, be storage.Backend, t Target) (*repo.Repository, error) {
	return openOn(ctx, t.Limits.Wrap(be), t)
}

// openOn opens the repository on be, limited already.
func openOn(ctx context.Context, be storage.Backend, t Target) (*repo.Repository, error) {
	cred, err := t.ReadCredential(ctx)
	if err != nil {
		be.Close()
		return nil, err
	}
	// keys that Open skips (costly argon2 parameters) are warnings
	r, err := repo.Open(ctx, be, cred, repo.OpenOptions{KDF: KDF(), Warn: func(err error) { t.warn("warning: %v", err) }})
	if err != nil {
		be.Close()
		return nil, err
	}
	return r, nil
}

// OpenCache opens the local cache of r, or returns nil (caching is an
// optimisation: problems are warnings).
func (t Target) OpenCache(r *repo.Repository) *cache.Cache {
	if t.NoCache {
		return nil
	}
	base := t.CacheDir
	if base == "" {
		var err error
		if base, err = cache.DefaultDir(); err != nil {
			t.warn("warning: no cache: %v", err)
			return nil
		}
	}
	c, err := cache.Open(base, r.Config().ID)
	if err != nil {
		t.warn("warning: no cache: %v", err)
		return nil
	}
	return c
}

// indexCacheDir returns where r's index cache lives in the local cache,
// or "" without a cache. Quietly: a cache that cannot be used costs speed
// only, and OpenCache warns of it where the cache matters.
func (t Target) indexCacheDir(r *repo.Repository) string {
	if t.NoCache {
		return ""
	}
	base := t.CacheDir
	if base == "" {
		var err error
		if base, err = cache.DefaultDir(); err != nil {
			return ""
		}
	}
	return cache.IndexDir(base, r.Config().ID)
}

// credentialGiven reports whether t names a credential of its own: not
// the default repository's key file, and not only a prompt.
func (t Target) credentialGiven() bool {
	if t.Credential != nil || t.PasswordFile != "" || t.PasswordCommand != "" {
		return true
	}
	if t.KeyFile == "" {
		return false
	}
	def, err := DefaultKeyFile()
	return err != nil || filepath.Clean(t.KeyFile) != def
}
