package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/storage"
)

// PrefixRepos serves repositories that are prefixes of one storage
// location (floe serve --storage s3:...): repository NAME is what the
// opener gives for NAME, the bucket's PREFIX/NAME. Several servers may
// stand in front of one bucket: every object and every upload record
// (markers beside the objects, MarkerStore) is in the bucket, and
// nothing a request needs is only in one server's memory.
type PrefixRepos struct {
	where string
	open  BackendOpener

	mu    sync.Mutex
	ready map[string]storage.Backend
}

// BackendOpener opens (create false: an existing repository, or an error
// wrapping storage.ErrNotExist) or creates (true: fails wrapping
// storage.ErrExist where a config object is) the backend of repository
// name.
type BackendOpener func(ctx context.Context, name string, create bool) (storage.Backend, error)

// NewPrefixRepos serves the repositories open gives; where names the
// location in messages.
func NewPrefixRepos(where string, open BackendOpener) *PrefixRepos {
	return &PrefixRepos{where: where, open: open, ready: map[string]storage.Backend{}}
}

// Where is the location served.
func (p *PrefixRepos) Where() string { return p.where }

// Open implements Repositories. A repository without a config object
// but with keys was created (its init is under way, perhaps through
// another server in front of the same bucket) and opens, as RootDir's
// do.
func (p *PrefixRepos) Open(ctx context.Context, name string) (storage.Backend, error) {
	if err := ValidRepoName(name); err != nil {
		return nil, err
	}
	p.mu.Lock()
	be, ok := p.ready[name]
	p.mu.Unlock()
	if ok {
		return be, nil
	}
	be, err := p.open(ctx, name, false)
	if errors.Is(err, storage.ErrNotExist) {
		be, err = p.initializing(ctx, name)
	}
	if err != nil {
		return nil, err
	}
	return p.keep(name, be), nil
}

// initializing opens repository name if it has keys but no config yet.
func (p *PrefixRepos) initializing(ctx context.Context, name string) (storage.Backend, error) {
	missing := fmt.Errorf("no repository %q on this server: %w", name, storage.ErrNotExist)
	be, err := p.open(ctx, name, true)
	if err != nil {
		return nil, missing
	}
	hasKeys := false
	err = be.List(ctx, storage.Key, func(storage.FileInfo) error { hasKeys = true; return errStopList })
	if (err != nil && !errors.Is(err, errStopList)) || !hasKeys {
		be.Close()
		return nil, missing
	}
	return be, nil
}

var errStopList = errors.New("stop")

func (p *PrefixRepos) keep(name string, be storage.Backend) storage.Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	if kept, ok := p.ready[name]; ok {
		be.Close()
		return kept
	}
	p.ready[name] = be
	return be
}

// Create implements Repositories.
func (p *PrefixRepos) Create(ctx context.Context, name string) (storage.Backend, error) {
	if err := ValidRepoName(name); err != nil {
		return nil, err
	}
	be, err := p.open(ctx, name, true)
	if errors.Is(err, storage.ErrExist) {
		return nil, fmt.Errorf("repository %q already exists: %w", name, storage.ErrExist)
	}
	if err != nil {
		return nil, fmt.Errorf("create repository %q: %w", name, err)
	}
	return p.keep(name, be), nil
}

// Sweep removes the leftovers of uploads cut off by a crash (incomplete
// multipart uploads older than an hour) in the repositories opened so
// far: their clients cannot (floe serve does it hourly).
func (p *PrefixRepos) Sweep() {
	p.mu.Lock()
	open := make(map[string]storage.Backend, len(p.ready))
	for n, be := range p.ready {
		open[n] = be
	}
	p.mu.Unlock()
	for name, be := range open {
		tf, ok := be.(storage.TempFiles)
		if !ok {
			continue
		}
		n, size, err := tf.RemoveTempFiles(time.Hour)
		if err != nil {
			fmt.Fprintf(os.Stderr, "floe serve: repository %s: removing leftover uploads: %v\n", name, err)
		}
		if n > 0 {
			fmt.Fprintf(os.Stderr, "floe serve: repository %s: removed %d leftover uploads (%d bytes) of cut-off uploads\n", name, n, size)
		}
	}
}
