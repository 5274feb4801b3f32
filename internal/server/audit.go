package server

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
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
	Result string    `json:"result"` // "ok", "exists" (identical re-upload), "refused", "error", "suppressed"
	Reason string    `json:"reason,omitempty"`
	// Suppressed: on a "suppressed" record, how many refusals of its
	// source were left out of the log (AuditLog's budgets).
	Suppressed int64 `json:"suppressed,omitempty"`
}

// AuditLog appends JSON lines to a file (mode 0600). It is safe for
// concurrent use; each record is one write, so lines never interleave.
//
// Refusals are budgeted: anyone who reaches the port can send refused
// requests as fast as the network carries them, and each was a line of
// about 300 bytes, so a flood filled the state directory's disk. A
// refusal is written while its source (its token, or its address when it
// has no valid token) and the whole log both have budget left; past
// either, it is counted for its source, not written, and once a minute a
// line per source says how many were left out. Writes, deletes and errors
// are always written.
type AuditLog struct {
	mu sync.Mutex
	f  *os.File

	now     func() time.Time
	all     refusalBudget
	budgets map[string]*refusalBudget
	muted   map[string]*refusalBudget // sources with refusals left out
	// nextSummary: when the oldest count of muted is due
	nextSummary time.Time
}

// The budgets: a source may write a burst of 100 refusal lines, then one
// a second; the log as a whole 1,000, then 10 a second (at most about 11
// MB an hour under a flood from any number of addresses). At most
// refusalSources sources are counted; refusals of further ones are
// counted together (refusalOthers), so that addresses by the million
// cost no memory. Summaries: at most summaryLines a minute, the sources
// that left out the most, and one line for the rest.
const (
	sourceBurst    = 100
	sourceEvery    = time.Second
	logBurst       = 1000
	logEvery       = time.Second / 10
	refusalSources = 4096
	refusalOthers  = "other sources"
	summaryEvery   = time.Minute
	summaryLines   = 32
)

// refusalBudget is a token bucket of audit lines for refusals, and for a
// source the count of those left out since mutedSince.
type refusalBudget struct {
	lines      float64
	at         time.Time
	left       int64
	mutedSince time.Time
	last       AuditRecord // the last refusal left out, for the summary
}

// take refills b at one line per every, up to burst, and takes a line if
// there is one.
func (b *refusalBudget) take(now time.Time, burst int, every time.Duration) bool {
	b.refill(now, burst, every)
	if b.lines < 1 {
		return false
	}
	b.lines--
	return true
}

func (b *refusalBudget) refill(now time.Time, burst int, every time.Duration) {
	if now.After(b.at) {
		b.lines = min(float64(burst), b.lines+float64(now.Sub(b.at))/float64(every))
		b.at = now
	}
}

// OpenAuditLog opens path for appending, creating it 0600.
func OpenAuditLog(path string) (*AuditLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	now := time.Now()
	return &AuditLog{f: f, now: time.Now, all: refusalBudget{lines: logBurst, at: now},
		budgets: map[string]*refusalBudget{}, muted: map[string]*refusalBudget{}}, nil
}

// Write appends rec, unless it is a refusal beyond its budget. A failing
// audit log is reported on stderr: the request it records has already
// happened.
func (a *AuditLog) Write(rec AuditRecord) {
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if len(a.muted) > 0 && !now.Before(a.nextSummary) {
		a.summarizeLocked(now, false)
	}
	if rec.Result == "refused" && !a.allowLocked(now, rec) {
		return
	}
	a.writeLocked(rec)
}

func (a *AuditLog) writeLocked(rec AuditRecord) {
	b, err := json.Marshal(rec)
	if err != nil {
		return
	}
	if _, err := a.f.Write(append(b, '\n')); err != nil {
		fmt.Fprintf(os.Stderr, "floe serve: audit log: %v\n", err)
	}
}

// refusalSource is whom a refusal is charged to: its token, or the
// remote address for a request without a valid one.
func refusalSource(rec AuditRecord) string {
	if rec.Token != "" {
		return "token " + rec.Token
	}
	host, _, err := net.SplitHostPort(rec.Remote)
	if err != nil {
		host = rec.Remote
	}
	return "address " + host
}

// allowLocked takes a line from rec's source's budget and the log's, or
// counts rec as left out.
func (a *AuditLog) allowLocked(now time.Time, rec AuditRecord) bool {
	src := refusalSource(rec)
	b := a.budgets[src]
	if b == nil {
		if len(a.budgets) >= refusalSources {
			a.evictLocked(now)
		}
		if len(a.budgets) >= refusalSources {
			src = refusalOthers
			b = a.budgets[src]
		}
		if b == nil {
			b = &refusalBudget{lines: sourceBurst, at: now}
			a.budgets[src] = b
		}
	}
	// a muted source writes again once its count is summarized
	if b.left == 0 && b.take(now, sourceBurst, sourceEvery) {
		if a.all.take(now, logBurst, logEvery) {
			return true
		}
		b.lines++ // not written: the source keeps its line
	}
	if b.left == 0 {
		b.mutedSince = now
		a.muted[src] = b
		if a.nextSummary.IsZero() {
			a.nextSummary = now.Add(summaryEvery)
		}
	}
	b.left++
	b.last = rec
	return false
}

// evictLocked forgets the budgets that are full again and count nothing:
// they would start full anyway.
func (a *AuditLog) evictLocked(now time.Time) {
	for src, b := range a.budgets {
		if b.left == 0 {
			if b.refill(now, sourceBurst, sourceEvery); b.lines >= sourceBurst {
				delete(a.budgets, src)
			}
		}
	}
}

// summarizeLocked writes how many refusals the muted sources left out,
// once their counts are summaryEvery old (all of them with all): a record
// of result "suppressed" per source, with the last refusal's token, host,
// address and operation, for the summaryLines sources that left out the
// most, and one for the rest.
func (a *AuditLog) summarizeLocked(now time.Time, all bool) {
	type count struct {
		src string
		b   *refusalBudget
	}
	var ready []count
	a.nextSummary = time.Time{}
	for src, b := range a.muted {
		switch due := b.mutedSince.Add(summaryEvery); {
		case all || !now.Before(due):
			ready = append(ready, count{src, b})
		case a.nextSummary.IsZero() || due.Before(a.nextSummary):
			a.nextSummary = due
		}
	}
	if len(ready) == 0 {
		return
	}
	sort.Slice(ready, func(i, j int) bool {
		if ready[i].b.left != ready[j].b.left {
			return ready[i].b.left > ready[j].b.left
		}
		return ready[i].src < ready[j].src
	})
	var restLeft, restSources int64
	for i, d := range ready {
		if i < summaryLines {
			rec := d.b.last
			rec.Time, rec.Object, rec.Size, rec.Status = now, "", 0, 0
			rec.Result, rec.Suppressed = "suppressed", d.b.left
			rec.Reason = fmt.Sprintf("%d refused requests from %s since %s not written (over its budget or the log's); the last: %s",
				d.b.left, d.src, d.b.mutedSince.UTC().Format(time.RFC3339), d.b.last.Reason)
			a.writeLocked(rec)
		} else {
			restLeft += d.b.left
			restSources++
		}
		d.b.left = 0
		delete(a.muted, d.src)
	}
	if restSources > 0 {
		a.writeLocked(AuditRecord{Time: now, Op: "refusals", Result: "suppressed", Suppressed: restLeft,
			Reason: fmt.Sprintf("%d refused requests from %d more sources not written", restLeft, restSources)})
	}
}

// Close writes what is left out and closes the file.
func (a *AuditLog) Close() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.summarizeLocked(a.now(), true)
	return a.f.Close()
}
