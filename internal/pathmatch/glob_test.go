package pathmatch

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/bmatcuk/doublestar/v4"
)

// oldMatch is how Matcher matched before glob.go: doublestar against the
// path, then against each of its parents, for every rule. It is the
// reference the automaton is compared with.
func oldMatch(m *Matcher, path string, isDir, parents bool) bool {
	rel := strings.TrimLeft(path, "/")
	selected := false
	for _, r := range m.rules {
		p := rel
		if r.ignoreCase {
			p = strings.ToLower(rel)
		}
		if oldRuleMatches(r.pattern, p, !r.dirOnly || isDir, parents) {
			selected = !r.negate
		}
	}
	return selected
}

func oldRuleMatches(pattern, p string, self, parents bool) bool {
	ds := func(p string) bool {
		ok, _ := doublestar.Match(pattern, p)
		return ok
	}
	if self && ds(p) {
		return true
	}
	for i := len(p) - 1; parents && i > 0; i-- {
		if p[i] == '/' && ds(p[:i]) {
			return true
		}
	}
	return false
}

// bracesExplain reports whether the automaton's answer got differs from
// doublestar's because of the one place where doublestar does not treat
// "{a,b}" as "a" or "b": when the path ends before a brace that follows
// other pattern characters, doublestar does not look into the brace
// ("x*{a,}" does not match "x", though "x*" does). Matching each of the
// pattern's expansions with doublestar gives the automaton's answer.
func bracesExplain(pattern, p string, self, parents, got bool) bool {
	if !strings.Contains(pattern, "{") {
		return false
	}
	x := expansion{seen: map[string]bool{}}
	if err := x.expand(pattern, 0); err != nil {
		return false
	}
	want := false
	for _, alt := range x.out {
		want = want || oldRuleMatches(alt, p, self, parents)
	}
	return want == got
}

// compareWithDoublestar checks Match and MatchSelf of the patterns
// against oldMatch, for a file and a directory.
func compareWithDoublestar(t *testing.T, patterns []string, ignoreCase bool, path string) {
	t.Helper()
	m := &Matcher{}
	if err := m.Add(patterns, ignoreCase); err != nil {
		t.Fatal(err)
	}
	for _, isDir := range []bool{false, true} {
		for _, parents := range []bool{false, true} {
			got, want := m.match(path, isDir, parents), oldMatch(m, path, isDir, parents)
			if got == want {
				continue
			}
			if len(m.rules) == 1 {
				r := m.rules[0]
				p := strings.TrimLeft(path, "/")
				if r.ignoreCase {
					p = strings.ToLower(p)
				}
				if bracesExplain(r.pattern, p, !r.dirOnly || isDir, parents, got != r.negate) {
					continue
				}
			}
			shown := path
			if len(shown) > 100 {
				shown = shown[:50] + "..." + shown[len(shown)-50:]
			}
			t.Errorf("%q (ignore case %v) match(%q, dir %v, parents %v) = %v, doublestar says %v",
				patterns, ignoreCase, shown, isDir, parents, got, want)
		}
	}
}

// The automaton gives doublestar's answers, on the patterns restic users
// write and on its corner cases.
func TestAgainstDoublestar(t *testing.T) {
	patterns := []string{
		// one component
		"*.tmp", "cache", "cache/", "!keep", "[ab]?c", "{x,y}z", "*", "Cache", ".*",
		// several
		"ssh/*", "/etc/ssh/*", "a/**/b", "/home/*/.cache", "foo/**/bar", "/srv/**/ssh_config",
		"**/x", "/**/y", "/", "a/**", "a/**/", "**", "/a/b/c", "a/*/c/", "{a,b}/c", "a{/,}**/b",
		"*{*,x}", "x*{a,}", "{a/**/,b}", "a/{b,{c,d}/e}", "[/]x", "a[^x]b", "a**/b", "***/a",
		`a\*b`, `a\/**/b`, "[a-c-e]", "[!a-c]x", `[\]]`, "a/**/**/b", "**/**", "d/**/d/**/x",
		"\xff", "?/?", "[^/]/*", "{,a}/b", "a//b", "a/**/b/**", "*/", "é/ü",
	}
	paths := []string{
		"/", "/a", "/a/b", "/a/b/c", "/a/x/b", "/a/x/y/b/z", "/cache", "/a/cache/b", "/x/abc/d",
		"/yz", "/a/b/c.tmp", "/a/.git/x", "/CACHE/x", "/keep", "/a/keep/b", "/a.tmp/b",
		"/etc/ssh/sshd_config", "/etc/ssh", "/home/ann/.cache/thumbs", "/home/ann/src/.cache",
		"/srv/a/b/ssh_config", "/dir1/foo/dir2/bar/file", "/x", "/xa", "/xx", "/a/x", "/ax/b",
		"/a*b", "/a//b", "/d/d/d/x", "/d/e/d/x/f", "/\xfe", "/\xef\xbf\xbd", "/a/b/", "/é/ü/x",
		"/a]b", "/]", "/e", "/-/x", "/b/c", "/a/e/c", "/a/c/e",
	}
	for _, ignoreCase := range []bool{false, true} {
		for _, pat := range patterns {
			for _, p := range paths {
				compareWithDoublestar(t, []string{pat}, ignoreCase, p)
			}
		}
	}
	// rules after each other: the last that matches decides
	for _, p := range paths {
		compareWithDoublestar(t, []string{"a/**", "!a/b/**", "*/b/c"}, false, p)
	}
}

// FuzzAgainstDoublestar compares the automaton with doublestar on any
// pattern and path.
func FuzzAgainstDoublestar(f *testing.F) {
	f.Add("foo/**/bar", "/dir1/foo/dir2/bar/file", false)
	f.Add("/home/*/.cache", "/home/ann/.cache/x", false)
	f.Add("a{/,}**/b", "/a/x/b", false)
	f.Add("{a,b}/[c-d]?", "/a/c1", true)
	f.Add("x*{a,}", "/x", false)
	f.Add(`[!\]]/**`, "/a/b", false)
	f.Fuzz(func(t *testing.T, pattern, path string, ignoreCase bool) {
		m := &Matcher{}
		if err := m.Add([]string{pattern}, ignoreCase); err != nil {
			return
		}
		compareWithDoublestar(t, []string{pattern}, ignoreCase, path)
		// and the clean absolute paths walks give
		if clean := "/" + strings.Trim(path, "/"); clean != path && !strings.Contains(clean, "//") {
			compareWithDoublestar(t, []string{pattern}, ignoreCase, clean)
		}
	})
}

func TestBraces(t *testing.T) {
	for pattern, want := range map[string]string{
		"a":               "a",
		"{a,b}":           "a b",
		"x{a,{b,c}d}y":    "xay xbdy xcdy",
		`\{a,b}`:          `\{a,b}`,
		"[{]{a,}":         "[{]a [{]",
		"{[,}],x}":        "[,}] x",
		"{a,a}":           "a",
		"{,}":             "",
		"{a,b}/{c,d}":     "a/c a/d b/c b/d",
		`{a\,b,c}`:        `a\,b c`,
		"**/{a/**/,b}/**": "**/a/**//** **/b/**",
	} {
		x := expansion{seen: map[string]bool{}}
		if err := x.expand(pattern, 0); err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(x.out, " "); got != want {
			t.Errorf("expand %q = %q, want %q", pattern, got, want)
		}
	}
	// Doublestar tried alternatives one after another for each path; this
	// many were a slow match for every path, and now are refused.
	many := strings.Repeat("{a,b}", 11) // 2048 patterns
	if _, err := New([]string{many}); err == nil || !strings.Contains(err.Error(), "more than 1024") {
		t.Errorf("%s: %v", many, err)
	}
	if _, err := New([]string{strings.Repeat("{a,b}", 10)}); err != nil {
		t.Error(err)
	}
	if _, err := New([]string{strings.Repeat("{a,a}", 30)}); err == nil {
		t.Error("2^30 duplicates expanded")
	}
}

// A hostile snapshot can hold a chain of directories thousands of levels
// deep. Tried against every parent of every path, a pattern of several
// components took time cubic in the depth for a walk of it (each match a
// doublestar run per parent, each as long as the path); read once per
// path, the work is linear in the path, quadratic for the walk, like
// building the paths themselves.
func TestDeepChainLinear(t *testing.T) {
	const depth = 3000
	patterns := []string{
		"ssh/*", "a/**/b", "/home/*/.cache", "d/**/d/**/x", "/d/*/d/**/fifo", "{a,d}/d/*.tmp",
		"*/d/", "d*/d?/[de]", "*.tmp",
	}
	for _, pat := range patterns {
		m, err := New([]string{pat})
		if err != nil {
			t.Fatal(err)
		}
		r := m.rules[0]
		// each rune steps at most every state once
		perRune := 2*len(r.prog.toks) + 1
		// a walk down the chain matches each level's path
		var b strings.Builder
		totalLen, totalWork := 0, 0
		for level := 1; level <= depth; level++ {
			b.WriteString("/d")
			p := b.String()
			_, work := r.prog.match(p[1:], true, true) // Match(p, true)
			if work > perRune*len(p) {
				t.Fatalf("%q at depth %d: %d steps for a path of %d bytes, more than %d a byte", pat, level, work, len(p), perRune)
			}
			totalLen += len(p)
			totalWork += work
		}
		t.Logf("%q: a walk of %d levels (%d bytes of paths): %d steps", pat, depth, totalLen, totalWork)
		// the deepest path of a 1 MB snapshot (255-byte names): 15 s a
		// match for "*.tmp" before it was read one component at a time
		deep := "/" + strings.Repeat(strings.Repeat("d", 255)+"/", depth) + "f.tmp"
		if _, work := r.prog.match(deep[1:], true, true); work > perRune*len(deep) {
			t.Errorf("%q: %d steps for a path of %d bytes", pat, work, len(deep))
		}
	}
}

// "a" and nine runes before the end of a component: a component of a's and b's
// takes its automaton through up to 2^10 sets, more than the cache of sets
// holds. The match goes on without the cache, with the same answers.
func TestManySets(t *testing.T) {
	m, err := New([]string{"*a?????????", "!*a?????????/b"})
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	comp := make([]byte, 3000)
	for i := range comp {
		comp[i] = "ab"[rnd.IntN(2)]
	}
	comp[2980], comp[2990] = 'a', 'a'
	if m.Match("/"+string(comp), false) != true || m.Match("/"+string(comp)+"/b", false) != false {
		t.Error("wrong answers")
	}
	for _, p := range []string{"/" + string(comp), "/" + string(comp[:2990]) + "/x/b", "/" + string(comp) + "/b"} {
		compareWithDoublestar(t, []string{"*a?????????", "!*a?????????/b"}, false, p)
	}
	pr := m.rules[0].prog
	sc := pr.newScratch()
	pr.run(sc, string(comp), true, true)
	if sc.flushes == 0 {
		t.Errorf("%d sets cached, none thrown away", len(sc.dfa))
	}
	if _, work := pr.match(string(comp), true, true); work > (2*len(pr.toks)+1)*len(comp) {
		t.Errorf("%d steps for %d bytes", work, len(comp))
	}
}

// Walkers match concurrently; each match has scratch space of its own.
func TestConcurrentMatch(t *testing.T) {
	m, err := New([]string{"ssh/*", "!*.pub", "/home/*/.cache", "a/**/b"})
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{"/etc/ssh/x", "/etc/ssh/x.pub", "/home/ann/.cache/y", "/a/q/b/c", "/a/q/c", "/ssh"}
	want := make([]bool, len(paths))
	for i, p := range paths {
		want[i] = m.Match(p, false)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 1000; n++ {
				i := n % len(paths)
				if got := m.Match(paths[i], false); got != want[i] {
					t.Errorf("Match(%q) = %v, alone %v", paths[i], got, want[i])
					return
				}
			}
		}()
	}
	wg.Wait()
}

func ExampleMatcher() {
	m, _ := New([]string{"/home/*/.cache", "ssh/*", "!ssh/known_hosts"})
	for _, p := range []string{"/home/ann/.cache/x", "/etc/ssh/sshd_config", "/etc/ssh/known_hosts", "/etc/ssh"} {
		fmt.Println(p, m.Match(p, false))
	}
	// Output:
	// /home/ann/.cache/x true
	// /etc/ssh/sshd_config true
	// /etc/ssh/known_hosts false
	// /etc/ssh false
}
