package backup

// Where an original path is read: the paths given, Options.SourceRoot
// (a file system snapshot mounted elsewhere), and anchors that keep long
// paths below PATH_MAX; errors name the original path.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/floe-backup/floe/internal/pathmatch"
)

// sourceMapping is one entry of Options.SourceRoot.
type sourceMapping struct{ from, to string }

// CleanPaths makes the paths absolute and drops those inside another.
func CleanPaths(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, errors.New("nothing to back up: give at least one path")
	}
	var out []string
	for _, p := range in {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, fmt.Errorf("path %s: %w", p, err)
		}
		if _, err := os.Lstat(abs); err != nil {
			return nil, fmt.Errorf("path %s: %w", p, err)
		}
		out = append(out, abs)
	}
	sort.Strings(out)
	kept := out[:0]
	for _, p := range out {
		if len(kept) > 0 {
			last := kept[len(kept)-1]
			if p == last || last == "/" || strings.HasPrefix(p, last+"/") {
				continue
			}
		}
		kept = append(kept, p)
	}
	return kept, nil
}

// sourceMappings checks Options.SourceRoot and sorts it longest first.
func sourceMappings(m map[string]string) ([]sourceMapping, error) {
	var out []sourceMapping
	for from, to := range m {
		if !filepath.IsAbs(from) || filepath.Clean(from) != from {
			return nil, fmt.Errorf("source root: %q is not an absolute, clean path", from)
		}
		if !filepath.IsAbs(to) {
			return nil, fmt.Errorf("source root of %s: %q is not an absolute path", from, to)
		}
		out = append(out, sourceMapping{from, filepath.Clean(to)})
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i].from) > len(out[j].from) })
	return out, nil
}

// src returns where to read the original path p: mapped by
// Options.SourceRoot, and shortened through an anchor when it is long.
func (a *archiver) src(p string) string {
	return a.shorten(a.mapSource(p))
}

// mapSource returns where the original path p is read, by
// Options.SourceRoot, before any shortening.
func (a *archiver) mapSource(p string) string {
	for _, m := range a.sources {
		if pathmatch.Within(p, m.from) {
			return pathmatch.Rebase(p, m.from, m.to)
		}
	}
	return p
}

// pathJoin joins a directory and a name as the walk does ("/" + name at
// the root).
func pathJoin(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}

// anchorAfter is the path length beyond which a directory becomes an
// anchor: its children's paths then stay far below PATH_MAX (4096), as a
// name is at most 255 bytes.
const anchorAfter = 1024

// shorten rewrites a long path to start at its nearest anchor.
func (a *archiver) shorten(full string) string {
	if len(full) <= anchorAfter {
		return full
	}
	a.anchorMu.Lock()
	defer a.anchorMu.Unlock()
	for dir := filepath.Dir(full); len(dir) > 1; dir = filepath.Dir(dir) {
		if f, ok := a.anchors[dir]; ok {
			return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) + full[len(dir):]
		}
	}
	return full
}

// anchor opens dir (an original path) as an anchor if its read path is
// long; the returned function closes it once its subtree is saved.
func (a *archiver) anchor(dir string) func() {
	sp := a.src(dir)
	if len(sp) <= anchorAfter {
		return func() {}
	}
	f, err := os.Open(sp)
	if err != nil {
		return func() {} // reading the directory reports the error
	}
	full := dir
	for _, m := range a.sources {
		if pathmatch.Within(dir, m.from) {
			full = pathmatch.Rebase(dir, m.from, m.to)
			break
		}
	}
	a.anchorMu.Lock()
	if a.anchors == nil {
		a.anchors = map[string]*os.File{}
	}
	a.anchors[full] = f
	a.anchorMu.Unlock()
	return func() {
		a.anchorMu.Lock()
		delete(a.anchors, full)
		a.anchorMu.Unlock()
		f.Close()
	}
}

// origErr rewrites an error about src, the location read for the original
// path orig, to name orig: users know their files by their real paths, not
// by a temporary snapshot mount.
func origErr(err error, orig, src string) error {
	if err == nil || orig == src {
		return err
	}
	var pe *os.PathError
	if errors.As(err, &pe) && pe == err && pathmatch.Within(pe.Path, src) {
		return &os.PathError{Op: pe.Op, Path: pathmatch.Rebase(pe.Path, src, orig), Err: pe.Err}
	}
	if msg := err.Error(); strings.Contains(msg, src) {
		return &renamedError{msg: strings.ReplaceAll(msg, src, orig), err: err}
	}
	return err
}

// renamedError is an error whose message names the original path.
type renamedError struct {
	msg string
	err error
}

func (e *renamedError) Error() string { return e.msg }

func (e *renamedError) Unwrap() error { return e.err }
