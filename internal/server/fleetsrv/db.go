package fleetsrv

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/floe-backup/floe/internal/fleet"

	_ "modernc.org/sqlite" // database/sql driver "sqlite", pure Go
)

// DBFile is the fleet database in the server's state directory.
const DBFile = "fleet.db"

// migrations are numbered and applied in order, once each (recorded in
// schema_migrations). They are plain SQL that PostgreSQL runs as well:
// times are BIGINT Unix milliseconds, no SQLite-only types, and the
// statements use $N placeholders; run ids are assigned by the store
// (max+1 within the writing transaction), not by AUTOINCREMENT or SERIAL.
var migrations = []string{
	1: `
CREATE TABLE hosts (
	name           TEXT PRIMARY KEY,
	repo           TEXT NOT NULL,
	enroll_hash    TEXT,
	enroll_expires BIGINT NOT NULL DEFAULT 0,
	token_id       TEXT NOT NULL DEFAULT '',
	created        BIGINT NOT NULL,
	enrolled       BIGINT NOT NULL DEFAULT 0,
	revoked        BIGINT NOT NULL DEFAULT 0,
	last_seen      BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX hosts_enroll_hash ON hosts (enroll_hash);
CREATE TABLE runs (
	id            BIGINT PRIMARY KEY,
	host          TEXT NOT NULL REFERENCES hosts (name),
	job           TEXT NOT NULL,
	task          TEXT NOT NULL,
	attempt       BIGINT NOT NULL DEFAULT 0,
	start_ms      BIGINT NOT NULL,
	end_ms        BIGINT NOT NULL,
	status        TEXT NOT NULL,
	error         TEXT NOT NULL DEFAULT '',
	files         BIGINT NOT NULL DEFAULT 0,
	bytes_read    BIGINT NOT NULL DEFAULT 0,
	bytes_new     BIGINT NOT NULL DEFAULT 0,
	bytes_stored  BIGINT NOT NULL DEFAULT 0,
	errors        BIGINT NOT NULL DEFAULT 0,
	files_changed BIGINT NOT NULL DEFAULT 0,
	version       TEXT NOT NULL DEFAULT '',
	snapshot      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_host_end ON runs (host, end_ms);
CREATE INDEX runs_end ON runs (end_ms);
CREATE TABLE jobs (
	host            TEXT NOT NULL REFERENCES hosts (name),
	name            TEXT NOT NULL,
	task            TEXT NOT NULL,
	next_due        BIGINT NOT NULL DEFAULT 0,
	last_run        BIGINT NOT NULL DEFAULT 0,
	last_success    BIGINT NOT NULL DEFAULT 0,
	PRIMARY KEY (host, name, task)
);
CREATE TABLE alerts (
	kind      TEXT NOT NULL,
	host      TEXT NOT NULL,
	job       TEXT NOT NULL,
	since     BIGINT NOT NULL,
	last_sent BIGINT NOT NULL,
	message   TEXT NOT NULL,
	PRIMARY KEY (kind, host, job)
);`,
	// retention runs (forget and prune by an agent's job of type
	// "retention"): what they removed and freed
	2: `
ALTER TABLE runs ADD COLUMN snapshots_removed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN bytes_freed BIGINT NOT NULL DEFAULT 0;`,
	// report ids: a report sent again (its answer was lost) is recorded
	// once; NULL for reports without one (unique indexes let NULLs repeat
	// in SQLite and PostgreSQL alike)
	3: `
ALTER TABLE runs ADD COLUMN report_id TEXT;
CREATE UNIQUE INDEX runs_report ON runs (host, report_id);`,
}

// DB is the fleet database: hosts, their jobs and runs, and active alerts.
type DB struct {
	db *sql.DB
	// wmu serialises this process's writes: SQLite takes one writer at
	// a time, and writers that find it busy sleep in growing steps
	// (busy_timeout), which gave reports a p99 of seconds under load
	// (bench/FLEET.md); waiting on a mutex is fair and wakes at once.
	// Other processes (floe serve host add) still meet busy_timeout.
	wmu sync.Mutex

	// seen is when each host's last_seen was last written: every request
	// of an agent (a queued one asks for its lease every few seconds)
	// used to write it, a commit each under wmu; now at most every
	// SeenEvery per host.
	seenMu sync.Mutex
	seen   map[string]time.Time
}

// SeenEvery is how stale a host's last_seen may be: far below any
// "agent silent" threshold (hours).
const SeenEvery = 30 * time.Second

// OpenDB opens (creating and migrating) the database of stateDir.
func OpenDB(ctx context.Context, stateDir string) (*DB, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("fleet database: %w", err)
	}
	path := filepath.Join(stateDir, DBFile)
	// the file holds host names and error texts: owner only
	if f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600); err == nil {
		f.Close()
	}
	// WAL and a busy timeout: `floe serve host add` writes while a
	// server runs. synchronous NORMAL: in WAL mode a commit then survives
	// a crash of floe serve and is lost only with the machine (power,
	// kernel) before the next checkpoint; it saves an fsync per report
	// and lease, which set the tail latency (bench/FLEET.md). What such a
	// loss costs: the last runs' reports (the snapshots are in the
	// repository; an alert may fire again); worth the latency for state
	// that the next reports bring back.
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_txlock=immediate"
	sdb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("fleet database %s: %w", path, err)
	}
	d := &DB{db: sdb, seen: map[string]time.Time{}}
	if err := d.migrate(ctx); err != nil {
		sdb.Close()
		return nil, fmt.Errorf("fleet database %s: %w", path, err)
	}
	return d, nil
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

func (d *DB) migrate(ctx context.Context) error {
	if _, err := d.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)`); err != nil {
		return err
	}
	for v := 1; v < len(migrations); v++ {
		tx, err := d.db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = $1`, v).Scan(&n); err != nil {
			tx.Rollback()
			return err
		}
		if n > 0 {
			tx.Rollback()
			continue
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)`, v, time.Now().UnixMilli()); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", v, err)
		}
	}
	return nil
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

// Host is a row of hosts.
type Host struct {
	Name, Repo string
	TokenID    string
	Created    time.Time
	Enrolled   time.Time
	Revoked    time.Time
	LastSeen   time.Time
	// Pending: added, not enrolled yet.
	Pending bool
}

// Errors of the store.
var (
	ErrHostExists   = errors.New("host exists")
	ErrNoHost       = errors.New("no such host")
	ErrBadEnrolment = errors.New("unknown, used or expired enrollment token")
	// ErrHostEnrolled (with ErrHostExists): the host must be revoked
	// before it is added again.
	ErrHostEnrolled = errors.New("enrolled")
	// ErrDuplicateRun: the host reported this run before.
	ErrDuplicateRun = errors.New("run reported before")
)

// AddHost adds a host waiting for enrollment with the hash of its one-time
// token. A host that exists is refused unless it was revoked or never
// enrolled (then it gets the new token).
func (d *DB) AddHost(ctx context.Context, name, repo, enrollHash string, expires, now time.Time) error {
	if err := fleet.ValidName("host", name); err != nil {
		return err
	}
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var enrolled, revoked int64
	err = tx.QueryRowContext(ctx, `SELECT enrolled, revoked FROM hosts WHERE name = $1`, name).Scan(&enrolled, &revoked)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		_, err = tx.ExecContext(ctx, `INSERT INTO hosts (name, repo, enroll_hash, enroll_expires, created) VALUES ($1, $2, $3, $4, $5)`,
			name, repo, enrollHash, ms(expires), ms(now))
	case err != nil:
	case enrolled != 0 && revoked == 0:
		return fmt.Errorf("%w: %s is %w", ErrHostExists, name, ErrHostEnrolled)
	default:
		_, err = tx.ExecContext(ctx, `UPDATE hosts SET repo = $2, enroll_hash = $3, enroll_expires = $4, token_id = '', enrolled = 0, revoked = 0 WHERE name = $1`,
			name, repo, enrollHash, ms(expires))
	}
	if err != nil {
		return fmt.Errorf("add host %s: %w", name, err)
	}
	return tx.Commit()
}

// PendingEnrollment returns the host waiting for the token of this hash.
func (d *DB) PendingEnrollment(ctx context.Context, enrollHash string, now time.Time) (Host, error) {
	var h Host
	var exp int64
	err := d.db.QueryRowContext(ctx, `SELECT name, repo, enroll_expires FROM hosts WHERE enroll_hash = $1 AND enrolled = 0 AND revoked = 0`, enrollHash).
		Scan(&h.Name, &h.Repo, &exp)
	if errors.Is(err, sql.ErrNoRows) || err == nil && exp != 0 && now.UnixMilli() >= exp {
		return h, ErrBadEnrolment
	}
	if err != nil {
		return h, fmt.Errorf("enrollment: %w", err)
	}
	return h, nil
}

// CompleteEnrollment records the host's token and uses up its enrollment
// token; ErrBadEnrolment if another request used it first.
func (d *DB) CompleteEnrollment(ctx context.Context, name, enrollHash, tokenID string, now time.Time) error {
	res, err := d.db.ExecContext(ctx, `UPDATE hosts SET enroll_hash = NULL, token_id = $3, enrolled = $4, last_seen = $4 WHERE name = $1 AND enroll_hash = $2 AND enrolled = 0`,
		name, enrollHash, tokenID, ms(now))
	if err != nil {
		return fmt.Errorf("enrollment: %w", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return ErrBadEnrolment
	}
	return nil
}

// RevokeHost marks a host revoked and returns the id of its token (for
// the caller to revoke in the token store).
func (d *DB) RevokeHost(ctx context.Context, name string, now time.Time) (string, error) {
	var tok string
	if err := d.db.QueryRowContext(ctx, `SELECT token_id FROM hosts WHERE name = $1`, name).Scan(&tok); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return "", fmt.Errorf("%w: %s", ErrNoHost, name)
		}
		return "", err
	}
	if _, err := d.db.ExecContext(ctx, `UPDATE hosts SET revoked = $2, enroll_hash = NULL WHERE name = $1`, name, ms(now)); err != nil {
		return "", fmt.Errorf("revoke host %s: %w", name, err)
	}
	return tok, nil
}

const hostCols = `name, repo, token_id, created, enrolled, revoked, last_seen`

func scanHost(sc interface{ Scan(...any) error }) (Host, error) {
	var h Host
	var c, e, r, s int64
	if err := sc.Scan(&h.Name, &h.Repo, &h.TokenID, &c, &e, &r, &s); err != nil {
		return h, err
	}
	h.Created, h.Enrolled, h.Revoked, h.LastSeen = fromMS(c), fromMS(e), fromMS(r), fromMS(s)
	h.Pending = e == 0 && r == 0
	return h, nil
}

// Host returns one host.
func (d *DB) Host(ctx context.Context, name string) (Host, error) {
	h, err := scanHost(d.db.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE name = $1`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return h, fmt.Errorf("%w: %s", ErrNoHost, name)
	}
	return h, err
}

// Hosts returns every host, by name.
func (d *DB) Hosts(ctx context.Context) ([]Host, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+hostCols+` FROM hosts ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Host
	for rows.Next() {
		h, err := scanHost(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// Seen records that host talked to the server.
func (d *DB) Seen(ctx context.Context, host string, now time.Time) error {
	d.seenMu.Lock()
	last, ok := d.seen[host]
	fresh := ok && now.Sub(last) < SeenEvery && !now.Before(last)
	if !fresh {
		d.seen[host] = now
	}
	d.seenMu.Unlock()
	if fresh {
		return nil
	}
	d.wmu.Lock()
	defer d.wmu.Unlock()
	_, err := d.db.ExecContext(ctx, `UPDATE hosts SET last_seen = $2 WHERE name = $1 AND last_seen < $2`, host, ms(now))
	return err
}

// AddRun stores a run and updates its job. A run whose report ID the
// host reported before is not stored again: AddRun returns ErrDuplicateRun.
func (d *DB) AddRun(ctx context.Context, r fleet.RunRecord) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var reportID any // NULL without one
	if r.ReportID != "" {
		reportID = r.ReportID
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM runs WHERE host = $1 AND report_id = $2`, r.Host, r.ReportID).Scan(&n); err != nil {
			return fmt.Errorf("store run: %w", err)
		}
		if n > 0 {
			return ErrDuplicateRun
		}
	}
	var id int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) + 1 FROM runs`).Scan(&id); err != nil {
		return fmt.Errorf("store run: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO runs (id, host, job, task, attempt, start_ms, end_ms, status, error, files, bytes_read, bytes_new, bytes_stored, errors, files_changed, version, snapshot, snapshots_removed, bytes_freed, report_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)`,
		id, r.Host, r.Job, string(r.Task), r.Attempt, ms(r.Start), ms(r.End), string(r.Status), r.Error, r.Files, r.BytesRead, r.BytesNew, r.BytesStored, r.Errors, r.FilesChanged, r.Version, r.Snapshot,
		r.SnapshotsRemoved, r.BytesFreed, reportID); err != nil {
		return fmt.Errorf("store run: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO jobs (host, name, task) VALUES ($1, $2, $3) ON CONFLICT (host, name, task) DO NOTHING`, r.Host, r.Job, string(r.Task)); err != nil {
		return fmt.Errorf("store run: %w", err)
	}

	switch {
	case r.Status == fleet.StatusSkipped:
		// due while the last run still went on: history, and the next
		// due time; the job's last run stays the one that ran
		if !r.NextDue.IsZero() {
			_, err = tx.ExecContext(ctx, `UPDATE jobs SET next_due = $4 WHERE host = $1 AND name = $2 AND task = $3`, r.Host, r.Job, string(r.Task), ms(r.NextDue))
		}
	case r.Status.Succeeded():
		_, err = tx.ExecContext(ctx, `UPDATE jobs SET last_run = $4, next_due = $5, last_success = $4 WHERE host = $1 AND name = $2 AND task = $3`,
			r.Host, r.Job, string(r.Task), id, ms(r.NextDue))
	default:
		_, err = tx.ExecContext(ctx, `UPDATE jobs SET last_run = $4, next_due = $5 WHERE host = $1 AND name = $2 AND task = $3`,
			r.Host, r.Job, string(r.Task), id, ms(r.NextDue))
	}
	if err != nil {
		return fmt.Errorf("store run: %w", err)
	}
	return tx.Commit()
}

const runCols = `host, job, task, attempt, start_ms, end_ms, status, error, files, bytes_read, bytes_new, bytes_stored, errors, files_changed, version, snapshot, snapshots_removed, bytes_freed`

func scanRun(sc interface{ Scan(...any) error }) (fleet.RunRecord, error) {
	var r fleet.RunRecord
	var s, e int64
	err := sc.Scan(&r.Host, &r.Job, &r.Task, &r.Attempt, &s, &e, &r.Status, &r.Error, &r.Files, &r.BytesRead, &r.BytesNew, &r.BytesStored, &r.Errors, &r.FilesChanged, &r.Version, &r.Snapshot,
		&r.SnapshotsRemoved, &r.BytesFreed)
	r.Start, r.End = fromMS(s), fromMS(e)
	return r, err
}

// Runs returns runs that ended after since, of host (all if empty),
// newest first, at most limit.
func (d *DB) Runs(ctx context.Context, host string, since time.Time, limit int) ([]fleet.RunRecord, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT `+runCols+` FROM runs WHERE ($1 = '' OR host = $1) AND end_ms > $2 ORDER BY end_ms DESC, id DESC LIMIT $3`,
		host, ms(since), limit)
	if err != nil {
		return nil, fmt.Errorf("runs: %w", err)
	}
	defer rows.Close()
	out := []fleet.RunRecord{}
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// JobRow is a job with its last run and last success.
type JobRow struct {
	Host        Host
	Job         string
	Task        fleet.Task
	NextDue     time.Time
	LastRun     *fleet.RunRecord
	LastSuccess *fleet.RunRecord
}

// Jobs returns every host with its jobs (a host without jobs once, with
// an empty Job), by host and job.
func (d *DB) Jobs(ctx context.Context) ([]JobRow, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT h.name, h.repo, h.token_id, h.created, h.enrolled, h.revoked, h.last_seen,
		COALESCE(j.name, ''), COALESCE(j.task, ''), COALESCE(j.next_due, 0), COALESCE(j.last_run, 0), COALESCE(j.last_success, 0)
		FROM hosts h LEFT JOIN jobs j ON j.host = h.name ORDER BY h.name, j.name, j.task`)
	if err != nil {
		return nil, fmt.Errorf("jobs: %w", err)
	}
	type pending struct {
		row          JobRow
		last, lastOK int64
	}
	var ps []pending
	for rows.Next() {
		var p pending
		var c, e, r, s, nd int64
		if err := rows.Scan(&p.row.Host.Name, &p.row.Host.Repo, &p.row.Host.TokenID, &c, &e, &r, &s, &p.row.Job, &p.row.Task, &nd, &p.last, &p.lastOK); err != nil {
			rows.Close()
			return nil, err
		}
		p.row.Host.Created, p.row.Host.Enrolled, p.row.Host.Revoked, p.row.Host.LastSeen = fromMS(c), fromMS(e), fromMS(r), fromMS(s)
		p.row.Host.Pending = e == 0 && r == 0
		p.row.NextDue = fromMS(nd)
		ps = append(ps, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// the runs the jobs point at, in one query
	byID := map[int64]*fleet.RunRecord{}
	rrows, err := d.db.QueryContext(ctx, `SELECT r.id, `+prefixed("r.", runCols)+` FROM runs r JOIN jobs j ON r.id = j.last_run OR r.id = j.last_success`)
	if err != nil {
		return nil, fmt.Errorf("jobs: %w", err)
	}
	defer rrows.Close()
	for rrows.Next() {
		var id int64
		var r fleet.RunRecord
		var s, e int64
		if err := rrows.Scan(&id, &r.Host, &r.Job, &r.Task, &r.Attempt, &s, &e, &r.Status, &r.Error, &r.Files, &r.BytesRead, &r.BytesNew, &r.BytesStored, &r.Errors, &r.FilesChanged, &r.Version, &r.Snapshot,
			&r.SnapshotsRemoved, &r.BytesFreed); err != nil {
			return nil, err
		}
		r.Start, r.End = fromMS(s), fromMS(e)
		byID[id] = &r
	}
	if err := rrows.Err(); err != nil {
		return nil, err
	}
	out := make([]JobRow, len(ps))
	for i, p := range ps {
		p.row.LastRun, p.row.LastSuccess = byID[p.last], byID[p.lastOK]
		if p.row.LastRun != nil {
			p.row.LastRun.NextDue = p.row.NextDue
		}
		out[i] = p.row
	}
	return out, nil
}

func prefixed(p, cols string) string {
	out := p
	for i := 0; i < len(cols); i++ {
		out += string(cols[i])
		if cols[i] == ' ' && i > 0 && cols[i-1] == ',' {
			out += p
		}
	}
	return out
}

// Alerts returns the active alerts.
func (d *DB) Alerts(ctx context.Context) ([]fleet.ActiveAlert, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT kind, host, job, since, last_sent, message FROM alerts`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []fleet.ActiveAlert
	for rows.Next() {
		var a fleet.ActiveAlert
		var s, l int64
		if err := rows.Scan(&a.Kind, &a.Host, &a.Job, &s, &l, &a.Message); err != nil {
			return nil, err
		}
		a.Since, a.LastSent = fromMS(s), fromMS(l)
		out = append(out, a)
	}
	return out, rows.Err()
}

// SaveAlerts replaces the active alerts.
func (d *DB) SaveAlerts(ctx context.Context, as []fleet.ActiveAlert) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM alerts`); err != nil {
		return err
	}
	for _, a := range as {
		if _, err := tx.ExecContext(ctx, `INSERT INTO alerts (kind, host, job, since, last_sent, message) VALUES ($1, $2, $3, $4, $5, $6)`,
			a.Kind, a.Host, a.Job, ms(a.Since), ms(a.LastSent), a.Message); err != nil {
			return err
		}
	}
	return tx.Commit()
}
