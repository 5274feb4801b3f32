package fleet

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// Clean makes a host-supplied string safe for a terminal or a mail: control
// and format characters become '?'.
func Clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return '?'
		}
		return r
	}, s)
}

// SortWorstFirst orders jobs by state (failed, overdue, never, running,
// ok), then host and job.
func SortWorstFirst(jobs []JobStatus) {
	sort.SliceStable(jobs, func(i, j int) bool {
		a, b := jobs[i], jobs[j]
		if Rank(a.State) != Rank(b.State) {
			return Rank(a.State) > Rank(b.State)
		}
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		return a.Job < b.Job
	})
}

// FormatAge writes a duration the way people read ages: 45s, 12m, 5h, 3d.
func FormatAge(d time.Duration) string {
	switch {
	case d < 0:
		// -d of the most negative duration is itself (time.Sub
		// saturates to it for times a server may send): it recursed
		// until the stack overflowed
		return "-" + FormatAge(-max(d, -math.MaxInt64))
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d/time.Hour))
	}
	return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
}

// FormatBytes writes a size in binary units.
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// WriteStatus writes the table of `floe fleet status`.
func WriteStatus(w io.Writer, st StatusAnswer) error {
	jobs := append([]JobStatus(nil), st.Jobs...)
	SortWorstFirst(jobs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tJOB\tSTATE\tLAST SUCCESS\tAGE\tNEXT DUE\tSIZE")
	for _, j := range jobs {
		last, age, due := "-", "-", "-"
		if !j.LastSuccess.IsZero() {
			last = j.LastSuccess.Local().Format("2006-01-02 15:04")
			age = FormatAge(st.Now.Sub(j.LastSuccess))
		}
		if !j.NextDue.IsZero() {
			due = j.NextDue.Local().Format("2006-01-02 15:04")
		}
		job := j.Job
		if job == "" {
			job = "-"
		}
		state := Clean(string(j.State)) // the server's word: any string
		if j.Revoked {
			state += " (revoked)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", Clean(j.Host), Clean(job), state, last, age, due, FormatBytes(j.Size))
	}
	return tw.Flush()
}

// Summary counts jobs by state.
func Summary(jobs []JobStatus) map[State]int {
	m := map[State]int{}
	for _, j := range jobs {
		m[j.State]++
	}
	return m
}

// SummaryLine is the one-line status of a Nagios plugin:
// "FLEET CRITICAL - 2 failed, 1 overdue, 40 ok".
func SummaryLine(jobs []JobStatus) string {
	word := []string{"OK", "WARNING", "CRITICAL"}[ExitCode(jobs)]
	m := Summary(jobs)
	var parts []string
	for _, s := range []State{StateFailed, StateOverdue, StateNever, StateRunning, StateOK} {
		if m[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", m[s], s))
		}
	}
	if len(parts) == 0 {
		parts = []string{"no hosts"}
	}
	return "FLEET " + word + " - " + strings.Join(parts, ", ")
}

// WriteRuns writes a table of runs.
func WriteRuns(w io.Writer, runs []RunRecord) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tJOB\tSTART\tDURATION\tSTATUS\tFILES\tREAD\tNEW\tSTORED\tERRORS\tCHANGED")
	for _, r := range runs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%d\t%d\n", Clean(r.Host), Clean(r.Job), r.Start.Local().Format("2006-01-02 15:04:05"),
			r.End.Sub(r.Start).Round(time.Second), Clean(string(r.Status)), r.Files, FormatBytes(r.BytesRead), FormatBytes(r.BytesNew), FormatBytes(r.BytesStored), r.Errors, r.FilesChanged)
	}
	return tw.Flush()
}

// WriteReport writes the daily summary of `floe fleet report`, for mail
// (like amreport): the state of the fleet, what needs attention, and the
// runs since `since`.
func WriteReport(w io.Writer, st StatusAnswer, runs []RunRecord, since time.Time) error {
	jobs := append([]JobStatus(nil), st.Jobs...)
	SortWorstFirst(jobs)
	fmt.Fprintf(w, "floe fleet report, %s\n", st.Now.Local().Format("Mon 2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "%s\n\n", SummaryLine(jobs))
	var attention []JobStatus
	for _, j := range jobs {
		if j.State.Severity() > 0 {
			attention = append(attention, j)
		}
	}
	if len(attention) == 0 {
		fmt.Fprintln(w, "Nothing needs attention.")
	} else {
		fmt.Fprintln(w, "NEEDS ATTENTION")
		for _, j := range attention {
			line := fmt.Sprintf("  %-8s %s %s", Clean(string(j.State)), Clean(j.Host), Clean(j.Job))
			switch {
			case j.State == StateFailed && j.LastRun != nil && j.LastRun.Error != "":
				line += ": " + Clean(j.LastRun.Error)
			case j.State == StateOverdue:
				line += fmt.Sprintf(": due %s", j.NextDue.Local().Format("2006-01-02 15:04"))
				if !j.LastSuccess.IsZero() {
					line += ", last success " + FormatAge(st.Now.Sub(j.LastSuccess)) + " ago"
				}
			case j.State == StateNever:
				line += ": no run reported yet"
			}
			fmt.Fprintln(w, line)
		}
	}
	var read, newB, stored, files, errs, changed int64
	ok, failed := 0, 0
	for _, r := range runs {
		read += r.BytesRead
		newB += r.BytesNew
		stored += r.BytesStored
		files += r.Files
		errs += r.Errors
		changed += r.FilesChanged
		if r.Status == StatusFailed {
			failed++
		} else {
			ok++
		}
	}
	fmt.Fprintf(w, "\nRUNS SINCE %s: %d (%d succeeded, %d failed)\n", since.Local().Format("2006-01-02 15:04"), len(runs), ok, failed)
	fmt.Fprintf(w, "  files %d, read %s, new %s, stored %s, unreadable files %d, changed during read %d\n\n",
		files, FormatBytes(read), FormatBytes(newB), FormatBytes(stored), errs, changed)
	if len(runs) > 0 {
		return WriteRuns(w, runs)
	}
	return nil
}
