package fleet

import (
	"encoding/json"
	"testing"
	"time"
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
