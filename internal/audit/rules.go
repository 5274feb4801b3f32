package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"

	"github.com/floe-backup/floe/internal/pathmatch"
)

// Rules files (AIDE's syntax, simplified). One rule a line; blank lines and
// lines starting with # are ignored.
//
//	NAME = EXPR     define a rule set: attribute letters and earlier rule
//	                set names joined by + (add) and - (take away), e.g.
//	                "Conf = p+u+g+s+H" or "Boot = R-i"
//	/PATH EXPR      select PATH and everything below it for the attributes
//	                of EXPR ("/etc R", "/var/log >", "/srv/www p+u+g").
//	                Paths are prefixes by whole components: /etc selects
//	                /etc/passwd but not /etcetera. The most specific (longest)
//	                selection of a path wins. Paths cannot hold white space.
//	!REGEXP         ignore every path the regular expression (Go RE2 syntax)
//	                matches, anchored at the start of the absolute path but
//	                not at its end: "!/var/spool" also ignores
//	                /var/spool.old; end it with $ or (/|$) to be exact.
//	                An ignored directory is not descended into.
//
// Attributes:
//
//	p permissions (mode bits)   u user (uid)      g group (gid)
//	s size                      m mtime           c ctime
//	i inode number              n link count      x extended attributes
//	S growing size: the size may grow but not shrink, and content changes
//	  are not checked (for logs)
//	H content: the chunk IDs of a regular file's data (exact), the target of
//	  a symlink, the device number of a device
//
// A change of a path's type (file, directory, symlink, ...) is reported
// under every rule set but E.
//
// Built-in rule sets (a rules file may redefine them):
//
//	R = p+i+n+u+g+s+m+c+H   content and metadata
//	L = p+i+n+u+g           metadata that does not change in use
//	> = p+u+g+i+n+S         growing logs
//	E =                     nothing: only added and removed paths

// Attrs is a set of attributes that a rule set checks.
type Attrs uint16

// The attributes, with their letters in rules files.
const (
	AttrPerm    Attrs = 1 << iota // p
	AttrUser                      // u
	AttrGroup                     // g
	AttrSize                      // s
	AttrMtime                     // m
	AttrCtime                     // c
	AttrInode                     // i
	AttrLinks                     // n
	AttrGrowing                   // S
	AttrHash                      // H
	AttrXattrs                    // x
)

var attrLetters = []struct {
	a      Attrs
	letter byte
}{
	{AttrPerm, 'p'}, {AttrInode, 'i'}, {AttrLinks, 'n'}, {AttrUser, 'u'}, {AttrGroup, 'g'},
	{AttrSize, 's'}, {AttrGrowing, 'S'}, {AttrMtime, 'm'}, {AttrCtime, 'c'}, {AttrHash, 'H'},
	{AttrXattrs, 'x'},
}

func attrOfLetter(s string) (Attrs, bool) {
	if len(s) != 1 {
		return 0, false
	}
	for _, al := range attrLetters {
		if al.letter == s[0] {
			return al.a, true
		}
	}
	return 0, false
}

// String returns the attributes as rules file letters joined by "+" (in
// AIDE's order: p+i+n+u+g+s+S+m+c+H+x), or "E" for none.
func (a Attrs) String() string {
	var parts []string
	for _, al := range attrLetters {
		if a&al.a != 0 {
			parts = append(parts, string(al.letter))
		}
	}
	if len(parts) == 0 {
		return "E"
	}
	return strings.Join(parts, "+")
}

// Built-in rule sets.
const (
	RuleR             = AttrPerm | AttrInode | AttrLinks | AttrUser | AttrGroup | AttrSize | AttrMtime | AttrCtime | AttrHash
	RuleL             = AttrPerm | AttrInode | AttrLinks | AttrUser | AttrGroup
	RuleGrowing       = AttrPerm | AttrUser | AttrGroup | AttrInode | AttrLinks | AttrGrowing
	RuleE       Attrs = 0
)

// BuiltinSets returns the built-in rule sets by name.
func BuiltinSets() map[string]Attrs {
	return map[string]Attrs{"R": RuleR, "L": RuleL, ">": RuleGrowing, "E": RuleE}
}

// Selection selects a path and everything below it for a rule set.
type Selection struct {
	Path  string // absolute, cleaned
	Rule  string // the expression as written, spaces removed ("R", "p+u+g")
	Attrs Attrs
	Line  int
}

// Ignore is an ignore line.
type Ignore struct {
	Pattern string // as written, without the "!"
	Line    int
	re      *regexp.Regexp
}

// Rules are a parsed rules file.
type Rules struct {
	Sets       map[string]Attrs // built-in and defined rule sets
	Selections []Selection      // in file order
	Ignores    []Ignore         // in file order
}

// LineError is an error in one line of a rules file.
type LineError struct {
	File string
	Line int
	Msg  string
}

func (e *LineError) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

// maxLineErrors bounds the errors ParseRules reports.
const maxLineErrors = 20

var setName = regexp.MustCompile(`^(>|[A-Za-z_][A-Za-z0-9_]*)$`)

// ParseRules reads a rules file; name names it in errors. It reports every
// bad line (up to 20), each as a *LineError, joined with errors.Join.
func ParseRules(rd io.Reader, name string) (*Rules, error) {
	r := &Rules{Sets: BuiltinSets()}
	defined := map[string]int{}  // set name -> line, for sets this file defines
	selected := map[string]int{} // path -> line
	var errs []error
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		fail := func(format string, args ...any) {
			if len(errs) < maxLineErrors {
				errs = append(errs, &LineError{File: name, Line: lineNo, Msg: fmt.Sprintf(format, args...)})
			}
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "!"):
			pat := line[1:]
			if pat == "" {
				fail("empty ignore pattern")
				continue
			}
			re, err := regexp.Compile(`^(?:` + pat + `)`)
			if err != nil {
				fail("bad regular expression %q: %v", pat, reErrMsg(err))
				continue
			}
			r.Ignores = append(r.Ignores, Ignore{Pattern: pat, Line: lineNo, re: re})
		case strings.HasPrefix(line, "/"):
			p, expr, _ := strings.Cut(strings.Join(strings.Fields(line), " "), " ")
			expr = strings.Join(strings.Fields(expr), "")
			if expr == "" {
				fail("selection %s has no rule set (write e.g. \"%s R\")", p, p)
				continue
			}
			attrs, err := r.eval(expr)
			if err != nil {
				fail("%v", err)
				continue
			}
			p = path.Clean(p)
			if prev, ok := selected[p]; ok {
				fail("%s is already selected on line %d", p, prev)
				continue
			}
			selected[p] = lineNo
			r.Selections = append(r.Selections, Selection{Path: p, Rule: expr, Attrs: attrs, Line: lineNo})
		case strings.Contains(line, "="):
			n, expr, _ := strings.Cut(line, "=")
			n = strings.TrimSpace(n)
			expr = strings.Join(strings.Fields(expr), "")
			if !setName.MatchString(n) {
				fail("bad rule set name %q: use letters, digits and _ (not starting with a digit)", n)
				continue
			}
			if _, ok := attrOfLetter(n); ok {
				fail("rule set name %q is an attribute letter", n)
				continue
			}
			if prev, ok := defined[n]; ok {
				fail("rule set %s is already defined on line %d", n, prev)
				continue
			}
			if expr == "" {
				fail("rule set %s is empty (use E for a rule set that checks nothing)", n)
				continue
			}
			attrs, err := r.eval(expr)
			if err != nil {
				fail("%v", err)
				continue
			}
			defined[n] = lineNo
			r.Sets[n] = attrs
		default:
			fail("cannot parse %q: lines select a path (\"/etc R\"), ignore paths (\"!/var/spool\") or define a rule set (\"NAME = p+u+g\")", line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

func reErrMsg(err error) string {
	var se *syntax.Error
	if errors.As(err, &se) {
		return se.Code.String()
	}
	return err.Error()
}

// eval evaluates an expression: terms (attribute letters or rule set
// names) joined by + and -, left to right.
func (r *Rules) eval(expr string) (Attrs, error) {
	var a Attrs
	op := byte('+')
	rest := expr
	for {
		i := strings.IndexAny(rest, "+-")
		term := rest
		if i >= 0 {
			term = rest[:i]
		}
		if term == "" {
			return 0, fmt.Errorf("bad rule %q: empty term (write attributes and rule sets joined by + or -)", expr)
		}
		v, ok := r.Sets[term]
		if !ok {
			if v, ok = attrOfLetter(term); !ok {
				return 0, fmt.Errorf("unknown attribute or rule set %q in %q (attributes: p u g s m c i n S H x; rule sets: %s)",
					term, expr, r.setNames())
			}
		}
		if op == '+' {
			a |= v
		} else {
			a &^= v
		}
		if i < 0 {
			return a, nil
		}
		op = rest[i]
		rest = rest[i+1:]
	}
}

func (r *Rules) setNames() string {
	names := make([]string, 0, len(r.Sets))
	for n := range r.Sets {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, " ")
}

// Select returns the most specific selection of the absolute path p.
func (r *Rules) Select(p string) (Selection, bool) {
	best := -1
	for i, s := range r.Selections {
		if pathmatch.Within(p, s.Path) && (best < 0 || len(s.Path) > len(r.Selections[best].Path)) {
			best = i
		}
	}
	if best < 0 {
		return Selection{}, false
	}
	return r.Selections[best], true
}

// Ignored reports whether an ignore line matches the absolute path p.
func (r *Rules) Ignored(p string) bool {
	for _, ig := range r.Ignores {
		if ig.re.MatchString(p) {
			return true
		}
	}
	return false
}

// DefaultRules returns the parsed DefaultRulesText.
func DefaultRules() *Rules {
	r, err := ParseRules(strings.NewReader(DefaultRulesText), "default rules")
	if err != nil {
		panic(err) // tested
	}
	return r
}
