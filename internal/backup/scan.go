package backup

// Walking the source: what is excluded (patterns, marker files, size),
// and the directory walk that hands files to the readers.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/floe-backup/floe/internal/fsmeta"
	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Excludes compiles exclude patterns: excludes as given, iexcludes
// regardless of case.
func Excludes(excludes, iexcludes []string) (*pathmatch.Matcher, error) {
	m, err := pathmatch.New(excludes)
	if err != nil {
		return nil, fmt.Errorf("exclude %w", err)
	}
	if err := m.Add(iexcludes, true); err != nil {
		return nil, fmt.Errorf("iexclude %w", err)
	}
	return m, nil
}

// marker is one Options.ExcludeIfPresent entry.
type marker struct{ name, header string }

func parseMarkers(list []string) ([]marker, error) {
	var out []marker
	for _, s := range list {
		name, header, _ := strings.Cut(s, ":")
		if name == "" || strings.Contains(name, "/") || name == "." || name == ".." {
			return nil, fmt.Errorf("exclude-if-present %q: want a file name, optionally followed by :HEADER", s)
		}
		out = append(out, marker{name, header})
	}
	return out, nil
}

// marked reports whether the directory src (where it is read) holds one
// of the Options.ExcludeIfPresent files.
func (a *archiver) marked(src string) bool {
	for _, m := range a.marks {
		if pathmatch.HasFile(a.shorten(src), m.name, m.header) {
			return true
		}
	}
	return false
}

// tooLarge reports whether Options.ExcludeLargerThan leaves node out.
func (a *archiver) tooLarge(node *snapshot.Node) bool {
	return a.opts.ExcludeLargerThan > 0 && node.Type == snapshot.TypeFile && node.Size > a.opts.ExcludeLargerThan
}

func (a *archiver) deviceOf(path string) uint64 {
	n, err := fsmeta.NodeFromPath(path, "x")
	if err != nil {
		return 0
	}
	return n.Device
}

// scan counts files and bytes for the progress ETA.
func (a *archiver) scan(ctx context.Context, paths []string) {
	p := a.opts.Progress
	// walk counts below the original path root, reading from its source;
	// a directory mapped elsewhere (Options.SourceRoot) is walked on its own.
	var walk func(root string)
	walk = func(root string) {
		src := a.src(root)
		filepath.WalkDir(src, func(sp string, d os.DirEntry, err error) error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			path := pathmatch.Rebase(sp, src, root)
			if err != nil || a.match.Match(path, d != nil && d.IsDir()) {
				if d != nil && d.IsDir() && path != root {
					return filepath.SkipDir
				}
				return nil
			}
			if d.IsDir() && path != root && a.src(path) != sp {
				walk(path)
				return filepath.SkipDir
			}
			if d.IsDir() && len(a.marks) > 0 && a.marked(sp) {
				return filepath.SkipDir
			}
			if d.Type().IsRegular() {
				if info, err := d.Info(); err == nil && (a.opts.ExcludeLargerThan == 0 || uint64(info.Size()) <= a.opts.ExcludeLargerThan) {
					p.Grow(1, info.Size())
				}
			}
			return nil
		})
	}
	for _, root := range paths {
		walk(root)
	}
	p.Counted()
}
