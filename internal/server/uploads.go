package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/storage"
)

// Who wrote what. The server records, for every object it stores, which
// credential uploaded it and when it arrived, so that a snapshot record
// can be judged by who wrote it and when, not only by what it claims (a
// compromised host holding a write-only key can write a snapshot that
// claims another host name and any time). The record is a journal per
// repository and object type next to the objects, in the repository's
// directory (REPO/.floe-uploads/TYPE.jsonl): every server that serves the
// directory (floe serve over https, each `floe serve --stdio` started by
// sshd, several servers on shared storage) appends to the same journal and
// reads the same answers. Each record is one line written with one
// O_APPEND write, which local file systems keep whole. See
// docs/PROTOCOL.md "Who wrote what".

// UploadsDirName is the journal's directory inside a repository's
// directory: a dot name, which no object type is.
const UploadsDirName = ".floe-uploads"

// UploadRecord is one line of the journal.
type UploadRecord struct {
	Name string `json:"name"`
	// Token is the credential's id ("ssh" for --stdio); Host its host
	// name (the token's, or --stdio's --host).
	Token string    `json:"token,omitempty"`
	Host  string    `json:"host,omitempty"`
	Time  time.Time `json:"time"`
	// Removed: the object was removed (prune, forget); a later upload
	// of the same name starts a new record.
	Removed bool `json:"removed,omitempty"`
}

// UploadJournals is implemented by Repositories that keep a journal of
// uploads (RootDir): the directory of repository repo's journal.
type UploadJournals interface {
	UploadsDir(repo string) string
}

// UploadsDir implements UploadJournals.
func (d *RootDir) UploadsDir(repo string) string {
	return filepath.Join(d.repoDir(repo), UploadsDirName)
}

// journal appends and reads upload records.
type journal struct {
	mu sync.Mutex // one append at a time within a process
}

func journalFile(dir string, t storage.FileType) string {
	if t == storage.Config {
		return filepath.Join(dir, "config.jsonl")
	}
	return filepath.Join(dir, string(t)+".jsonl")
}

func (j *journal) append(dir string, t storage.FileType, rec UploadRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("upload journal: %w", err)
	}
	f, err := os.OpenFile(journalFile(dir, t), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("upload journal: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("upload journal: %w", err)
	}
	return f.Close()
}

// read returns the current record of every object of type t that has
// one. A damaged line (a crash mid-write) is skipped.
func (j *journal) read(dir string, t storage.FileType) (map[string]UploadRecord, error) {
	f, err := os.Open(journalFile(dir, t))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]UploadRecord{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("upload journal: %w", err)
	}
	defer f.Close()
	return parseJournal(f)
}

func parseJournal(f interface{ Read([]byte) (int, error) }) (map[string]UploadRecord, error) {
	m := map[string]UploadRecord{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		var rec UploadRecord
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Name == "" {
			continue
		}
		if rec.Removed {
			delete(m, rec.Name)
			continue
		}
		m[rec.Name] = rec
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("upload journal: %w", err)
	}
	return m, nil
}

// removedAt tells whether the last record of name in the journal of
// type t is its removal, and when that was.
func (j *journal) removedAt(dir string, t storage.FileType, name string) (time.Time, bool, error) {
	f, err := os.Open(journalFile(dir, t))
	if errors.Is(err, fs.ErrNotExist) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("upload journal: %w", err)
	}
	defer f.Close()
	var last *UploadRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		if !bytes.Contains(sc.Bytes(), []byte(name)) {
			continue
		}
		var rec UploadRecord
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Name != name {
			continue
		}
		last = &rec
	}
	if err := sc.Err(); err != nil {
		return time.Time{}, false, fmt.Errorf("upload journal: %w", err)
	}
	if last == nil || !last.Removed {
		return time.Time{}, false, nil
	}
	return last.Time, true, nil
}

// replayed refuses the upload of a snapshot record that was removed
// before (forget), unless by an admin: a host that kept a copy of a
// record (its own, or one it read) could otherwise bring it back after
// forget, and prune would then keep what it references, or check report
// the blobs a prune had already deleted. An admin may (floe import of an
// export that holds it). Snapshot records are never made twice: each
// holds its own time and tree.
func (s *Server) replayed(q *request, route Route) bool {
	if route.Handle.Type != storage.Snapshot || q.tok.Roles&RoleAdmin != 0 {
		return false
	}
	dir := s.journalDir(route.Repo)
	if dir == "" {
		return false
	}
	when, removed, err := s.journal.removedAt(dir, storage.Snapshot, route.Handle.Name)
	if err != nil {
		s.storageError(q, err)
		return true
	}
	if removed {
		q.fail(s, http.StatusForbidden, CodeForbidden, fmt.Errorf("%s was removed on %s (forget); %s may not upload a removed snapshot record again",
			route.Handle, when.UTC().Format(time.RFC3339), q.tok.Describe()))
		return true
	}
	return false
}

// journalDir is the journal of repository repo, or "" when the server's
// repositories keep none.
func (s *Server) journalDir(repo string) string {
	if uj, ok := s.opts.Repos.(UploadJournals); ok {
		return uj.UploadsDir(repo)
	}
	return ""
}

// recordUpload notes who stored h. A failure is reported, not fatal: the
// object is stored; it shows as of unknown origin.
func (s *Server) recordUpload(q *request, repo string, h storage.Handle, removed bool) {
	dir := s.journalDir(repo)
	if dir == "" {
		return
	}
	name := h.Name
	if h.Type == storage.Config {
		name = "config"
	}
	rec := UploadRecord{Name: name, Time: time.Now().UTC(), Removed: removed}
	if !removed {
		rec.Token, rec.Host = q.tok.ID, q.tok.Host
	}
	if err := s.journal.append(dir, h.Type, rec); err != nil {
		fmt.Fprintf(os.Stderr, "floe serve: repository %s: %s: %v\n", repo, h, err)
	}
}
