package fleet

import (
	"testing"
	"time"
)

func TestEvaluateAlertsLifecycle(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	failed := Condition{AlertKey{AlertJobFailed, "db1", "daily"}, "job daily on db1 failed"}
	var active []ActiveAlert
	step := func(now time.Time, conds []Condition) []Notification {
		var n []Notification
		active, n = EvaluateAlerts(active, conds, now, 6*time.Hour)
		return n
	}
	if n := step(t0, []Condition{failed}); len(n) != 1 || n[0].Event != EventFiring {
		t.Fatalf("first: %+v", n)
	}
	if n := step(t0.Add(time.Hour), []Condition{failed}); len(n) != 0 {
		t.Fatalf("repeated while active: %+v", n)
	}
	if n := step(t0.Add(6*time.Hour), []Condition{failed}); len(n) != 1 || n[0].Event != EventReminder || !n[0].Since.Equal(t0) {
		t.Fatalf("reminder: %+v", n)
	}
	if n := step(t0.Add(7*time.Hour), []Condition{failed}); len(n) != 0 {
		t.Fatalf("reminded again too soon: %+v", n)
	}
	if n := step(t0.Add(8*time.Hour), nil); len(n) != 1 || n[0].Event != EventResolved {
		t.Fatalf("resolved: %+v", n)
	}
	if n := step(t0.Add(9*time.Hour), nil); len(n) != 0 || len(active) != 0 {
		t.Fatalf("after resolve: %+v %+v", n, active)
	}
}

func TestConditions(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	slack := time.Hour
	mk := func(host string, in JobInput, seen time.Time) JobStatus {
		return JobStatus{Host: host, Job: "daily", State: JobState(in, now, slack), LastRun: in.LastRun, LastSuccess: in.LastSuccess, NextDue: in.NextDue, LastSeen: seen}
	}
	ok := &RunRecord{Status: StatusOK}
	jobs := []JobStatus{
		mk("good", JobInput{LastRun: ok, LastSuccess: now.Add(-time.Hour), NextDue: now.Add(23 * time.Hour)}, now),
		mk("late", JobInput{LastRun: ok, LastSuccess: now.Add(-30 * time.Hour), NextDue: now.Add(-6 * time.Hour)}, now),
		mk("bad", JobInput{LastRun: &RunRecord{Status: StatusFailed, Error: "boom"}}, now),
		mk("torn", JobInput{LastRun: &RunRecord{Status: StatusPartial, FilesChanged: 3}, LastSuccess: now, NextDue: now.Add(time.Hour)}, now),
		mk("quiet", JobInput{LastRun: ok, LastSuccess: now.Add(-time.Hour), NextDue: now.Add(time.Hour)}, now.Add(-72*time.Hour)),
		// due, but within the slack: not overdue yet
		mk("soon", JobInput{LastRun: ok, LastSuccess: now.Add(-25 * time.Hour), NextDue: now.Add(-30 * time.Minute)}, now),
	}
	got := map[AlertKey]bool{}
	for _, c := range Conditions(jobs, []RepoUsage{{"fleet", 95, 100}, {"small", 10, 100}, {"free", 1000, 0}}, AlertRules{SilentAfter: 48 * time.Hour}, now) {
		got[c.AlertKey] = true
	}
	want := []AlertKey{{AlertOverdue, "late", "daily"}, {AlertJobFailed, "bad", "daily"}, {AlertFilesChanged, "torn", "daily"},
		{AlertAgentSilent, "quiet", ""}, {AlertQuota, "", "fleet"}}
	for _, k := range want {
		if !got[k] {
			t.Errorf("missing %+v", k)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestJobStateAndExitCode(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	if s := JobState(JobInput{}, now, time.Hour); s != StateNever {
		t.Fatal(s)
	}
	if s := JobState(JobInput{Running: true, LastRun: &RunRecord{Status: StatusOK}}, now, time.Hour); s != StateRunning {
		t.Fatal(s)
	}
	// a success after the due time clears overdue
	if s := JobState(JobInput{LastRun: &RunRecord{Status: StatusOK}, NextDue: now.Add(-5 * time.Hour), LastSuccess: now.Add(-time.Hour)}, now, time.Hour); s != StateOK {
		t.Fatal(s)
	}
	jobs := []JobStatus{{State: StateOK}, {State: StateNever}}
	if ExitCode(jobs) != 1 || ExitCode(jobs[:1]) != 0 || ExitCode(append(jobs, JobStatus{State: StateOverdue})) != 2 {
		t.Fatal("exit codes")
	}
}
