package fleet

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
	"unicode"
)

// FuzzDecodeRun: a report from a hostile agent is refused or
// accepted valid, never a panic.
func FuzzDecodeRun(f *testing.F) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	good, _ := json.Marshal(Run{Host: "web1", Job: "daily", Task: TaskBackup, Started: now, Finished: now.Add(time.Minute), Status: StatusOK, FilesNew: 3})
	f.Add(good)
	f.Add([]byte(`{"host":"a\u0000b","job":"j","status":"ok"}`))
	f.Add([]byte(`{"host":"h","job":"j","status":"failed","start":"2026-01-01T00:00:00Z","end":"2025-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"host":"h"} {"host":"i"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRun(data, "")
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("accepted an invalid report: %v", err)
		}
		if r.Host == "" || r.Job == "" || r.End.Before(r.Start) || len(r.Error) > MaxErrorLen {
			t.Fatalf("accepted %+v", r)
		}
	})
}

// FuzzWriteReports: the status and runs a fleet server sends (`floe
// fleet status`, `runs`, `report`, decoded as the client decodes them)
// are printed without a panic and without a control character of the
// server's: a hostile or broken server cannot crash the admin's command
// or send escape sequences to the terminal or the report's mail.
func FuzzWriteReports(f *testing.F) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	st, _ := json.Marshal(StatusAnswer{Now: now, Jobs: []JobStatus{
		{Host: "web1", Job: "daily", State: StateOK, LastSuccess: now.Add(-3 * time.Hour), Size: 5 << 20},
		{Host: "db1", Job: "daily", State: StateFailed, LastRun: &RunRecord{Status: StatusFailed, Error: "boom"}},
		{Host: "db2", Job: "daily", State: StateOverdue, NextDue: now.Add(-2 * time.Hour), LastSuccess: now.Add(-50 * time.Hour)},
	}})
	runs, _ := json.Marshal([]RunRecord{{Host: "web1", Job: "daily", Start: now.Add(-time.Hour), End: now, Status: StatusOK, Files: 3, BytesRead: 100}})
	f.Add(st, runs)
	f.Add([]byte(`{"now":"0001-01-01T00:00:00Z","jobs":[{"host":"h","job":"j","state":"ok\u001b[2J","last_success":"9999-12-31T23:59:59Z","size":-1}]}`),
		[]byte(`[{"host":"h","job":"j","status":"ok\u001b]0;x\u0007","start":"9999-01-01T00:00:00Z","end":"0001-01-01T00:00:00Z","bytes_read":9223372036854775807}]`))
	f.Fuzz(func(t *testing.T, stData, runsData []byte) {
		var st StatusAnswer
		var runs []RunRecord
		if json.Unmarshal(stData, &st) != nil || json.Unmarshal(runsData, &runs) != nil {
			return
		}
		var b bytes.Buffer
		b.WriteString(SummaryLine(st.Jobs) + "\n")
		if err := WriteStatus(&b, st); err != nil {
			t.Fatal(err)
		}
		if err := WriteRuns(&b, runs); err != nil {
			t.Fatal(err)
		}
		if err := WriteReport(&b, st, runs, now); err != nil {
			t.Fatal(err)
		}
		for _, r := range b.String() {
			if (unicode.IsControl(r) && r != '\n') || unicode.Is(unicode.Cf, r) {
				t.Fatalf("control character %U in the output:\n%q", r, b.String())
			}
		}
	})
}
