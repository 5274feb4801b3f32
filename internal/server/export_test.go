package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// UploadsInProgress returns the uploads the credential id has in progress
// (for tests that need an upload to hold its slot).
func (s *Server) UploadsInProgress(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uploads[id]
}

// ParseMarker is parseMarker for the fuzz test.
var ParseMarker = parseMarker

// MarkerKey is the key markerJournal writes for rec of type t.
func MarkerKey(t string, rec UploadRecord) string {
	b, _ := json.Marshal(rec)
	return fmt.Sprintf("%s%s/%020d-%s", UploadsDirName+"/"+t+"/", rec.Name, rec.Time.UnixNano(), base64.RawURLEncoding.EncodeToString(b))
}

// ParseJournal is parseJournal for the fuzz test.
var ParseJournal = func(b []byte) (map[string]UploadRecord, error) { return parseJournal(bytes.NewReader(b)) }

// SetTimeouts sets the HTTP server's header and idle timeouts of Run
// until the returned function restores them.
func SetTimeouts(header, idle time.Duration) func() {
	h, i := readHeaderTimeout, idleTimeout
	readHeaderTimeout, idleTimeout = header, idle
	return func() { readHeaderTimeout, idleTimeout = h, i }
}

// LoadsInProgress returns the loads the credential id has in progress.
func (s *Server) LoadsInProgress(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loads[id]
}
