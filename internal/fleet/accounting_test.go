package fleet

import (
	"testing"
	"time"
)

// The repository page's figures and the accounting rows from a few runs
// of known sizes.
func TestAccounting(t *testing.T) {
	d1 := time.Date(2026, 2, 27, 1, 0, 0, 0, time.UTC)
	d2 := time.Date(2026, 3, 2, 1, 0, 0, 0, time.UTC)
	run := func(host, job string, end time.Time, read, newB, stored int64) RunRecord {
		return RunRecord{Host: host, Job: job, Task: TaskBackup, Start: end, End: end, Status: StatusOK, BytesRead: read, BytesNew: newB, BytesStored: stored}
	}
	runs := []RunRecord{
		run("web1", "sys", d1, 1000, 400, 200),
		run("db1", "sys", d1, 3000, 1000, 600),
		run("web1", "sys", d2, 1100, 100, 50),
		run("db1", "sys", d2, 3000, 0, 0),
		{Host: "web1", Job: "sys", Task: TaskBackup, Start: d2, End: d2.Add(time.Hour), Status: StatusFailed, BytesRead: 99, BytesStored: 99},
		{Host: "admin", Job: "retention", Task: TaskRetention, Start: d2, End: d2.Add(2 * time.Hour), Status: StatusOK, BytesFreed: 150},
	}
	st := ComputeRepoStats("fleet", 700, 9, 0, map[string]int64{"db1": 600, "web1": 100}, runs)
	if st.ProtectedBytes != 4100 || st.ReadBytes != 8100 || st.NewBytes != 1500 || st.AddedBytes != 850 || st.FreedBytes != 150 {
		t.Fatalf("%+v", st)
	}
	if st.DedupRatio != 5.4 || st.CompressionRatio != 1500.0/850 {
		t.Fatalf("ratios %v %v", st.DedupRatio, st.CompressionRatio)
	}
	if len(st.Growth) != 2 || st.Growth[0].Total != 800 || st.Growth[1].Added != 50 || st.Growth[1].Freed != 150 || st.Growth[1].Total != 700 {
		t.Fatalf("growth %+v", st.Growth)
	}
	if len(st.Hosts) != 2 || st.Hosts[0].Host != "db1" || st.Hosts[0].Share != 600.0/700 {
		t.Fatalf("hosts %+v", st.Hosts)
	}
	rows := ComputeAccounting(runs, map[string]string{"web1": "fleet", "db1": "fleet", "admin": "fleet"}, map[string]int64{"fleet": 700})
	if len(rows) != 4 || rows[0].Month != "2026-03" || rows[0].Host != "db1" || rows[2].Month != "2026-02" {
		t.Fatalf("rows %+v", rows)
	}
	// March: web1 stored 50 of 50 new bytes: all of it is attributed to it
	if w := rows[1]; w.Host != "web1" || w.Runs != 1 || w.ProtectedBytes != 1100 || w.NewStoredBytes != 50 || w.Share != 1 || w.AttributedBytes != 700 {
		t.Fatalf("web1 in March: %+v", w)
	}
	if d := rows[2]; d.Host != "db1" || d.Share != 0.75 || d.AttributedBytes != 525 {
		t.Fatalf("db1 in February: %+v", d)
	}
}
