// Package ui formats what floe tells people and scripts: sizes, durations,
// progress lines on a terminal (silent otherwise), and JSON documents.
package ui

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/term"
)

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// Bytes formats a size with binary units.
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Duration formats a duration for people: 1.2s, 3m04s, 2h05m.
func Duration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
}

// Rate formats bytes per second.
func Rate(bytes int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return Bytes(uint64(float64(bytes)/d.Seconds())) + "/s"
}

// WriteJSON writes v as one indented JSON document.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// WriteJSONLine writes v as one compact JSON line (progress events).
func WriteJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// Status redraws one status line on a terminal; on anything else it is
// silent, so logs and pipes stay clean.
type Status struct {
	mu      sync.Mutex
	w       *os.File
	enabled bool
	last    int
	stop    chan struct{}
	done    chan struct{}
}

// NewStatus returns a status line on w, enabled only if w is a terminal.
func NewStatus(w *os.File, enabled bool) *Status {
	return &Status{w: w, enabled: enabled && IsTerminal(w)}
}

// Run calls line every interval and shows its result until Stop.
func (s *Status) Run(interval time.Duration, line func() string) {
	if !s.enabled {
		return
	}
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.Show(line())
			}
		}
	}()
}

// Show replaces the status line.
func (s *Status) Show(line string) {
	if !s.enabled {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	width := 0
	if w, _, err := term.GetSize(int(s.w.Fd())); err == nil {
		width = w - 1
	}
	if width > 0 && len(line) > width {
		line = line[:width]
	}
	pad := ""
	if n := s.last - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	fmt.Fprintf(s.w, "\r%s%s", line, pad)
	s.last = len(line)
}

// Stop ends Run and clears the line.
func (s *Status) Stop() {
	if !s.enabled || s.stop == nil {
		return
	}
	close(s.stop)
	<-s.done
	s.mu.Lock()
	fmt.Fprintf(s.w, "\r%s\r", strings.Repeat(" ", s.last))
	s.last = 0
	s.mu.Unlock()
}

// Path returns p for people: as is, or quoted when it holds control
// characters or bytes that are not UTF-8 (which could garble a terminal or
// a line-based pipe, or smuggle escape sequences into an admin's terminal).
// Use it for every host-supplied string in text output (paths, host names,
// tags, user names): a newline in one would forge a line of output, which
// Sanitize (for whole messages) lets through.
func Path(p string) string {
	if utf8.ValidString(p) && !strings.ContainsFunc(p, unicode.IsControl) {
		return p
	}
	return strconv.Quote(p)
}

// Line is Sanitize for a message that must stay one line (a warning or an
// error): newlines are escaped too, so that a file name holding one, quoted
// raw deep inside an error, cannot forge a line of output.
func Line(s string) string {
	return strings.ReplaceAll(Sanitize(s), "\n", `\n`)
}

// Paths returns each string of list as Path does, joined by sep.
func Paths(list []string, sep string) string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = Path(s)
	}
	return strings.Join(out, sep)
}

// Sanitize escapes control characters (but newlines and tabs) and invalid
// UTF-8 in a message for a terminal. Error messages embed file names from
// the backed-up system, which are hostile input.
func Sanitize(s string) string {
	clean := true
	for i, r := range s {
		if (r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD")) || (unicode.IsControl(r) && r != '\n' && r != '\t') {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsControl(r) && r != '\n' && r != '\t':
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// Print writes a line to standard output above the status line: the
// status line is cleared first and drawn again at the next tick.
func (s *Status) Print(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.enabled && s.last > 0 {
		fmt.Fprintf(s.w, "\r%s\r", strings.Repeat(" ", s.last))
		s.last = 0
	}
	fmt.Fprintln(os.Stdout, Sanitize(line))
}

// Integer is any integer type, for Count.
type Integer interface {
	~int | ~int8 | ~int16 | ~int32 | ~int64 | ~uint | ~uint8 | ~uint16 | ~uint32 | ~uint64
}

// Count says how many of a thing: "1 snapshot", "2 snapshots", "0 errors".
// The plural is one+"s" unless given ("directory", "directories").
func Count[N Integer](n N, one string, many ...string) string {
	if n == 1 {
		return "1 " + one
	}
	plural := one + "s"
	if len(many) > 0 {
		plural = many[0]
	}
	return fmt.Sprintf("%d %s", n, plural)
}
