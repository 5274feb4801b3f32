package ui

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzSanitize: host-supplied strings (file names, host names, tags)
// reach an admin's terminal only through Path, Sanitize or Line. Whatever
// their bytes, the result is valid UTF-8 without control characters (no
// escape sequence, no carriage return to overwrite a line); Path and
// Line add no line either; and a string that needed no escaping comes
// back as it was.
func FuzzSanitize(f *testing.F) {
	for _, s := range []string{"/etc/passwd", "a\nb", "\x1b]0;pwned\x07", "caf\xc3", "\u2028x\u0085y", "\ufffd", "tab\there\r"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		controls := func(out string, allowed string) {
			t.Helper()
			if !utf8.ValidString(out) {
				t.Fatalf("%q gives invalid UTF-8 %q", s, out)
			}
			for _, r := range out {
				if unicode.IsControl(r) && !strings.ContainsRune(allowed, r) {
					t.Fatalf("%q gives %q, with control character %U", s, out, r)
				}
			}
		}
		controls(Sanitize(s), "\n\t")
		controls(Line(s), "\t")
		controls(Path(s), "")
		if utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl) {
			if Sanitize(s) != s || Line(s) != s || Path(s) != s {
				t.Fatalf("%q was escaped: %q %q %q", s, Sanitize(s), Line(s), Path(s))
			}
		}
	})
}
