// Package pathmatch decides which paths a pattern list selects, for backup
// excludes, restore includes and excludes, and find. The pattern syntax is
// github.com/bmatcuk/doublestar's (see docs/DEPENDENCIES.md), which checks
// patterns and expands --files-from globs; matching is this package's own
// automaton with doublestar's answers (glob.go), in time linear in a
// path's length, whatever the path. This package adds the rules restic
// users know (see Matcher).
package pathmatch

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
)

// CacheTag is the name of the file that marks a cache directory.
const CacheTag = "CACHEDIR.TAG"

const cacheTagSignature = "Signature: 8a477f597d28d172789f06886806bc55"

// HasCacheTag reports whether dir has a CACHEDIR.TAG with the standard
// signature (https://bford.info/cachedir/).
func HasCacheTag(dir string) bool {
	return HasFile(dir, CacheTag, cacheTagSignature)
}

// HasFile reports whether dir holds a file called name that starts with
// header (any content when header is empty).
func HasFile(dir, name, header string) bool {
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return false
	}
	defer f.Close()
	if header == "" {
		return true
	}
	buf := make([]byte, len(header))
	n, _ := f.Read(buf)
	return string(buf[:n]) == header
}

// Matcher decides which paths a list of patterns selects. The rules are
// restic's, with gitignore's meaning of a trailing slash:
//
//   - Patterns match whole path components: "foo" matches /a/foo and
//     /foo/b, never /a/foobar.
//   - A pattern without a leading "/" matches at any depth ("*.tmp",
//     "ssh/*", "foo/**/bar"); one with a leading "/" is anchored at the
//     root ("/var/cache", "/home/*/.cache").
//   - "*", "?" and "[...]" never match "/"; "**" matches any number of
//     directories, none included; "{a,b}" matches a or b.
//   - A pattern that matches a directory selects everything below it too.
//   - A trailing "/" matches directories only ("cache/").
//   - A leading "!" re-includes what an earlier pattern selected; the last
//     pattern that matches a path decides.
//
// A pattern's braces may make at most 1,024 patterns ("{a,b}" makes two).
// Matching a path costs time linear in its length, its parents included.
//
// Empty lines and lines starting with "#" are ignored.
type Matcher struct {
	rules []rule
}

type rule struct {
	text       string   // as given, for messages
	pattern    string   // doublestar pattern against a path without its leading "/"
	prog       *program // pattern, compiled
	negate     bool
	dirOnly    bool
	anchored   bool
	ignoreCase bool
}

// New checks and compiles patterns.
func New(patterns []string) (*Matcher, error) {
	m := &Matcher{}
	return m, m.Add(patterns, false)
}

// Add appends patterns to m; with ignoreCase they match paths regardless
// of case (restic's --iexclude).
func (m *Matcher) Add(patterns []string, ignoreCase bool) error {
	for _, p := range patterns {
		p = strings.TrimSpace(p)
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		r := rule{text: p, ignoreCase: ignoreCase}
		if strings.HasPrefix(p, "!") {
			r.negate = true
			p = p[1:]
		}
		if strings.HasPrefix(p, "/") {
			r.anchored = true
			p = strings.TrimLeft(p, "/")
		}
		if strings.HasSuffix(p, "/") {
			r.dirOnly = true
			p = strings.TrimRight(p, "/")
		}
		if !r.anchored && p != "" {
			p = "**/" + p
		}
		if p == "" {
			if !r.anchored {
				return fmt.Errorf("pattern %q: empty", r.text)
			}
			p = "**" // "/" selects everything
		}
		if ignoreCase {
			p = strings.ToLower(p)
		}
		if !doublestar.ValidatePattern(p) {
			return fmt.Errorf("pattern %q: %w", r.text, doublestar.ErrBadPattern)
		}
		prog, err := compile(p)
		if err != nil {
			return fmt.Errorf("pattern %q: %w", r.text, err)
		}
		r.pattern, r.prog = p, prog
		m.rules = append(m.rules, r)
	}
	return nil
}

// ReadFile reads patterns, one per line (# comments). As in restic's
// exclude files, environment variables are expanded ("$HOME/.cache",
// "${USER}"); "$$" is a literal "$".
func ReadFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pattern file: %w", err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		out = append(out, os.Expand(sc.Text(), func(name string) string {
			if name == "$" {
				return "$"
			}
			return os.Getenv(name)
		}))
	}
	return out, sc.Err()
}

// Empty reports whether there are no patterns.
func (m *Matcher) Empty() bool { return m == nil || len(m.rules) == 0 }

// Match reports whether the absolute path (a directory if isDir) is
// selected, itself or through one of its parent directories: by the last
// pattern that matches it, unless that pattern is negated.
func (m *Matcher) Match(path string, isDir bool) bool {
	return m.match(path, isDir, true)
}

// MatchSelf is Match without the parent directories: whether the path
// itself is what a pattern names (find lists the matching entries, not
// everything below them).
func (m *Matcher) MatchSelf(path string, isDir bool) bool {
	return m.match(path, isDir, false)
}

func (m *Matcher) match(path string, isDir, parents bool) bool {
	if m.Empty() {
		return false
	}
	rel := strings.TrimLeft(path, "/")
	lower := ""
	selected := false
	for _, r := range m.rules {
		p := rel
		if r.ignoreCase {
			if lower == "" {
				lower = strings.ToLower(rel)
			}
			p = lower
		}
		if r.matches(p, isDir, parents) {
			selected = !r.negate
		}
	}
	return selected
}

// matches tests the path p (without its leading "/") and, with parents,
// each of its parent directories, in one pass over p (see glob.go).
func (r rule) matches(p string, isDir, parents bool) bool {
	ok, _ := r.prog.match(p, !r.dirOnly || isDir, parents)
	return ok
}

func match(pattern, p string) bool {
	ok, _ := doublestar.Match(pattern, p) // patterns are validated in Add
	return ok
}

// Unmatchable returns, for each pattern that can never select anything at
// or below the absolute paths roots, a sentence saying why: an anchored
// pattern outside every root, or a component like "." or "..", which
// clean paths never have. Such a pattern is most likely a mistake that
// would otherwise go unnoticed.
func (m *Matcher) Unmatchable(roots []string) []string {
	if m == nil {
		return nil
	}
	var out []string
	for _, r := range m.rules {
		comps := strings.Split(r.pattern, "/")
		bad := ""
		for _, c := range comps {
			switch c {
			case ".", "..", "":
				bad = fmt.Sprintf("pattern %q can never match: paths are matched absolute and clean, without %q components", r.text, c)
			case "~":
				bad = fmt.Sprintf("pattern %q can never match your home directory: \"~\" is not expanded (write the path, or $HOME in the shell)", r.text)
			}
			if bad != "" {
				break
			}
		}
		if bad == "" && r.anchored && len(roots) > 0 {
			reach := false
			for _, root := range roots {
				if r.reaches(strings.TrimLeft(root, "/")) {
					reach = true
					break
				}
			}
			if !reach {
				bad = fmt.Sprintf("pattern %q can never match: it is outside the paths backed up (%s)", r.text, strings.Join(roots, " "))
			}
		}
		if bad != "" {
			out = append(out, bad)
		}
	}
	return out
}

// reaches reports whether the anchored rule can match root (without its
// leading "/"), something below it or one of its parents: component by
// component, until the pattern has "**", one side ends, or a component
// cannot match.
func (r rule) reaches(root string) bool {
	if root == "" {
		return true
	}
	pc := strings.Split(r.pattern, "/")
	rc := strings.Split(root, "/")
	if r.ignoreCase {
		rc = strings.Split(strings.ToLower(root), "/")
	}
	for i := 0; i < len(pc) && i < len(rc); i++ {
		if strings.Contains(pc[i], "**") {
			return true
		}
		if !match(pc[i], rc[i]) {
			return false
		}
	}
	return true
}

// Within reports whether the clean absolute path p is dir or below it.
func Within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

// Rebase turns p, which is Within from, into the same path within to.
func Rebase(p, from, to string) string {
	if p == from {
		return to
	}
	rest := p
	if from != "/" {
		rest = p[len(from):]
	}
	if to == "/" {
		return rest
	}
	return to + rest
}

// HasMeta reports whether pattern has special characters for Glob.
func HasMeta(pattern string) bool {
	return strings.ContainsAny(pattern, `*?[{\`)
}

// Glob returns the paths matching pattern (absolute, or relative to the
// working directory), with "**" for any number of directories; a pattern
// without special characters is returned as it is, whether it exists or
// not.
func Glob(pattern string) ([]string, error) {
	if !HasMeta(pattern) {
		return []string{pattern}, nil
	}
	out, err := doublestar.FilepathGlob(pattern, doublestar.WithNoFollow())
	if err != nil {
		return nil, fmt.Errorf("pattern %q: %w", pattern, err)
	}
	return out, nil
}
