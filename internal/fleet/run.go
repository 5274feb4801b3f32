// Package fleet holds what the agent (which sends reports and takes
// leases), the server (which stores and serves them) and the web UI
// share: the report of a run (Run) and the server's record of it
// (RunRecord), the state of hosts and jobs, leases, alerts, and the client
// of the server's fleet API (docs/PROTOCOL.md, "Fleet"). What decides
// something here (a job's state, which alerts fire) is a pure function of
// its inputs and a time passed in, tested with a fake clock.
package fleet

import "time"

// Status is how a run ended.
type Status string

const (
	StatusOK          Status = "ok"
	StatusPartial     Status = "partial"     // a snapshot was saved, but some files could not be read
	StatusFailed      Status = "failed"      // no retry left (or none configured)
	StatusRetrying    Status = "retrying"    // failed; the agent tries again at Run.RetryAt
	StatusSkipped     Status = "skipped"     // due while the job was still running
	StatusInterrupted Status = "interrupted" // the agent was stopped during the run
)

// Task is what a run did.
type Task string

const (
	TaskBackup Task = "backup"
	TaskCheck  Task = "check" // the periodic verification of a subset of the data
	// TaskRetention is forget by a policy, then prune: run by a job of
	// type "retention" on a host that holds a full key (never the
	// server, which holds none).
	TaskRetention Task = "retention"
)

// Run is the report of one run of an agent's job. It never holds a
// secret: errors are the messages floe prints, which name hooks and files,
// never passwords or tokens.
type Run struct {
	// ID names this report so that the server records it once: an agent
	// that lost the server's answer sends the report again (Pending).
	// Random, made by the agent; empty in reports of older agents.
	ID         string    `json:"id,omitempty"`
	Host       string    `json:"host"`
	Job        string    `json:"job"`
	Task       Task      `json:"task"`
	Repository string    `json:"repository"`
	Status     Status    `json:"status"`
	Attempt    int       `json:"attempt"` // 1 for the first try
	Scheduled  time.Time `json:"scheduled"`
	Started    time.Time `json:"started"`
	Finished   time.Time `json:"finished"`
	Error      string    `json:"error,omitempty"`
	RetryAt    time.Time `json:"retry_at,omitzero"`

	// backup
	Snapshot        string `json:"snapshot,omitempty"`
	FilesNew        uint64 `json:"files_new,omitempty"`
	FilesChanged    uint64 `json:"files_changed,omitempty"`
	FilesUnchanged  uint64 `json:"files_unchanged,omitempty"`
	FileErrors      uint64 `json:"file_errors,omitempty"`
	TotalBytes      uint64 `json:"total_bytes,omitempty"`
	DataAdded       uint64 `json:"data_added,omitempty"`
	DataAddedStored uint64 `json:"data_added_stored,omitempty"`

	// check
	CheckSubset   string `json:"check_subset,omitempty"`
	CheckErrors   int    `json:"check_errors,omitempty"`
	CheckWarnings int    `json:"check_warnings,omitempty"`

	// retention: snapshots the policy kept and removed, and what prune
	// deleted (packs marked by an earlier run, once their grace passed)
	// and marked for a later run to delete
	SnapshotsKept    int   `json:"snapshots_kept,omitempty"`
	SnapshotsRemoved int   `json:"snapshots_removed,omitempty"`
	PrunedBytes      int64 `json:"pruned_bytes,omitempty"`
	MarkedBytes      int64 `json:"marked_bytes,omitempty"`

	// FilesChangedDuringRead counts files that still changed while they
	// were read (recorded as inconsistent in the snapshot).
	FilesChangedDuringRead uint64 `json:"files_changed_during_read,omitempty"`
	// NextDue is when the agent's schedule runs the job's task next; the
	// server calls the job overdue when no success came by then (plus
	// slack).
	NextDue time.Time `json:"next_due,omitzero"`
	// Version is the agent's floe version.
	Version string `json:"version,omitempty"`
}
