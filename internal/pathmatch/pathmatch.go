// Package pathmatch decides which paths a pattern list selects, for backup
// excludes, restore includes and excludes, and find.
package pathmatch

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// CacheTag is the name of the file that marks a cache directory.
const CacheTag = "CACHEDIR.TAG"

const cacheTagSignature = "Signature: 8a477f597d28d172789f06886806bc55"

// HasCacheTag reports whether dir has a CACHEDIR.TAG with the standard
// signature (https://bford.info/cachedir/).
func HasCacheTag(dir string) bool {
	f, err := os.Open(filepath.Join(dir, CacheTag))
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, len(cacheTagSignature))
	n, _ := f.Read(buf)
	return string(buf[:n]) == cacheTagSignature
}

// Matcher decides which paths a list of patterns selects. A pattern without a slash
// matches a base name anywhere ("*.tmp", "node_modules"); a pattern with a
// slash matches an absolute path or any of its parent directories
// ("/var/cache", "/home/*/.cache"). Patterns use filepath.Match syntax; a
// leading "!" re-includes what an earlier pattern excluded.
type Matcher struct {
	rules []rule
}

type rule struct {
	pattern string
	negate  bool
	full    bool
}

// New checks and compiles patterns.
func New(patterns []string) (*Matcher, error) {
	m := &Matcher{}
	for _, p := range patterns {
		p = strings.TrimSpace(p)
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		r := rule{}
		if strings.HasPrefix(p, "!") {
			r.negate = true
			p = p[1:]
		}
		r.full = strings.Contains(p, "/")
		r.pattern = strings.TrimSuffix(p, "/")
		if _, err := filepath.Match(r.pattern, ""); err != nil {
			return nil, fmt.Errorf("exclude pattern %q: %w", p, err)
		}
		m.rules = append(m.rules, r)
	}
	return m, nil
}

// ReadFile reads patterns, one per line (# comments).
func ReadFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read exclude file: %w", err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out, sc.Err()
}

// Empty reports whether there are no patterns.
func (m *Matcher) Empty() bool { return m == nil || len(m.rules) == 0 }

// Match reports whether the absolute path is selected: by the last pattern
// that matches it, unless that pattern is negated.
func (m *Matcher) Match(path string) bool {
	if m.Empty() {
		return false
	}
	excluded := false
	base := filepath.Base(path)
	for _, r := range m.rules {
		if r.matches(path, base) {
			excluded = !r.negate
		}
	}
	return excluded
}

func (r rule) matches(path, base string) bool {
	if !r.full {
		ok, _ := filepath.Match(r.pattern, base)
		return ok
	}
	// the path itself or any of its parents
	for p := path; p != "/" && p != "."; p = filepath.Dir(p) {
		if ok, _ := filepath.Match(r.pattern, p); ok {
			return true
		}
	}
	return false
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
