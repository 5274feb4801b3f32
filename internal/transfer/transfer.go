// Package transfer moves snapshots between repositories:
//
//   - Copy copies snapshots into another repository blob by blob, sending
//     only the blobs the destination lacks. Between repositories that share
//     the chunk ID key (init --copy-chunker-params-from) blob and tree IDs
//     are the same and trees are copied as they are; otherwise every blob
//     is named again with the destination's key and the trees are
//     rewritten bottom-up. A copy that is interrupted keeps what it stored;
//     running it again skips the snapshots and blobs that arrived.
//   - Export writes a self-contained repository to a directory (a removable
//     disk): the source's config and keys (or one key of its own), only
//     the blobs the snapshots need, in new packs written through the
//     repository's write path (blobs are convergent: IDs, trees and
//     snapshot records stay the same), and a manifest of every file's
//     size and BLAKE3 hash, written last.
//   - Import checks an export against its manifest, then copies its
//     snapshots into a repository and reads them back.
//
// Loads and saves run in parallel (Options.Connections); bandwidth limits
// are a storage wrapper (internal/storage/limit) around the backends.
package transfer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/ui"
)

// DefaultConnections is how many loads and saves run at once by default.
const DefaultConnections = 4

// DefaultFlushInterval is how often a copy makes what it stored durable
// and indexed (besides after every snapshot), so that an interrupted copy
// loses at most this much work.
const DefaultFlushInterval = time.Minute

// Options tune Copy (and the copy step of Import).
type Options struct {
	// Connections is how many blobs are loaded and saved at once
	// (default DefaultConnections, or more when a repository's backend
	// asks for more: storage.ConnectionsHint).
	Connections int
	// Verify reads back every blob of the copied snapshots from the
	// destination afterwards (LoadBlob checks each against its ID).
	Verify bool
	// FlushInterval: see DefaultFlushInterval.
	FlushInterval time.Duration
	// Progress, if set, hears of the transfer: its phases and, if it
	// implements ui.Counters, the counts named Count*.
	Progress ui.Progress
}

// withConnections fills in the default Connections for the backends.
func (o Options) withConnections(bes ...storage.Backend) Options {
	if o.Connections <= 0 {
		o.Connections = storage.Connections(DefaultConnections, bes...)
	}
	return o
}

func (o Options) connections() int {
	if o.Connections <= 0 {
		return DefaultConnections
	}
	return o.Connections
}

// The counters a transfer keeps beside its phases, named as the JSON
// status of copy, export and import names them (docs/JSON.md). A
// ui.Progress hears of them if it implements ui.Counters; they add up
// over all phases (snapshots_done stays put while "verify" runs).
const (
	CountSnapshotsDone  = "snapshots_done"
	CountSnapshotsTotal = "snapshots_total"
	// blobs handled, and of those the blobs sent (new to the destination)
	CountBlobsDone = "blobs_done"
	CountBlobsSent = "blobs_sent"
	// plaintext loaded from the source; the plaintext of the blobs sent
	// (copy), or the bytes of files written (export, import)
	CountBytesRead = "bytes_read"
	CountBytesSent = "bytes_sent"
	// what verification read back
	CountBytesVerified = "bytes_verified"
)

// progress reports a transfer to its ui.Progress: phases by name, a
// snapshot done as an item and the bytes sent (or verified) as the
// phase's bytes, and every count by name to a ui.Counters.
type progress struct {
	p ui.Progress
	c ui.Counters // nil: p keeps no named counters
}

func newProgress(p ui.Progress) *progress {
	if p == nil {
		p = ui.NoProgress
	}
	c, _ := p.(ui.Counters)
	return &progress{p: p, c: c}
}

func (p *progress) count(name string, n int64) {
	if p.c != nil {
		p.c.Count(name, n)
	}
}

func (p *progress) phase(name string) { p.p.Phase(name, 0, 0) }

func (p *progress) snapshots(n int) {
	p.p.Grow(int64(n), 0)
	p.count(CountSnapshotsTotal, int64(n))
}

func (p *progress) snapshotDone() {
	p.p.Done(1, 0)
	p.count(CountSnapshotsDone, 1)
}

func (p *progress) blobDone()       { p.count(CountBlobsDone, 1) }
func (p *progress) read(n int)      { p.count(CountBytesRead, int64(n)) }
func (p *progress) blobsSent(n int) { p.count(CountBlobsSent, int64(n)) }

func (p *progress) sent(n int) {
	p.p.Done(0, int64(n))
	p.count(CountBytesSent, int64(n))
}

func (p *progress) verified(n int) {
	p.p.Done(0, int64(n))
	p.count(CountBytesVerified, int64(n))
}

// Copied is one snapshot of a transfer.
type Copied struct {
	Source      hash.ID `json:"source"`      // its ID in the source
	Destination hash.ID `json:"destination"` // its ID in the destination
	// Skipped: the destination had it already (its ID, or a copy of it).
	Skipped bool `json:"skipped"`
}

// Result summarizes a copy or an import.
type Result struct {
	Snapshots []Copied
	// SharedKey: the repositories share the chunk ID key.
	SharedKey bool
	// ByID: they also share the compression level, so blobs were copied
	// by ID and trees as they are; else blobs were stored at the
	// destination's level under new IDs and trees rewritten.
	ByID bool
	// Verbatim: packs were copied as they are (import into a repository
	// with the same secrets).
	Verbatim bool
	// Saved is what the destination stored (new blobs, their plaintext
	// and stored size, packs).
	Saved repo.SaveStats
	// BlobsChecked is how many data blobs the snapshots need.
	BlobsChecked uint64
	// Verified, VerifiedBlobs, VerifiedBytes: the read-back (Options.Verify).
	Verified      bool
	VerifiedBlobs uint64
	VerifiedBytes uint64
}

// VerifyError reports blobs that could not be read back, or did not
// match their IDs, after a copy.
type VerifyError struct {
	Repository string   // location of the repository read back
	Problems   []string // one line each, the first 1000
	Count      int      // all problems
}

func (e *VerifyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "verification of the copied snapshots in %s failed: %s", e.Repository, ui.Count(e.Count, "problem"))
	listProblems(&b, e.Problems, e.Count, 10)
	return b.String()
}

// listProblems writes problems to b, an indented line each, up to shown of
// them, then how many of all count were left out (VerifyError and
// ExportError).
func listProblems(b *strings.Builder, problems []string, count, shown int) {
	for i, p := range problems {
		if i == shown {
			fmt.Fprintf(b, "\n  ... and %d more", count-shown)
			break
		}
		b.WriteString("\n  ")
		b.WriteString(p)
	}
}

// originOf is the ID a snapshot is known by across copies: the snapshot
// it is a copy of, else itself.
func originOf(r *snapshot.Record) hash.ID {
	if !r.Original.IsNull() {
		return r.Original
	}
	return r.ID
}

// existingSnapshots maps the ID of every snapshot in r, and the original
// of every copy in r, to the snapshot's ID in r.
func existingSnapshots(ctx context.Context, r *repo.Repository) (map[hash.ID]hash.ID, error) {
	// A damaged snapshot record cannot tell what it is a copy of: at
	// worst a snapshot is copied again, which costs a duplicate record.
	all, _, err := snapshot.List(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("list snapshots of %s: %w", r.Backend().Location(), err)
	}
	m := make(map[hash.ID]hash.ID, 2*len(all))
	for _, s := range all {
		m[s.ID] = s.ID
		if !s.Original.IsNull() {
			if _, ok := m[s.Original]; !ok {
				m[s.Original] = s.ID
			}
		}
	}
	return m, nil
}

// errorList collects problems from many goroutines.
type errorList struct {
	mu    sync.Mutex
	list  []string
	count int
}

func (l *errorList) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.count++
	if len(l.list) < 1000 {
		l.list = append(l.list, fmt.Sprintf(format, args...))
	}
}

func checkReadable(r *repo.Repository, what string) error {
	if r.WriteOnly() {
		return fmt.Errorf("%s %s: %w", what, r.Backend().Location(), repo.ErrWriteOnly)
	}
	return nil
}

func isCanceled(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}
