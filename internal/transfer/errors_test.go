package transfer

import (
	"fmt"
	"strings"
	"testing"
)

// The errors list their problems, one indented line each, up to a cap (20
// for an export, 10 for a verification), then how many were left out.
func TestProblemLists(t *testing.T) {
	problems := make([]string, 25)
	for i := range problems {
		problems[i] = fmt.Sprintf("problem %d", i)
	}
	for _, c := range []struct {
		err   error
		shown int
		more  string // the last line, when some are left out
	}{
		{&ExportError{Dir: "/x", Problems: problems, Count: 30}, 20, "  ... and 10 more"},
		{&VerifyError{Repository: "/r", Problems: problems, Count: 30}, 10, "  ... and 20 more"},
		{&VerifyError{Repository: "/r", Problems: problems[:3], Count: 3}, 3, ""},
	} {
		lines := strings.Split(c.err.Error(), "\n")[1:] // after the summary
		want := indented(problems[:c.shown])
		if c.more != "" {
			want = append(want, c.more)
		}
		if strings.Join(lines, "\n") != strings.Join(want, "\n") {
			t.Errorf("%T lists:\n%s\nwant:\n%s", c.err, strings.Join(lines, "\n"), strings.Join(want, "\n"))
		}
	}
}

// indented is problems as the errors list them.
func indented(problems []string) []string {
	out := make([]string, len(problems))
	for i, p := range problems {
		out[i] = "  " + p
	}
	return out
}
