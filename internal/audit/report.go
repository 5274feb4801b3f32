//go:build linux

package audit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/snapshot"
)

// Value formats (AttrChange).

func fmtMode(m uint32) string { return fmt.Sprintf("%04o", m) }

func fmtUint(v uint64) string { return strconv.FormatUint(v, 10) }

func fmtOwner(name string, id uint32) string {
	if name == "" {
		return strconv.FormatUint(uint64(id), 10)
	}
	return fmt.Sprintf("%s (%d)", name, id)
}

// timeLayout is RFC 3339 with all nine digits of nanoseconds.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(timeLayout)
}

func fmtRdev(rdev uint64) string {
	return fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev))
}

func fmtXattrs(xs []snapshot.Xattr) string {
	if len(xs) == 0 {
		return "-"
	}
	parts := make([]string, len(xs))
	for i, x := range xs {
		v := string(x.Value)
		if utf8.ValidString(v) && !strings.ContainsFunc(v, unicode.IsControl) {
			v = strconv.Quote(v)
		} else {
			v = fmt.Sprintf("0x%x", x.Value)
		}
		if len(v) > 42 {
			v = v[:40] + ".."
		}
		parts[i] = x.Name + "=" + v
	}
	return strings.Join(parts, " ")
}

// typeLetter is a node type as ls -l and AIDE show it.
func typeLetter(t snapshot.NodeType) string {
	switch t {
	case snapshot.TypeFile:
		return "f"
	case snapshot.TypeDir:
		return "d"
	case snapshot.TypeSymlink:
		return "l"
	case snapshot.TypeFIFO:
		return "p"
	case snapshot.TypeCharDev:
		return "c"
	case snapshot.TypeBlockDev:
		return "b"
	case snapshot.TypeSocket:
		return "s"
	}
	return "?"
}

// display returns s for a terminal: as is, or quoted when it holds
// control characters or bytes that are not UTF-8 (file names are hostile
// input: escape sequences must not reach an admin's terminal).
func display(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	return strconv.Quote(s)
}

const rule = "---------------------------------------------------"

// WriteText writes the report as AIDE does: a summary, the added, removed
// and changed entries, then the details of each change (old | new).
func (r *Report) WriteText(w io.Writer) error {
	b := bufio.NewWriter(w)
	fmt.Fprintf(b, "floe audit of %s against %s\n", display(r.Snapshot), display(r.Against))
	fmt.Fprintf(b, "Audited: %s\n", display(strings.Join(r.Paths, " ")))
	if len(r.NotCovered) > 0 {
		fmt.Fprintf(b, "Only partly or not in %s: %s\n", display(r.Against), display(strings.Join(r.NotCovered, " ")))
	}
	fmt.Fprintln(b)
	switch {
	case r.Changes():
		fmt.Fprintln(b, "Changes found!")
	case r.Summary.Errors > 0:
		fmt.Fprintln(b, "No changes found, but some paths could not be checked.")
	default:
		fmt.Fprintln(b, "No changes: everything audited matches the snapshot.")
	}
	fmt.Fprintf(b, "\nSummary:\n")
	fmt.Fprintf(b, "  Entries checked:  %d\n", r.Summary.Checked)
	fmt.Fprintf(b, "  Added entries:    %d\n", r.Summary.Added)
	fmt.Fprintf(b, "  Removed entries:  %d\n", r.Summary.Removed)
	fmt.Fprintf(b, "  Changed entries:  %d\n", r.Summary.Changed)
	if r.Summary.Errors > 0 {
		fmt.Fprintf(b, "  Errors:           %d\n", r.Summary.Errors)
	}
	section := func(title string) { fmt.Fprintf(b, "\n%s\n%s:\n%s\n", rule, title, rule) }
	if len(r.Added) > 0 {
		section("Added entries")
		for _, e := range r.Added {
			fmt.Fprintf(b, "%s+  %s\n", typeLetter(e.Type), display(e.Path))
		}
	}
	if len(r.Removed) > 0 {
		section("Removed entries")
		for _, e := range r.Removed {
			fmt.Fprintf(b, "%s-  %s\n", typeLetter(e.Type), display(e.Path))
		}
	}
	if len(r.Changed) > 0 {
		section("Changed entries")
		for _, c := range r.Changed {
			names := make([]string, len(c.Attrs))
			for i, a := range c.Attrs {
				names[i] = a.Name
			}
			fmt.Fprintf(b, "%s   %s  (%s)\n", typeLetter(c.Type), display(c.Path), strings.Join(names, ", "))
		}
		section("Detailed information about changes")
		for i, c := range r.Changed {
			if i > 0 {
				fmt.Fprintln(b)
			}
			kind := "File"
			switch c.Type {
			case snapshot.TypeDir:
				kind = "Directory"
			case snapshot.TypeSymlink:
				kind = "Link"
			}
			fmt.Fprintf(b, "%s: %s\n", kind, display(c.Path))
			width := 0
			for _, a := range c.Attrs {
				width = max(width, len(display(a.Old)))
			}
			width = min(width, 40)
			for _, a := range c.Attrs {
				fmt.Fprintf(b, "  %-7s: %-*s | %s\n", a.Name, width, display(a.Old), display(a.New))
			}
		}
	}
	if len(r.Errors) > 0 {
		section("Paths that could not be checked")
		for _, e := range r.Errors {
			fmt.Fprintf(b, "%s: %s\n", display(e.Path), display(e.Err.Error()))
		}
	}
	return b.Flush()
}

type jsonEntry struct {
	Path string `json:"path"`
	Type string `json:"type"`
}

type jsonAttr struct {
	Name string `json:"name"`
	Old  string `json:"old"`
	New  string `json:"new"`
}

type jsonChange struct {
	Path  string     `json:"path"`
	Type  string     `json:"type"`
	Attrs []jsonAttr `json:"attrs"`
}

type jsonError struct {
	Path  string `json:"path"`
	Error string `json:"error"`
}

type jsonReport struct {
	Snapshot   string       `json:"snapshot"`
	Against    string       `json:"against"`
	Paths      []string     `json:"paths"`
	NotCovered []string     `json:"not_covered,omitempty"`
	Added      []jsonEntry  `json:"added"`
	Removed    []jsonEntry  `json:"removed"`
	Changed    []jsonChange `json:"changed"`
	Errors     []jsonError  `json:"errors"`
	Summary    Summary      `json:"summary"`
}

func encodeAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = snapshot.EncodeName(s)
	}
	return out
}

// MarshalJSON writes the report as one document:
//
//	{"snapshot", "against", "paths": [], "added": [{path, type}],
//	 "removed": [{path, type}], "changed": [{path, type, attrs: [{name,
//	 old, new}]}], "errors": [{path, error}], "summary": {checked, added,
//	 removed, changed, errors}}
//
// Paths and values that are not UTF-8 are written as "b64:" and their
// base64 (snapshot.EncodeName).
func (r *Report) MarshalJSON() ([]byte, error) {
	j := jsonReport{Snapshot: r.Snapshot, Against: snapshot.EncodeName(r.Against), Paths: encodeAll(r.Paths),
		Added: []jsonEntry{}, Removed: []jsonEntry{}, Changed: []jsonChange{}, Errors: []jsonError{}, Summary: r.Summary}
	if len(r.NotCovered) > 0 {
		j.NotCovered = encodeAll(r.NotCovered)
	}
	for _, e := range r.Added {
		j.Added = append(j.Added, jsonEntry{Path: snapshot.EncodeName(e.Path), Type: e.Type.String()})
	}
	for _, e := range r.Removed {
		j.Removed = append(j.Removed, jsonEntry{Path: snapshot.EncodeName(e.Path), Type: e.Type.String()})
	}
	for _, c := range r.Changed {
		jc := jsonChange{Path: snapshot.EncodeName(c.Path), Type: c.Type.String(), Attrs: make([]jsonAttr, len(c.Attrs))}
		for i, a := range c.Attrs {
			jc.Attrs[i] = jsonAttr{Name: a.Name, Old: snapshot.EncodeName(a.Old), New: snapshot.EncodeName(a.New)}
		}
		j.Changed = append(j.Changed, jc)
	}
	for _, e := range r.Errors {
		j.Errors = append(j.Errors, jsonError{Path: snapshot.EncodeName(e.Path), Error: e.Err.Error()})
	}
	return json.Marshal(j)
}
