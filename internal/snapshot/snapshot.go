package snapshot

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/floe-backup/floe/internal/hash"
)

// SnapshotVersion is the version of snapshot records this package writes and
// the only one it reads.
const SnapshotVersion = 2

// Snapshot is a snapshot record (docs/FORMAT.md "Snapshots"). Paths and
// ChangedDuringRead hold raw bytes; the JSON form escapes them (EncodeName).
// Its JSON methods are MarshalSnapshot and UnmarshalSnapshot, so
// encoding/json writes and reads the format too.
type Snapshot struct {
	Version        int // SnapshotVersion; 0 is written as SnapshotVersion
	Time           time.Time
	Hostname       string
	Username       string
	UID, GID       uint32
	Paths          []string
	Tags           []string
	Tree           hash.Ref // root tree; required
	Parent         hash.ID  // null: no parent (omitted from JSON)
	Original       hash.ID  // copies (floe copy/import): the snapshot's ID where it was first made; null: not a copy
	ProgramVersion string
	Summary        Summary
	Consistency    Consistency
}

// Summary holds the statistics of the backup that wrote a snapshot.
type Summary struct {
	FilesNew        uint64  `json:"files_new"`
	FilesChanged    uint64  `json:"files_changed"`
	FilesUnchanged  uint64  `json:"files_unchanged"`
	Dirs            uint64  `json:"dirs"`
	Errors          uint64  `json:"errors"`
	TotalBytes      uint64  `json:"total_bytes"`
	DataAdded       uint64  `json:"data_added"`
	DataAddedStored uint64  `json:"data_added_stored"`
	DurationSeconds float64 `json:"duration_seconds"`
}

// Consistency records how consistent a snapshot is: whether files were
// compared before and after reading (Checked), whether the source was a
// frozen view (Frozen), and which files still changed while being read.
// ChangedDuringRead may be capped; ChangedCount is the full count.
type Consistency struct {
	Checked           bool
	Frozen            bool
	ChangedDuringRead []string
	ChangedCount      int
}

// ErrInvalidSnapshot is wrapped by the errors of UnmarshalSnapshot and
// MarshalSnapshot about a record's contents.
var ErrInvalidSnapshot = errors.New("invalid snapshot")

type snapshotJSON struct {
	Version        int             `json:"version"`
	Time           time.Time       `json:"time"`
	Hostname       string          `json:"hostname"`
	Username       string          `json:"username"`
	UID            uint32          `json:"uid"`
	GID            uint32          `json:"gid"`
	Paths          []pathString    `json:"paths"`
	Tags           []string        `json:"tags"`
	Tree           *hash.Ref       `json:"tree"`
	Parent         string          `json:"parent,omitempty"`
	Original       string          `json:"original,omitempty"`
	ProgramVersion string          `json:"program_version"`
	Summary        Summary         `json:"summary"`
	Consistency    consistencyJSON `json:"consistency"`
}

type consistencyJSON struct {
	Checked           bool         `json:"checked"`
	Frozen            bool         `json:"frozen"`
	ChangedDuringRead []pathString `json:"changed_during_read"`
	ChangedCount      int          `json:"changed_count"`
}

// MarshalSnapshot returns the JSON record of s. The time is written in UTC.
// Nil lists are written as []. It fails if the version is unknown, the tree
// is null, the time's year is outside 0..9999, or a string other than a path
// (hostname, username, tags, program version) is not valid UTF-8.
func MarshalSnapshot(s *Snapshot) ([]byte, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: nil snapshot", ErrInvalidSnapshot)
	}
	v := s.Version
	if v == 0 {
		v = SnapshotVersion
	}
	if v != SnapshotVersion {
		return nil, fmt.Errorf("%w: unsupported version %d", ErrInvalidSnapshot, v)
	}
	if s.Tree.IsNull() {
		return nil, fmt.Errorf("%w: no tree", ErrInvalidSnapshot)
	}
	for what, str := range map[string]string{"hostname": s.Hostname, "username": s.Username, "program version": s.ProgramVersion} {
		if !utf8.ValidString(str) {
			return nil, fmt.Errorf("%w: %s %q is not valid UTF-8", ErrInvalidSnapshot, what, str)
		}
	}
	for _, tag := range s.Tags {
		if !utf8.ValidString(tag) {
			return nil, fmt.Errorf("%w: tag %q is not valid UTF-8", ErrInvalidSnapshot, tag)
		}
	}
	tree := s.Tree
	w := snapshotJSON{
		Version:        v,
		Time:           s.Time.UTC(),
		Hostname:       s.Hostname,
		Username:       s.Username,
		UID:            s.UID,
		GID:            s.GID,
		Paths:          toPathStrings(s.Paths),
		Tags:           s.Tags,
		Tree:           &tree,
		ProgramVersion: s.ProgramVersion,
		Summary:        s.Summary,
		Consistency: consistencyJSON{
			Checked:           s.Consistency.Checked,
			Frozen:            s.Consistency.Frozen,
			ChangedDuringRead: toPathStrings(s.Consistency.ChangedDuringRead),
			ChangedCount:      s.Consistency.ChangedCount,
		},
	}
	if w.Tags == nil {
		w.Tags = []string{}
	}
	if !s.Parent.IsNull() {
		w.Parent = s.Parent.String()
	}
	if !s.Original.IsNull() {
		w.Original = s.Original.String()
	}
	out, err := json.Marshal(&w)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSnapshot, err)
	}
	return out, nil
}

// UnmarshalSnapshot parses a JSON snapshot record. It fails, with an error
// wrapping ErrInvalidSnapshot, on malformed JSON, a version other than
// SnapshotVersion, a missing or malformed tree ID, a malformed parent ID
// (absent, null or "" mean no parent), a bad "b64:" path, or a time that is
// outside years 0..9999 in UTC. Unknown fields are ignored. The time is
// returned in UTC; empty lists are returned as nil.
func UnmarshalSnapshot(data []byte) (*Snapshot, error) {
	var w snapshotJSON
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidSnapshot, err)
	}
	if w.Version != SnapshotVersion {
		return nil, fmt.Errorf("%w: unsupported version %d", ErrInvalidSnapshot, w.Version)
	}
	if w.Tree == nil || w.Tree.IsNull() {
		return nil, fmt.Errorf("%w: no tree", ErrInvalidSnapshot)
	}
	s := &Snapshot{
		Version:        w.Version,
		Time:           w.Time.UTC(),
		Hostname:       w.Hostname,
		Username:       w.Username,
		UID:            w.UID,
		GID:            w.GID,
		Paths:          fromPathStrings(w.Paths),
		Tree:           *w.Tree,
		ProgramVersion: w.ProgramVersion,
		Summary:        w.Summary,
		Consistency: Consistency{
			Checked:           w.Consistency.Checked,
			Frozen:            w.Consistency.Frozen,
			ChangedDuringRead: fromPathStrings(w.Consistency.ChangedDuringRead),
			ChangedCount:      w.Consistency.ChangedCount,
		},
	}
	if len(w.Tags) > 0 {
		s.Tags = w.Tags
	}
	if y := s.Time.Year(); y < 0 || y > 9999 {
		return nil, fmt.Errorf("%w: time %v is out of range", ErrInvalidSnapshot, w.Time)
	}
	if w.Parent != "" {
		p, err := hash.Parse(w.Parent)
		if err != nil {
			return nil, fmt.Errorf("%w: parent: %w", ErrInvalidSnapshot, err)
		}
		s.Parent = p
	}
	if w.Original != "" {
		o, err := hash.Parse(w.Original)
		if err != nil {
			return nil, fmt.Errorf("%w: original: %w", ErrInvalidSnapshot, err)
		}
		s.Original = o
	}
	return s, nil
}

// MarshalJSON writes the format of MarshalSnapshot.
func (s Snapshot) MarshalJSON() ([]byte, error) { return MarshalSnapshot(&s) }

// UnmarshalJSON reads the format of UnmarshalSnapshot.
func (s *Snapshot) UnmarshalJSON(data []byte) error {
	parsed, err := UnmarshalSnapshot(data)
	if err != nil {
		return err
	}
	*s = *parsed
	return nil
}

// b64Prefix marks a name stored as base64 (EncodeName).
const b64Prefix = "b64:"

// EncodeName returns name as it is stored in JSON: unchanged if it is valid
// UTF-8 and does not start with "b64:", else "b64:" followed by the standard
// base64 of its bytes. DecodeName reverses it exactly.
func EncodeName(name string) string {
	if utf8.ValidString(name) && !strings.HasPrefix(name, b64Prefix) {
		return name
	}
	return b64Prefix + base64.StdEncoding.EncodeToString([]byte(name))
}

// DecodeName reverses EncodeName.
func DecodeName(s string) (string, error) {
	enc, ok := strings.CutPrefix(s, b64Prefix)
	if !ok {
		return s, nil
	}
	b, err := base64.StdEncoding.Strict().DecodeString(enc)
	if err != nil {
		return "", fmt.Errorf("bad base64 name %q: %w", s, err)
	}
	return string(b), nil
}

// pathString is a raw-byte string that is JSON-encoded with EncodeName.
type pathString string

func (p pathString) MarshalJSON() ([]byte, error) {
	return json.Marshal(EncodeName(string(p)))
}

func (p *pathString) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return err
	}
	name, err := DecodeName(s)
	if err != nil {
		return err
	}
	*p = pathString(name)
	return nil
}

func toPathStrings(ss []string) []pathString {
	out := make([]pathString, len(ss)) // never nil: written as []
	for i, s := range ss {
		out[i] = pathString(s)
	}
	return out
}

func fromPathStrings(ps []pathString) []string {
	if len(ps) == 0 {
		return nil
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = string(p)
	}
	return out
}
