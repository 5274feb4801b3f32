package server

import "bytes"

// UploadsInProgress returns the uploads the credential id has in progress
// (for tests that need an upload to hold its slot).
func (s *Server) UploadsInProgress(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.uploads[id]
}

// ParseJournal is parseJournal for the fuzz test.
var ParseJournal = func(b []byte) (map[string]UploadRecord, error) { return parseJournal(bytes.NewReader(b)) }
