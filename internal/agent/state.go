package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// JobState is what the agent remembers of a job between starts.
type JobState struct {
	// LastDue is the scheduled time of the last backup run handled (or of
	// the agent's first start): a due time after it that has passed is a
	// missed run.
	LastDue time.Time `json:"last_due,omitzero"`
	// VerifyDue is the same for a verification on its own schedule;
	// VerifyLast is when the data was last verified.
	VerifyDue  time.Time `json:"verify_due,omitzero"`
	VerifyLast time.Time `json:"verify_last,omitzero"`
	// Verified counts the verifications that ran to their end, so that
	// n/m subsets turn (Job.VerifyPart).
	Verified int `json:"verified,omitempty"`
	// Last is the report of the last backup run.
	Last *fleet.Run `json:"last,omitempty"`
}

// stateStore keeps one JSON file per job in the state directory.
type stateStore struct {
	dir string
	mu  sync.Mutex
}

func (s *stateStore) path(job string) string { return filepath.Join(s.dir, job+".json") }

// load returns the state of job; none yet is a zero state.
func (s *stateStore) load(job string) (JobState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st JobState
	data, err := os.ReadFile(s.path(job))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read job state: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		// a damaged state file costs at most a catch-up run: start afresh
		return JobState{}, fmt.Errorf("job state %s is damaged (%v); starting afresh", s.path(job), err)
	}
	return st, nil
}

// update changes the state of job with f and saves it (write and rename:
// a crash leaves the old state or the new one).
func (s *stateStore) update(job string, f func(*JobState)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st JobState
	if data, err := os.ReadFile(s.path(job)); err == nil {
		_ = json.Unmarshal(data, &st) // damaged: reported by load, replaced here
	}
	f(&st)
	data, err := json.MarshalIndent(&st, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	tmp, err := os.CreateTemp(s.dir, "."+job+".json.tmp*")
	if err != nil {
		return fmt.Errorf("save job state: %w", err)
	}
	_, err = tmp.Write(append(data, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), s.path(job))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("save job state: %w", err)
	}
	return nil
}
