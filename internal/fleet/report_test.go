package fleet

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestStatusAndReportText(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	st := StatusAnswer{Now: now, Jobs: []JobStatus{
		{Host: "web1", Job: "daily", State: StateOK, LastSuccess: now.Add(-3 * time.Hour), Size: 5 << 20},
		{Host: "evil\x1b[31m\nhost", Job: "daily", State: StateFailed, LastRun: &RunRecord{Status: StatusFailed, Error: "boom\x1b[0m"}},
		{Host: "db1", Job: "daily", State: StateOverdue, NextDue: now.Add(-2 * time.Hour), LastSuccess: now.Add(-50 * time.Hour)},
	}}
	var b bytes.Buffer
	if err := WriteStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[1], "evil?[31m?host") || !strings.HasPrefix(lines[2], "db1") || !strings.Contains(lines[3], "3h") {
		t.Fatalf("status table (worst first, control characters cleaned):\n%s", out)
	}
	if SummaryLine(st.Jobs) != "FLEET CRITICAL - 1 failed, 1 overdue, 1 ok" {
		t.Fatal(SummaryLine(st.Jobs))
	}
	b.Reset()
	runs := []RunRecord{{Host: "web1", Job: "daily", Start: now.Add(-time.Hour), End: now.Add(-time.Hour + time.Minute), Status: StatusOK, Files: 3, BytesRead: 100}}
	if err := WriteReport(&b, st, runs, now.Add(-24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NEEDS ATTENTION", "failed   evil?[31m?host daily: boom?[0m", "overdue  db1 daily: due", "last success 2d ago", "1 (1 succeeded, 0 failed)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
	if strings.ContainsRune(b.String(), 0x1b) {
		t.Error("an escape sequence reached the report")
	}
}

// The most negative duration (what time.Sub gives for a last success a
// server dates far in the future) prints, instead of recursing until the
// stack overflows.
func TestFormatAgeExtremes(t *testing.T) {
	min := time.Time{}.Sub(time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC))
	if got := FormatAge(min); !strings.HasPrefix(got, "-") || !strings.HasSuffix(got, "d") {
		t.Fatalf("FormatAge(%d) = %q", min, got)
	}
	if got := FormatAge(-90 * time.Second); got != "-1m" {
		t.Fatalf("FormatAge(-90s) = %q", got)
	}
}
