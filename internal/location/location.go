// Package location turns a repository location string (-r/--repo) into a
// storage backend: local directories (a path, or local:PATH), an S3 bucket
// (s3:https://HOST[:PORT]/BUCKET[/PREFIX], s3.go), and https:// and
// ssh:// for a floe server (remote.go; OpenWith and CreateWith take its
// token, fingerprint, connections and ssh command).
package location

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/local"
)

// Open opens the backend of an existing repository.
func Open(loc string) (storage.Backend, error) {
	if strings.HasPrefix(loc, s3Prefix) {
		return openS3(loc)
	}
	dir, err := localPath(loc)
	if err != nil {
		return nil, err
	}
	return local.Open(dir)
}

// Create creates the backend of a new repository.
func Create(loc string) (storage.Backend, error) {
	if strings.HasPrefix(loc, s3Prefix) {
		return createS3(loc)
	}
	dir, err := localPath(loc)
	if err != nil {
		return nil, err
	}
	return local.Create(dir)
}

// ErrNoLocation means the repository location is empty.
var ErrNoLocation = errors.New("no repository given")

// ErrNoToken means a floe server's location was given without a token
// file.
var ErrNoToken = errors.New("a floe server needs a token")

func localPath(loc string) (string, error) {
	if loc == "" {
		return "", ErrNoLocation
	}
	if i := strings.Index(loc, ":"); i > 0 && !strings.ContainsAny(loc[:i], "/.") {
		scheme := loc[:i]
		if scheme != "local" {
			return "", fmt.Errorf("repository location %q: scheme %q is not supported by this floe (supported: a local path, s3:https://HOST/BUCKET[/PREFIX], https://HOST:PORT/REPO or ssh://[USER@]HOST[:PORT]/PATH for floe serve)", loc, scheme)
		}
		loc = loc[i+1:]
	}
	abs, err := filepath.Abs(loc)
	if err != nil {
		return "", fmt.Errorf("repository location %q: %w", loc, err)
	}
	return abs, nil
}
