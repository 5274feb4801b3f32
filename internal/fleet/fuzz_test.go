package fleet

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzDecodeRunReport: a report from a hostile agent is refused or
// accepted valid, never a panic.
func FuzzDecodeRunReport(f *testing.F) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	good, _ := json.Marshal(RunReport{Host: "web1", Job: "daily", Start: now, End: now.Add(time.Minute), Status: RunSuccess, Files: 3})
	f.Add(good)
	f.Add([]byte(`{"host":"a\u0000b","job":"j","status":"success"}`))
	f.Add([]byte(`{"host":"h","job":"j","status":"failed","start":"2026-01-01T00:00:00Z","end":"2025-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"host":"h"} {"host":"i"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRunReport(data, "")
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
