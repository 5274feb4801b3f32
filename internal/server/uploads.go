package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
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
	// Size of an upload, in bytes (records from before November 30, 2026
	// have none).
	Size int64 `json:"size,omitempty"`
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

// openJournal opens the journal of type t in dir; nil, nil when there is
// none yet.
func openJournal(dir string, t storage.FileType) (*os.File, error) {
	f, err := os.Open(journalFile(dir, t))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("upload journal: %w", err)
	}
	return f, nil
}

// scanJournal calls fn with every record of a journal file, in the order
// written; a line that does not decode (cut off by a crash) is skipped.
// keep, if not nil, says first whether a line is worth decoding.
func scanJournal(r io.Reader, keep func(line []byte) bool, fn func(UploadRecord)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		if keep != nil && !keep(sc.Bytes()) {
			continue
		}
		var rec UploadRecord
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Name != "" {
			fn(rec)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("upload journal: %w", err)
	}
	return nil
}

// currentRecords folds records, in the order written, into the current
// record of every object: a removal ends it.
type currentRecords map[string]UploadRecord

func (m currentRecords) add(rec UploadRecord) {
	if rec.Removed {
		delete(m, rec.Name)
	} else {
		m[rec.Name] = rec
	}
}

// lastRemoval tells whether last, the last record of a name, is its
// removal, and when.
func lastRemoval(last *UploadRecord) (time.Time, bool) {
	if last == nil || !last.Removed {
		return time.Time{}, false
	}
	return last.Time, true
}

// read returns the current record of every object of type t that has
// one. A damaged line (a crash mid-write) is skipped.
func (j *journal) read(dir string, t storage.FileType) (map[string]UploadRecord, error) {
	f, err := openJournal(dir, t)
	if f == nil {
		return map[string]UploadRecord{}, err
	}
	defer f.Close()
	return parseJournal(f)
}

func parseJournal(f io.Reader) (map[string]UploadRecord, error) {
	m := currentRecords{}
	if err := scanJournal(f, nil, m.add); err != nil {
		return nil, err
	}
	return m, nil
}

// removedAt tells whether the last record of name in the journal of
// type t is its removal, and when that was.
func (j *journal) removedAt(dir string, t storage.FileType, name string) (time.Time, bool, error) {
	f, err := openJournal(dir, t)
	if f == nil {
		return time.Time{}, false, err
	}
	defer f.Close()
	var last *UploadRecord
	err = scanJournal(f, func(line []byte) bool { return bytes.Contains(line, []byte(name)) }, func(rec UploadRecord) {
		if rec.Name == name {
			last = &rec
		}
	})
	if err != nil {
		return time.Time{}, false, err
	}
	when, removed := lastRemoval(last)
	return when, removed, nil
}

// uploadJournal is where one repository's upload records are kept: a
// file per type in a directory beside it (dirJournal, RootDir), or
// marker objects beside its objects in a bucket (markerJournal).
type uploadJournal interface {
	append(ctx context.Context, t storage.FileType, rec UploadRecord) error
	// read returns the current record of every object of type t that
	// has one (none once removed).
	read(ctx context.Context, t storage.FileType) (map[string]UploadRecord, error)
	// removedAt tells whether name's last record is its removal.
	removedAt(ctx context.Context, t storage.FileType, name string) (time.Time, bool, error)
	// each calls fn with every record of type t, those of one name in
	// the order they were written.
	each(ctx context.Context, t storage.FileType, fn func(UploadRecord)) error
}

type dirJournal struct {
	j   *journal
	dir string
}

func (d dirJournal) append(_ context.Context, t storage.FileType, rec UploadRecord) error {
	return d.j.append(d.dir, t, rec)
}

func (d dirJournal) read(_ context.Context, t storage.FileType) (map[string]UploadRecord, error) {
	return d.j.read(d.dir, t)
}

func (d dirJournal) removedAt(_ context.Context, t storage.FileType, name string) (time.Time, bool, error) {
	return d.j.removedAt(d.dir, t, name)
}

func (d dirJournal) each(_ context.Context, t storage.FileType, fn func(UploadRecord)) error {
	f, err := openJournal(d.dir, t)
	if f == nil {
		return err
	}
	defer f.Close()
	return scanJournal(f, nil, fn)
}

// MarkerStore is a backend that keeps empty marker objects beside a
// repository's layout, their keys under UploadsDirName/ (storage/s3): a
// server whose repositories are prefixes of a bucket keeps its journal
// there, so that several servers in front of one bucket agree.
type MarkerStore interface {
	PutMarker(ctx context.Context, rel string) error
	ListMarkers(ctx context.Context, relPrefix string, fn func(rel string) error) error
}

// markerJournal keeps each record as the key of an empty object:
// UploadsDirName/TYPE/NAME/TIME-RECORD, TIME the record's in nanoseconds
// (20 digits, so that keys sort by it) and RECORD its JSON in base64url.
// One listing of a type reads every record of it; an object never
// changes, so servers that append at once never lose a record.
type markerJournal struct{ m MarkerStore }

func markerDir(t storage.FileType) string {
	if t == storage.Config {
		return UploadsDirName + "/config/"
	}
	return UploadsDirName + "/" + string(t) + "/"
}

func (mj markerJournal) append(ctx context.Context, t storage.FileType, rec UploadRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	key := fmt.Sprintf("%s%s/%020d-%s", markerDir(t), rec.Name, rec.Time.UnixNano(), base64.RawURLEncoding.EncodeToString(b))
	if err := mj.m.PutMarker(ctx, key); err != nil {
		return fmt.Errorf("upload journal: %w", err)
	}
	return nil
}

// records calls fn with the records under prefix, oldest first; keys
// that do not decode are skipped.
func (mj markerJournal) records(ctx context.Context, prefix string, fn func(UploadRecord)) error {
	var recs []UploadRecord
	err := mj.m.ListMarkers(ctx, prefix, func(rel string) error {
		if rec, ok := parseMarker(rel); ok {
			recs = append(recs, rec)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("upload journal: %w", err)
	}
	// a listing is in key order: by name, then time; the records of one
	// name are what matters, and those are in time order
	for _, r := range recs {
		fn(r)
	}
	return nil
}

// parseMarker decodes the record a marker's key holds; ok is false for
// a key that is not one (anything the storage lists there, hostile or
// damaged, is skipped).
func parseMarker(rel string) (UploadRecord, bool) {
	_, enc, ok := strings.Cut(path.Base(rel), "-")
	if !ok {
		return UploadRecord{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(enc)
	var rec UploadRecord
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.Name == "" || path.Base(path.Dir(rel)) != rec.Name {
		return UploadRecord{}, false
	}
	return rec, true
}

func (mj markerJournal) each(ctx context.Context, t storage.FileType, fn func(UploadRecord)) error {
	return mj.records(ctx, markerDir(t), fn)
}

func (mj markerJournal) read(ctx context.Context, t storage.FileType) (map[string]UploadRecord, error) {
	m := currentRecords{}
	err := mj.records(ctx, markerDir(t), m.add)
	return m, err
}

func (mj markerJournal) removedAt(ctx context.Context, t storage.FileType, name string) (time.Time, bool, error) {
	var last *UploadRecord
	if err := mj.records(ctx, markerDir(t)+name+"/", func(rec UploadRecord) { last = &rec }); err != nil {
		return time.Time{}, false, err
	}
	when, removed := lastRemoval(last)
	return when, removed, nil
}

// journalOf is repository repo's journal: a directory beside it when the
// repositories keep one (RootDir), marker objects beside its objects when
// its backend keeps those (a bucket prefix), else nil.
func journalOf(repos Repositories, repo string, be storage.Backend, j *journal) uploadJournal {
	if uj, ok := repos.(UploadJournals); ok {
		return dirJournal{j, uj.UploadsDir(repo)}
	}
	if ms, ok := be.(MarkerStore); ok {
		return markerJournal{ms}
	}
	return nil
}

// replayed refuses the upload of a snapshot record that was removed
// before (forget), unless by an admin: a host that kept a copy of a
// record (its own, or one it read) could otherwise bring it back after
// forget, and prune would then keep what it references, or check report
// the blobs a prune had already deleted. An admin may (floe import of an
// export that holds it). Snapshot records are never made twice: each
// holds its own time and tree.
func (s *Server) replayed(q *request, route Route, be storage.Backend) bool {
	if route.Handle.Type != storage.Snapshot || q.tok.Roles&RoleAdmin != 0 {
		return false
	}
	j := journalOf(s.opts.Repos, route.Repo, be, &s.journal)
	if j == nil {
		return false
	}
	when, removed, err := j.removedAt(q.r.Context(), storage.Snapshot, route.Handle.Name)
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

// recordUpload notes who stored h. A failure is reported, not fatal: the
// object is stored; it shows as of unknown origin.
func (s *Server) recordUpload(q *request, repo string, be storage.Backend, h storage.Handle, removed bool) {
	j := journalOf(s.opts.Repos, repo, be, &s.journal)
	if j == nil {
		return
	}
	name := h.Name
	if h.Type == storage.Config {
		name = "config"
	}
	rec := UploadRecord{Name: name, Time: time.Now().UTC(), Removed: removed}
	if !removed {
		rec.Token, rec.Host, rec.Size = q.tok.ID, q.tok.Host, q.rec.Size
	}
	if err := j.append(q.r.Context(), h.Type, rec); err != nil {
		fmt.Fprintf(os.Stderr, "floe serve: repository %s: %s: %v\n", repo, h, err)
	}
	s.uploaders.note(repo, h, rec)
}

// uploaderCache knows who uploaded each object of a repository and type,
// read from the journal the first time a removal needs it and kept up to
// date by this server's uploads and removals: a prune removes thousands
// of objects, each of which gives its uploader's quota back, and reading
// the journal for each would take time growing with the square of the
// repository's size. An object it does not know (uploaded through
// another server in front of the same bucket, or before journals were
// kept) makes it read the journal again, at most once a minute.
type uploaderCache struct {
	mu sync.Mutex
	m  map[string]map[string]string // REPO/TYPE → name → token id
	at map[string]time.Time         // when each was read
}

func uploaderKey(repo string, h storage.Handle) (key, name string) {
	name = h.Name
	if h.Type == storage.Config {
		name = "config"
	}
	return repo + "/" + string(h.Type), name
}

// get returns the id of the token that uploaded h in repo ("" when
// unknown).
func (c *uploaderCache) get(ctx context.Context, j uploadJournal, repo string, h storage.Handle) string {
	key, name := uploaderKey(repo, h)
	c.mu.Lock()
	defer c.mu.Unlock()
	if tok, ok := c.m[key][name]; ok {
		return tok
	}
	if at, ok := c.at[key]; ok && time.Since(at) < time.Minute {
		return ""
	}
	recs, err := j.read(ctx, h.Type)
	if err != nil {
		return ""
	}
	m := make(map[string]string, len(recs))
	for n, r := range recs {
		m[n] = r.Token
	}
	if c.m == nil {
		c.m, c.at = map[string]map[string]string{}, map[string]time.Time{}
	}
	c.m[key], c.at[key] = m, time.Now()
	return m[name]
}

// note records rec, just appended to the journal, if the cache holds h's
// repository and type.
func (c *uploaderCache) note(repo string, h storage.Handle, rec UploadRecord) {
	key, name := uploaderKey(repo, h)
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.m[key]
	switch {
	case !ok:
	case rec.Removed:
		delete(m, name)
	default:
		m[name] = rec.Token
	}
}
