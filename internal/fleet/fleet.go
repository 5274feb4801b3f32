package fleet

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// RunRecord is a run as the server keeps and serves it (a row of its
// runs table), made from the Run an agent reported.
type RunRecord struct {
	// ReportID is the Run's ID: a second report with the same ID from
	// the same host is the same run, sent again.
	ReportID string    `json:"report_id,omitempty"`
	Host     string    `json:"host"`
	Job      string    `json:"job"`
	Task     Task      `json:"task"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	// Status is the Run's.
	Status  Status `json:"status"`
	Attempt int    `json:"attempt,omitempty"`
	// Error is why a run failed (no secrets: the agent's error text).
	Error string `json:"error,omitempty"`
	Files int64  `json:"files"`
	// BytesRead is the size of the files read; BytesNew what was not
	// already in the repository (before compression); BytesStored what
	// was uploaded (after compression and encryption).
	BytesRead   int64 `json:"bytes_read"`
	BytesNew    int64 `json:"bytes_new"`
	BytesStored int64 `json:"bytes_stored"`
	Errors      int64 `json:"errors"`
	// FilesChanged counts files that changed while they were read and
	// were recorded as inconsistent.
	FilesChanged int64     `json:"files_changed"`
	Version      string    `json:"version"`
	Snapshot     string    `json:"snapshot,omitempty"`
	NextDue      time.Time `json:"next_due,omitzero"`
	// A retention run: snapshots removed, bytes prune deleted.
	SnapshotsRemoved int64 `json:"snapshots_removed,omitempty"`
	BytesFreed       int64 `json:"bytes_freed,omitempty"`
}

// Succeeded reports whether a run wrote a snapshot (or, for a
// verification, found no damage).
func (s Status) Succeeded() bool { return s == StatusOK || s == StatusPartial }

// Failed reports whether a run failed (a retry may follow).
func (s Status) Failed() bool { return s == StatusFailed || s == StatusRetrying }

func clampInt(v uint64) int64 {
	if v > 1<<62 {
		return 1 << 62
	}
	return int64(v)
}

// Record is the server's record of a run report.
func (r Run) Record() RunRecord {
	task := r.Task
	if task == "" {
		task = TaskBackup
	}
	return RunRecord{ReportID: r.ID, Host: r.Host, Job: r.Job, Task: task, Start: r.Started, End: r.Finished, Status: r.Status, Attempt: r.Attempt,
		Error: r.Error, Files: clampInt(r.FilesNew) + clampInt(r.FilesChanged) + clampInt(r.FilesUnchanged),
		BytesRead: clampInt(r.TotalBytes), BytesNew: clampInt(r.DataAdded), BytesStored: clampInt(r.DataAddedStored),
		Errors: clampInt(r.FileErrors) + int64(max(r.CheckErrors, 0)), FilesChanged: clampInt(r.FilesChangedDuringRead),
		Version: r.Version, Snapshot: r.Snapshot, NextDue: r.NextDue,
		SnapshotsRemoved: int64(max(r.SnapshotsRemoved, 0)), BytesFreed: max(r.PrunedBytes, 0)}
}

// Limits on the strings of a report, so that a hostile agent cannot fill
// the database.
const (
	MaxNameLen  = 255
	MaxErrorLen = 4096
)

// Validate checks the record of a report received from an agent.
func (r *RunRecord) Validate() error {
	if err := ValidName("host", r.Host); err != nil {
		return err
	}
	if err := ValidName("job", r.Job); err != nil {
		return err
	}
	switch r.Status {
	case StatusOK, StatusPartial, StatusFailed, StatusRetrying, StatusSkipped, StatusInterrupted:
	default:
		return fmt.Errorf("run status %q: want ok, partial, failed, retrying, skipped or interrupted", r.Status)
	}
	switch r.Task {
	case TaskBackup, TaskCheck, TaskRetention:
	default:
		return fmt.Errorf("run task %q: want backup, check or retention", r.Task)
	}
	if r.Attempt < 0 {
		return errors.New("a run's attempt cannot be negative")
	}
	if r.Start.IsZero() || r.End.IsZero() || r.End.Before(r.Start) {
		return errors.New("a run needs a start and an end no earlier than its start")
	}
	if r.Files < 0 || r.BytesRead < 0 || r.BytesNew < 0 || r.BytesStored < 0 || r.Errors < 0 || r.FilesChanged < 0 ||
		r.SnapshotsRemoved < 0 || r.BytesFreed < 0 {
		return errors.New("run counters cannot be negative")
	}
	if len(r.Error) > MaxErrorLen {
		r.Error = r.Error[:MaxErrorLen]
	}
	if !validReportID(r.ReportID) {
		return errors.New("report id must be at most 64 letters, digits or dashes")
	}
	if len(r.Version) > 64 || len(r.Snapshot) > 128 {
		return errors.New("version or snapshot id too long")
	}
	return nil
}

func validReportID(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return false
		}
	}
	return true
}

// NewReportID returns a random report ID (128 bits, hex).
func NewReportID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// ValidName checks a host or job name: 1 to 255 bytes, no control
// characters. Anything else is allowed (and escaped where shown): names
// come from hosts, which are not trusted.
func ValidName(what, s string) error {
	if s == "" || len(s) > MaxNameLen {
		return fmt.Errorf("%s name must be 1 to %d bytes", what, MaxNameLen)
	}
	if strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return fmt.Errorf("%s name has control characters", what)
	}
	return nil
}

// State is the state of a job (and, the worst of its jobs, of a host).
type State string

// The states, best first.
const (
	StateOK      State = "ok"
	StateRunning State = "running"
	StateNever   State = "never"   // no run reported yet
	StateOverdue State = "overdue" // no success by its next due time plus slack
	StateFailed  State = "failed"  // the last run failed
)

// Severity orders states for sorting (worst first) and maps them to
// Nagios plugin exit codes: 0 OK, 1 WARNING, 2 CRITICAL.
func (s State) Severity() int {
	switch s {
	case StateOK, StateRunning:
		return 0
	case StateNever:
		return 1
	case StateOverdue, StateFailed:
		return 2
	}
	return 2
}

// JobStatus is one job of one host as the server knows it.
type JobStatus struct {
	Host  string `json:"host"`
	Repo  string `json:"repo"`
	Job   string `json:"job,omitempty"` // empty: a host with no job reported yet
	Task  Task   `json:"task,omitempty"`
	State State  `json:"state"`
	// LastRun is the last report; LastSuccess the last successful
	// (or partial) one.
	LastRun     *RunRecord `json:"last_run,omitempty"`
	LastSuccess time.Time  `json:"last_success,omitzero"`
	// Age is the time since LastSuccess, in seconds (0 without one).
	AgeSeconds int64     `json:"age_seconds"`
	NextDue    time.Time `json:"next_due,omitzero"`
	// Size is the bytes read by the last successful run.
	Size     int64     `json:"size"`
	Running  bool      `json:"running"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	Revoked  bool      `json:"revoked,omitempty"`
}

// JobInput is what JobState decides from.
type JobInput struct {
	LastRun     *RunRecord
	LastSuccess time.Time
	NextDue     time.Time
	Running     bool
}

// JobState decides a job's state at now. slack is how late a job may be
// before it is overdue. A job that is running is "running" unless it is
// already overdue or its last run failed: a retry in progress does not
// hide a problem.
func JobState(in JobInput, now time.Time, slack time.Duration) State {
	if in.LastRun != nil && in.LastRun.Status.Failed() {
		return StateFailed
	}
	if !in.NextDue.IsZero() && now.After(in.NextDue.Add(slack)) && !in.LastSuccess.After(in.NextDue) {
		return StateOverdue
	}
	if in.Running {
		return StateRunning
	}
	if in.LastRun == nil || in.LastSuccess.IsZero() && !in.LastRun.Status.Succeeded() {
		return StateNever
	}
	return StateOK
}

// Worst returns the most severe state of the jobs (StateNever for none).
func Worst(jobs []JobStatus) State {
	if len(jobs) == 0 {
		return StateNever
	}
	w := jobs[0].State
	for _, j := range jobs[1:] {
		if j.State.Severity() > w.Severity() || j.State.Severity() == w.Severity() && rank(j.State) > rank(w) {
			w = j.State
		}
	}
	return w
}

func rank(s State) int {
	switch s {
	case StateOK:
		return 0
	case StateRunning:
		return 1
	case StateNever:
		return 2
	case StateOverdue:
		return 3
	case StateFailed:
		return 4
	}
	return 5
}

// Rank orders states, best first (ok, running, never, overdue, failed),
// for sorting worst first.
func Rank(s State) int { return rank(s) }

// ExitCode is the Nagios plugin exit code of a fleet: the highest
// severity of its jobs.
func ExitCode(jobs []JobStatus) int {
	code := 0
	for _, j := range jobs {
		code = max(code, j.State.Severity())
	}
	return code
}

// DecodeRun decodes a run report (a Run) received from an agent and
// returns its validated record: strict JSON (unknown fields refused), at
// most 1 MiB. A report without a host is of defaultHost (the host the
// credential belongs to).
func DecodeRun(data []byte, defaultHost string) (RunRecord, error) {
	var run Run
	if len(data) > 1<<20 {
		return RunRecord{}, errors.New("run report larger than 1 MiB")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&run); err != nil {
		return RunRecord{}, fmt.Errorf("run report: %w", err)
	}
	if dec.More() {
		return RunRecord{}, errors.New("run report: data after the report")
	}
	if run.Host == "" {
		run.Host = defaultHost
	}
	r := run.Record()
	if err := r.Validate(); err != nil {
		return r, fmt.Errorf("run report: %w", err)
	}
	return r, nil
}
