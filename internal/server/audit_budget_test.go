package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// budgetLog is an audit log on a fake clock, and what it wrote.
type budgetLog struct {
	*AuditLog
	path string
	t    time.Time
}

func newBudgetLog(t *testing.T) *budgetLog {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := OpenAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	l := &budgetLog{AuditLog: a, path: path, t: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	a.now = func() time.Time { return l.t }
	a.all = refusalBudget{lines: logBurst, at: l.t}
	return l
}

func (l *budgetLog) refuse(token, remote string, n int) {
	for range n {
		l.Write(AuditRecord{Time: l.t, Token: token, Remote: remote, Op: "remove", Status: 403, Result: "refused", Reason: "role backup may not remove"})
	}
}

// records returns what the log holds, counted by result, and the
// suppressed records.
func (l *budgetLog) records(t *testing.T) (map[string]int, []AuditRecord) {
	f, err := os.Open(l.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := map[string]int{}
	var sup []AuditRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		n[r.Result]++
		if r.Result == "suppressed" {
			sup = append(sup, r)
		}
	}
	return n, sup
}

// One source's flood of refusals: its first 100 are written, the rest
// counted and summarized a minute later; its writes always are.
func TestAuditRefusalBudgetPerSource(t *testing.T) {
	l := newBudgetLog(t)
	l.refuse("tok1", "10.0.0.1:5000", 150)
	l.Write(AuditRecord{Time: l.t, Token: "tok1", Op: "save", Result: "ok"})
	l.refuse("tok2", "10.0.0.2:5000", 3) // another source is not muted
	l.t = l.t.Add(30 * time.Second)
	l.refuse("tok1", "10.0.0.1:5000", 1) // muted until its summary
	n, sup := l.records(t)
	if n["refused"] != 103 || n["ok"] != 1 || len(sup) != 0 {
		t.Fatalf("before the summary: %v, %d suppressed records", n, len(sup))
	}
	l.t = l.t.Add(31 * time.Second)
	l.refuse("tok1", "10.0.0.1:5000", 1) // the summary, then this one
	n, sup = l.records(t)
	if n["refused"] != 104 || len(sup) != 1 || sup[0].Suppressed != 51 || sup[0].Token != "tok1" || sup[0].Op != "remove" {
		t.Fatalf("after a minute: %v, suppressed %+v", n, sup)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// Many sources at once: the log as a whole writes 1,000 refusals, then 10
// a second; every left-out refusal is counted in a summary, at most 32
// lines of them and one for the rest; memory stays bounded.
func TestAuditRefusalBudgetFlood(t *testing.T) {
	l := newBudgetLog(t)
	const sources, each = 5000, 3
	for i := range sources {
		l.refuse("", fmt.Sprintf("[2001:db8::%x]:443", i), each)
	}
	if len(l.budgets) > refusalSources+1 || len(l.muted) > refusalSources+1 {
		t.Errorf("%d budgets, %d muted: unbounded", len(l.budgets), len(l.muted))
	}
	l.t = l.t.Add(10 * time.Second)
	l.refuse("", "[2001:db8::1:0]:443", 1) // its own budget and the log's have refilled
	if err := l.Close(); err != nil {      // summarizes everything
		t.Fatal(err)
	}
	n, sup := l.records(t)
	if n["refused"] != logBurst+1 {
		t.Errorf("%d refusals written, want %d", n["refused"], logBurst+1)
	}
	if len(sup) > summaryLines+1 {
		t.Errorf("%d summary lines, want at most %d", len(sup), summaryLines+1)
	}
	var left int64
	for _, r := range sup {
		left += r.Suppressed
	}
	if left != sources*each-logBurst {
		t.Errorf("summaries count %d refusals left out, want %d", left, sources*each-logBurst)
	}
}
