package server

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// AuditRecord is one line of the audit log: every write, delete and
// refused request. It names the token by its id, never its secret.
type AuditRecord struct {
	Time   time.Time `json:"time"`
	Token  string    `json:"token,omitempty"`
	Host   string    `json:"host,omitempty"`
	Remote string    `json:"remote"`
	Repo   string    `json:"repo,omitempty"`
	Op     string    `json:"op"`
	Object string    `json:"object,omitempty"`
	Size   int64     `json:"size"`
	Status int       `json:"status"`
	Result string    `json:"result"` // "ok", "exists" (identical re-upload), "refused", "error"
	Reason string    `json:"reason,omitempty"`
}

// AuditLog appends JSON lines to a file (mode 0600). It is safe for
// concurrent use; each record is one write, so lines never interleave.
type AuditLog struct {
	mu sync.Mutex
	f  *os.File
}

// OpenAuditLog opens path for appending, creating it 0600.
func OpenAuditLog(path string) (*AuditLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return &AuditLog{f: f}, nil
}

// Write appends rec. A failing audit log is reported on stderr: the
// request it records has already happened.
func (a *AuditLog) Write(rec AuditRecord) {
	if a == nil {
		return
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.f.Write(append(b, '\n')); err != nil {
		fmt.Fprintf(os.Stderr, "floe serve: audit log: %v\n", err)
	}
}

// Close closes the file.
func (a *AuditLog) Close() error {
	if a == nil {
		return nil
	}
	return a.f.Close()
}
