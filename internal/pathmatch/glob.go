package pathmatch

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// This file matches a pattern against a path and all its parent
// directories in one pass over the path, in time linear in its length
// (times the pattern's length). doublestar, which it replaces for
// matching, answers one path at a time and backtracks: trying a pattern
// against every parent of every path of a walk took time cubic in the
// depth of a directory chain, and a hostile snapshot can hold a chain
// thousands of levels deep (docs/SECURITY.md).
//
// The answers are doublestar's (v4, Match), which restic's rules were
// written against and which FuzzAgainstDoublestar compares with:
//
//   - "{a,b}" is expanded into whole patterns first, as doublestar does
//     when it meets one, so that what an alternative makes with its
//     neighbours ("a{/,}**/b", "*{*,x}") means the same.
//   - Of a brace-free pattern, "*" (or "**" not a whole component) is any
//     runes but "/"; "?" is one rune but "/"; "[...]" one rune of the
//     class (which may be "/"); "**/" starting a component is nothing or
//     anything ending in "/"; "**" as the last component is anything.
//   - When the path ends, the pattern matches if what is left of it is
//     "", "*", "**", "/**", "**/" or "/**/": "a/**" matches "a".
//
// The pattern is a small nondeterministic automaton, run on all its states
// at once (Thompson's construction): no backtracking, so no path can make
// it slow. The sets of states a match meets are kept, with the moves
// between them, as a deterministic automaton built as paths need it (as
// RE2 does), so most bytes of most paths cost one table lookup.

// maxAlternatives bounds the patterns one pattern's braces expand to.
// Matching costs time in proportion to their total length; doublestar
// tried them one after another for each path, and a pattern of many
// braces ("{a,b}{c,d}..." doubles with each) made every match slow.
const maxAlternatives = 1024

type tokKind uint8

const (
	tLit   tokKind = iota // the rune r
	tAny                  // "?": a rune but "/"
	tClass                // "[...]"
	tStar                 // "*": any runes but "/", none included
	tDS                   // "**/" starting a component: nothing, or anything ending in "/"
	tAll                  // "**" as the last component: anything
	tEnd                  // the end of one alternative
)

type token struct {
	kind  tokKind
	r     rune
	class *charClass
}

// charClass is "[...]": runes lo..hi of one of the ranges (a single rune is
// a range of one), or of none of them when negate.
type charClass struct {
	negate bool
	ranges [][2]rune
}

func (c *charClass) has(r rune) bool {
	for _, rg := range c.ranges {
		if rg[0] <= r && r <= rg[1] {
			return !c.negate
		}
	}
	return c.negate
}

// program is a compiled pattern: the tokens of each alternative, one after
// the other, each alternative ended by a tEnd.
//
// The automaton's states: P(j) = j for 0 <= j < len(toks), "token j is
// next"; L(j) = len(toks)+j for a tStar or tDS token j, "inside the
// runes token j matches"; all = 2*len(toks), "everything matches" (after
// a tAll met a rune).
type program struct {
	toks   []token
	starts []int32
	// zero[j]: the rest of the pattern from token j matches the end of a
	// path (it is one of doublestar's zero-length patterns).
	zero    []bool
	scratch sync.Pool // *nfaScratch
}

// nfaScratch is what a match works with: state sets, and the sets met
// before as states of a deterministic automaton, with the moves between
// them on ASCII runes as they were found (a lazily built DFA, as in RE2):
// most paths are then read at a table lookup a byte. It is pooled because
// Matcher is used by concurrent walkers, and each has its own.
type nfaScratch struct {
	next    []int32  // the set being made
	seen    []uint32 // seen[s] == gen: s is in next
	gen     uint32
	dfa     []*dfaState
	index   map[string]int32 // a set's key -> its place in dfa
	start   int32            // the first set's place in dfa, or -1
	flushes int              // times the cache started over
	key     []byte
	work    int // states stepped and moves looked up, for tests
}

// dfaState is a set of the automaton's states.
type dfaState struct {
	set    []int32              // sorted
	accept bool                 // the path read so far matches
	dsOnly bool                 // the set is inside one "**/" only: runes but "/" leave it
	next   [utf8.RuneSelf]int32 // 1 + the place of the set after that byte; 0: not known yet
}

// maxDFAStates bounds a scratch's cache of sets; when it is full the cache
// starts over. A pattern's sets can be many (exponential in its length),
// but a path meets at most one a byte.
const maxDFAStates = 256

// compile expands pattern's braces and compiles each alternative. pattern
// must have passed doublestar.ValidatePattern.
func compile(pattern string) (*program, error) {
	x := expansion{seen: map[string]bool{}}
	if err := x.expand(pattern, 0); err != nil {
		return nil, err
	}
	pr := &program{}
	for _, a := range x.out {
		pr.starts = append(pr.starts, int32(len(pr.toks)))
		if err := pr.addAlternative(a); err != nil {
			return nil, err
		}
	}
	return pr, nil
}

// expansion collects the brace-free patterns a pattern stands for.
type expansion struct {
	out    []string
	seen   map[string]bool
	leaves int // patterns made, duplicates included ("{a,a}")
}

// expand adds the brace-free patterns p stands for. from is where p's
// first brace may be (p[:from] has none). Like doublestar it finds the
// braces among p's tokens: a brace escaped ("\{") or in a class ("[{]")
// is a plain character.
func (x *expansion) expand(p string, from int) error {
	for i := from; i < len(p); i++ {
		switch p[i] {
		case '\\':
			i++
		case '[':
			i += classEnd(p[i:])
		case '{':
			end := i + 1 + closingBrace(p[i+1:])
			if end <= i {
				return fmt.Errorf("unclosed {")
			}
			body := p[i+1 : end]
			for {
				comma := nextAlternative(body)
				alt := body
				if comma >= 0 {
					alt = body[:comma]
				}
				if err := x.expand(p[:i]+alt+p[end+1:], i); err != nil {
					return err
				}
				if comma < 0 {
					return nil
				}
				body = body[comma+1:]
			}
		}
	}
	if x.leaves++; x.leaves > maxAlternatives {
		return fmt.Errorf("braces make more than %d patterns", maxAlternatives)
	}
	if !x.seen[p] {
		x.seen[p] = true
		x.out = append(x.out, p)
	}
	return nil
}

// classEnd returns the index of the "]" that ends the class s starts with
// (s[0] == '['), or len(s)-1 if none does (invalid patterns are refused
// before).
func classEnd(s string) int {
	for i := 1; i < len(s); i++ {
		if s[i] == '\\' {
			i++
		} else if s[i] == ']' {
			return i
		}
	}
	return len(s) - 1
}

// closingBrace returns the index in s of the "}" that closes a "{" just
// before s, or -1.
func closingBrace(s string) int { return scanBrace(s, false) }

// nextAlternative returns the index of the first "," in the body of a
// brace that separates alternatives (not one inside a nested brace or a
// class), or -1.
func nextAlternative(s string) int { return scanBrace(s, true) }

// scanBrace reads the body of a brace, s, skipping escapes, classes and
// nested braces, to the "}" that closes it or, when comma, to the first
// "," of its own before that; it returns that index, or -1.
func scanBrace(s string, comma bool) int {
	depth := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '[':
			i += classEnd(s[i:])
		case '{':
			depth++
		case '}':
			if depth == 0 {
				if comma {
					return -1
				}
				return i
			}
			depth--
		case ',':
			if comma && depth == 0 {
				return i
			}
		}
	}
	return -1
}

// addAlternative compiles the brace-free pattern p, token by token as
// doublestar reads it.
func (pr *program) addAlternative(p string) error {
	segStart := true // at the start of a component: "**" may be one
	for i := 0; i < len(p); {
		pr.zero = append(pr.zero, zeroLength(p[i:]))
		switch p[i] {
		case '*':
			i++
			if i < len(p) && p[i] == '*' {
				i++
				if segStart && i == len(p) {
					pr.toks = append(pr.toks, token{kind: tAll})
					continue
				}
				if segStart && p[i] == '/' {
					i++
					pr.toks = append(pr.toks, token{kind: tDS})
					continue // still at the start of a component
				}
			}
			pr.toks = append(pr.toks, token{kind: tStar})
			segStart = false
		case '?':
			i++
			pr.toks = append(pr.toks, token{kind: tAny})
			segStart = false
		case '[':
			c, n, err := parseClass(p[i:])
			if err != nil {
				return err
			}
			i += n
			pr.toks = append(pr.toks, token{kind: tClass, class: c})
			segStart = false
		default:
			if p[i] == '\\' {
				i++
				if i == len(p) {
					return fmt.Errorf("trailing \\")
				}
			}
			r, n := utf8.DecodeRuneInString(p[i:])
			i += n
			pr.toks = append(pr.toks, token{kind: tLit, r: r})
			segStart = r == '/'
		}
	}
	pr.zero = append(pr.zero, true)
	pr.toks = append(pr.toks, token{kind: tEnd})
	return nil
}

// zeroLength reports whether rest, what is left of a brace-free pattern
// when the path ends, lets it match: doublestar's isZeroLengthPattern.
func zeroLength(rest string) bool {
	switch rest {
	case "", "*", "**", "/**", "**/", "/**/":
		return true
	}
	return false
}

// parseClass reads the class s starts with (s[0] == '[') as doublestar's
// Match does, and returns it and its length.
func parseClass(s string) (*charClass, int, error) {
	c := &charClass{}
	i := 1
	if i < len(s) && (s[i] == '!' || s[i] == '^') {
		c.negate = true
		i++
	}
	if i >= len(s) || s[i] == ']' {
		return nil, 0, fmt.Errorf("empty character class")
	}
	last := utf8.MaxRune // the previous rune, which a "-" makes a range's start
	for i < len(s) && s[i] != ']' {
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		if last < utf8.MaxRune && r == '-' && i < len(s) && s[i] != ']' {
			if s[i] == '\\' {
				i++
			}
			hi, n := utf8.DecodeRuneInString(s[i:])
			i += n
			c.ranges = append(c.ranges, [2]rune{last, hi})
			last = utf8.MaxRune
			continue
		}
		if r == '\\' {
			r, n = utf8.DecodeRuneInString(s[i:])
			i += n
		}
		c.ranges = append(c.ranges, [2]rune{r, r})
		last = r
	}
	if i >= len(s) {
		return nil, 0, fmt.Errorf("unclosed character class")
	}
	return c, i + 1, nil
}

// match reports whether the pattern matches p (when self) or one of p's
// parent directories (when parents): p[:i] for each i > 0 with p[i] ==
// '/'. It reads p once, from its start; it also returns how much work
// that took (sets stepped and moves looked up), which tests bound.
func (pr *program) match(p string, self, parents bool) (bool, int) {
	sc, _ := pr.scratch.Get().(*nfaScratch)
	if sc == nil {
		sc = pr.newScratch()
	}
	sc.work = 0
	ok := pr.run(sc, p, self, parents)
	work := sc.work
	pr.scratch.Put(sc)
	return ok, work
}

func (pr *program) newScratch() *nfaScratch {
	return &nfaScratch{
		next:  make([]int32, 0, 2*len(pr.toks)+1),
		seen:  make([]uint32, 2*len(pr.toks)+1),
		index: map[string]int32{},
		start: -1,
	}
}

func (pr *program) run(sc *nfaScratch, p string, self, parents bool) bool {
	if sc.start < 0 {
		pr.begin(sc)
		for _, s := range pr.starts {
			pr.push(sc, s)
		}
		sc.start = pr.intern(sc)
	}
	d, flushes := sc.start, sc.flushes
	for i := 0; i < len(p); {
		ds := sc.dfa[d]
		if ds.dsOnly {
			// only inside a "**/" (an unanchored pattern's start, between
			// components): the runes up to the next "/" change nothing
			k := strings.IndexByte(p[i:], '/')
			if k < 0 {
				return false // and nothing ends inside "**/"
			}
			i += k
		}
		if parents && i > 0 && p[i] == '/' && ds.accept {
			return true
		}
		sc.work++
		if c := p[i]; c < utf8.RuneSelf {
			if nx := ds.next[c]; nx > 0 {
				d = nx - 1
			} else {
				before := sc.flushes
				d = pr.move(sc, d, rune(c))
				if sc.flushes == before { // ds is still in the cache
					ds.next[c] = d + 1
				}
			}
			i++
		} else {
			r, n := utf8.DecodeRuneInString(p[i:])
			d = pr.move(sc, d, r)
			i += n
		}
		if len(sc.dfa[d].set) == 0 {
			return false
		}
		if sc.flushes != flushes {
			// This pattern has more sets than the cache holds, and this
			// path meets them: go on without the cache, which would only
			// be made and thrown away again.
			return pr.runNFA(sc, p, i, sc.dfa[d].set, self, parents)
		}
	}
	return self && sc.dfa[d].accept
}

// runNFA goes on reading p from p[i] in the set cur, as run but without
// caching the sets.
func (pr *program) runNFA(sc *nfaScratch, p string, i int, cur []int32, self, parents bool) bool {
	cur = slices.Clone(cur)
	for i < len(p) {
		if parents && i > 0 && p[i] == '/' && pr.accepts(cur) {
			return true
		}
		r, n := utf8.DecodeRuneInString(p[i:])
		i += n
		pr.begin(sc)
		for _, s := range cur {
			pr.step(sc, s, r)
		}
		sc.work += len(cur)
		cur = append(cur[:0], sc.next...)
		if len(cur) == 0 {
			return false
		}
	}
	return self && pr.accepts(cur)
}

// accepts reports whether the path read so far, in the set of states
// states, matches: a state has reached a zero-length rest of the pattern,
// or everything matches.
func (pr *program) accepts(states []int32) bool {
	nt := int32(len(pr.toks))
	for _, s := range states {
		if s == 2*nt || s < nt && pr.zero[s] {
			return true
		}
	}
	return false
}

// move returns the place of the set that set d goes to on rune r.
func (pr *program) move(sc *nfaScratch, d int32, r rune) int32 {
	pr.begin(sc)
	set := sc.dfa[d].set
	for _, s := range set {
		pr.step(sc, s, r)
	}
	sc.work += len(set)
	return pr.intern(sc)
}

// intern returns the place in the cache of the set sc.next, adding it
// (and emptying a full cache first).
func (pr *program) intern(sc *nfaScratch) int32 {
	slices.Sort(sc.next)
	sc.key = sc.key[:0]
	for _, s := range sc.next {
		sc.key = binary.LittleEndian.AppendUint32(sc.key, uint32(s))
	}
	if d, ok := sc.index[string(sc.key)]; ok {
		return d
	}
	if len(sc.dfa) == maxDFAStates {
		sc.dfa = sc.dfa[:0]
		clear(sc.index)
		sc.start = -1
		sc.flushes++
	}
	ds := &dfaState{set: slices.Clone(sc.next)}
	ds.accept = pr.accepts(ds.set)
	nt := int32(len(pr.toks))
	ds.dsOnly = len(ds.set) == 1 && ds.set[0] >= nt && ds.set[0] < 2*nt && pr.toks[ds.set[0]-nt].kind == tDS
	d := int32(len(sc.dfa))
	sc.dfa = append(sc.dfa, ds)
	sc.index[string(sc.key)] = d
	return d
}

// begin empties the next state set.
func (pr *program) begin(sc *nfaScratch) {
	sc.next = sc.next[:0]
	if sc.gen++; sc.gen == 0 { // wrapped: forget every old mark
		clear(sc.seen)
		sc.gen = 1
	}
}

// push adds state s to the next state set.
func (pr *program) push(sc *nfaScratch, s int32) {
	if sc.seen[s] != sc.gen {
		sc.seen[s] = sc.gen
		sc.next = append(sc.next, s)
	}
}

// step adds to sc.next the states state s goes to on rune r.
func (pr *program) step(sc *nfaScratch, s int32, r rune) {
	n := int32(len(pr.toks))
	switch {
	case s == 2*n:
		pr.push(sc, s)
	case s >= n: // inside a tStar or tDS
		j := s - n
		switch {
		case pr.toks[j].kind == tStar && r != '/':
			pr.push(sc, s)
			pr.push(sc, j+1)
		case pr.toks[j].kind == tDS:
			pr.push(sc, s)
			if r == '/' {
				pr.push(sc, j+1)
			}
		}
	default:
		pr.stepToken(sc, s, r)
	}
}

// stepToken steps P(j): token j matches r, or, being "*" or "**/",
// matches r itself or nothing (and the next token gets r).
func (pr *program) stepToken(sc *nfaScratch, j int32, r rune) {
	for {
		t := &pr.toks[j]
		switch t.kind {
		case tLit:
			if r == t.r {
				pr.push(sc, j+1)
			}
		case tAny:
			if r != '/' {
				pr.push(sc, j+1)
			}
		case tClass:
			if t.class.has(r) {
				pr.push(sc, j+1)
			}
		case tAll:
			pr.push(sc, 2*int32(len(pr.toks)))
		case tStar, tDS:
			pr.step(sc, int32(len(pr.toks))+j, r)
			j++
			continue
		}
		return
	}
}
