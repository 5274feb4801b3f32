// Package check verifies a repository (`floe check`): that every object
// loads and authenticates, that the index agrees with the packs, that every
// snapshot's trees decode and every blob they need is stored, and, with
// ReadData, that every stored byte decrypts and hashes to its name. It
// reports every problem it finds, not only the first, and for damage it
// tells which snapshots and files it affects.
package check

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

// Severity says whether a problem is damage (Error) or worth knowing but
// harmless (Warning).
type Severity string

// Severities.
const (
	Error   Severity = "error"
	Warning Severity = "warning"
)

// Problem kinds: what kind of object a problem is about.
const (
	KindConfig       = "config"            // the config does not load
	KindKey          = "key"               // a key record is damaged
	KindIndex        = "index"             // an index file is damaged
	KindPack         = "pack"              // a pack is missing, truncated, damaged, or disagrees with the index
	KindUnreferenced = "unreferenced-pack" // a pack in no index (warning)
	KindMissingBlob  = "missing-blob"      // snapshots need blobs the index does not list
	KindSnapshot     = "snapshot"          // a snapshot record is damaged
	KindTree         = "tree"              // a tree blob does not load or decode, or is malformed
	KindLeftover     = "leftover"          // an old temporary file (warning)
	KindIncomplete   = "incomplete"        // part of the check could not run (warning)
	KindGCMark       = "gc-mark"           // a gc mark that is not signed by a full key (ignored; warning)
	KindFuture       = "future-snapshot"   // a snapshot dated after it arrived, or after now (warning)
)

// MaxAffectedPerProblem caps Problem.Affected; the rest are counted in
// AffectedMore (Result.Affected has them all).
const MaxAffectedPerProblem = 1000

// Problem is one thing check found.
type Problem struct {
	Severity Severity `json:"severity"`
	Kind     string   `json:"kind"`
	// Object names what is damaged: "data/<pack id>", "index/<id>",
	// "snapshots/<id>", "keys/<id>", "tree/<tree id>", or a file path.
	Object  string `json:"object"`
	Message string `json:"message"`
	// Affected lists the snapshot files and directories this problem
	// damages, filled in when the trees have been walked (so not yet when
	// the problem is first reported).
	Affected     []Affected `json:"affected,omitempty"`
	AffectedMore int        `json:"affected_more,omitempty"`
}

func (p *Problem) String() string { return string(p.Severity) + ": " + p.Message }

// Affected is one file or directory of one snapshot that cannot be
// restored in full.
type Affected struct {
	Snapshot hash.ID
	// Path is the absolute path in the snapshot (raw bytes); "/" for the
	// root directory.
	Path  string
	Cause string // which blob is damaged, and why
}

// String returns "snapshot 1a2b3c4d: /etc/passwd (data blob 5e6f7a8b: ...)".
func (a Affected) String() string {
	return fmt.Sprintf("snapshot %s: %s (%s)", a.Snapshot.Short(), DisplayPath(a.Path), a.Cause)
}

// MarshalJSON writes the path as snapshot records do (snapshot.EncodeName).
func (a Affected) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Snapshot string `json:"snapshot"`
		Path     string `json:"path"`
		Cause    string `json:"cause"`
	}{a.Snapshot.String(), snapshot.EncodeName(a.Path), a.Cause})
}

// DisplayPath returns p as is if it is printable UTF-8, else quoted, so that
// hostile names cannot garble a terminal.
func DisplayPath(p string) string {
	if !utf8.ValidString(p) || strings.ContainsFunc(p, func(r rune) bool { return !unicode.IsPrint(r) && r != ' ' }) {
		return strconv.Quote(p)
	}
	return p
}

// Summary counts what check looked at and found.
type Summary struct {
	Keys              int      `json:"keys"`
	IndexFiles        int      `json:"index_files"`
	Packs             int      `json:"packs"`      // in storage
	PackBytes         int64    `json:"pack_bytes"` // their total size
	UnreferencedPacks int      `json:"unreferenced_packs"`
	Blobs             int      `json:"blobs"` // in the index
	Snapshots         int      `json:"snapshots"`
	Trees             int      `json:"trees"` // distinct trees decoded
	Files             int64    `json:"files"` // file entries of those trees
	ReadData          bool     `json:"read_data"`
	Subset            string   `json:"read_data_subset,omitempty"`
	PacksRead         int      `json:"packs_read"`
	BlobsVerified     int64    `json:"blobs_verified"` // read and found intact
	BytesRead         int64    `json:"bytes_read"`
	Errors            int      `json:"errors"`
	Warnings          int      `json:"warnings"`
	DamagedSnapshots  []string `json:"damaged_snapshots"` // IDs, oldest first
	AffectedPaths     int      `json:"affected_paths"`    // len(Result.Affected)
	DurationSeconds   float64  `json:"duration_seconds"`
}

// Result is what Run found.
type Result struct {
	Problems []*Problem // in the order found
	// Affected lists every damaged file or directory of every snapshot,
	// by snapshot (oldest first) and path.
	Affected []Affected
	Summary  Summary
}

// Errors returns the problems of severity Error.
func (r *Result) Errors() []*Problem { return r.filter(Error) }

// Warnings returns the problems of severity Warning.
func (r *Result) Warnings() []*Problem { return r.filter(Warning) }

func (r *Result) filter(s Severity) []*Problem {
	out := []*Problem{}
	for _, p := range r.Problems {
		if p.Severity == s {
			out = append(out, p)
		}
	}
	return out
}
