// Package agent is the fleet agent: it reads /etc/floe/agent.toml, runs
// each job's backups when package schedule says so (one job at a time per
// repository, never the same job twice at once), retries failures with
// backoff, verifies a share of the data now and then, and reports each
// run. Backups run in process through backup.Job and connect, never by
// starting floe again. Before a run the agent takes a lease and after it
// sends a report (Leaser, Reporter): without a server both stay on this
// host; a floe server will grant fleet-wide leases and collect reports.
package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	// the time zone database in the binary (450 KB): timezone = "..."
	// works on hosts and containers without /usr/share/zoneinfo
	_ "time/tzdata"

	"github.com/BurntSushi/toml"

	"github.com/floe-backup/floe/internal/agent/schedule"
	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/check"
	"github.com/floe-backup/floe/internal/forget"
	"github.com/floe-backup/floe/internal/fssnap"
	"github.com/floe-backup/floe/internal/prune"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage/remote"
)

// DefaultConfigFile is where `floe agent` looks without --config.
const DefaultConfigFile = "/etc/floe/agent.toml"

// DefaultStateDir keeps each job's last runs (systemd's StateDirectory).
const DefaultStateDir = "/var/lib/floe/agent"

// Config is the agent's configuration file.
type Config struct {
	// File is where it was read from.
	File string `toml:"-"`
	// Host is this host's name in snapshots and reports, and what spreads
	// its jobs in their windows; default: the host name.
	Host string `toml:"host"`
	// StateDir keeps the time of each job's last run, so that runs missed
	// while the host was down are caught up once.
	StateDir string `toml:"state_dir"`
	// CacheDir is the local cache's base (default: floe's usual one).
	CacheDir string `toml:"cache_dir"`
	// Timezone is what schedules are in (default: the system's).
	Timezone string `toml:"timezone"`
	Jobs     []*Job `toml:"job"`
}

// Job is one [[job]] of the configuration.
type Job struct {
	Name string `toml:"name"`
	// Type is "backup" (the default) or "retention": forget by the
	// policy below, then prune, in Repository. Retention needs a full
	// key (password_file, password_command or a key file that is not
	// write-only) and, on a floe server, an admin token: it runs on a
	// host that holds them, never on the server (docs/ARCHITECTURE.md).
	Type string `toml:"type"`

	// Repository and how to open it. TokenFile, ServerFingerprint and
	// KnownServersFile are for a floe server (connect.Target.Server).
	Repository        string `toml:"repository"`
	PasswordFile      string `toml:"password_file"`
	PasswordCommand   string `toml:"password_command"`
	KeyFile           string `toml:"key_file"`
	TokenFile         string `toml:"token_file"`
	ServerFingerprint string `toml:"server_fingerprint"`
	KnownServersFile  string `toml:"known_servers_file"`

	// What to back up, as `floe backup` takes it.
	Paths             []string `toml:"paths"`
	Excludes          []string `toml:"excludes"`
	IExcludes         []string `toml:"iexcludes"`
	ExcludeFiles      []string `toml:"exclude_files"`
	IExcludeFiles     []string `toml:"iexclude_files"`
	ExcludeCaches     bool     `toml:"exclude_caches"`
	ExcludeIfPresent  []string `toml:"exclude_if_present"`
	ExcludeLargerThan string   `toml:"exclude_larger_than"`
	OneFileSystem     bool     `toml:"one_file_system"`
	FSSnapshot        string   `toml:"fs_snapshot"`
	FSSnapshotSize    string   `toml:"fs_snapshot_size"`
	Tags              []string `toml:"tags"`
	PreHook           string   `toml:"pre_hook"`
	PostHook          string   `toml:"post_hook"`

	// Bandwidth in KiB/s (0: no limit) and CPU and I/O priority while the
	// job runs.
	LimitUpload   int64  `toml:"limit_upload"`
	LimitDownload int64  `toml:"limit_download"`
	Nice          *int   `toml:"nice"`
	IONiceClass   string `toml:"ionice_class"`
	IONiceLevel   *int   `toml:"ionice_level"`

	// When: calendar expressions (a string or a list), a window, retries.
	Schedule     stringList `toml:"schedule"`
	Window       string     `toml:"window"`
	Retries      int        `toml:"retries"`
	RetryInitial string     `toml:"retry_initial"`
	RetryMax     string     `toml:"retry_max"`

	// Verification: `check --read-data-subset VerifySubset` every
	// VerifyEveryDays days (after a backup of the job), or on its own
	// schedule.
	VerifySubset    string     `toml:"verify_subset"`
	VerifyEveryDays int        `toml:"verify_every_days"`
	VerifySchedule  stringList `toml:"verify_schedule"`
	VerifyWindow    string     `toml:"verify_window"`

	// Retention (type = "retention"): the policy, as floe forget takes
	// it, applied per group (group_by, default host,paths), then prune.
	KeepLast       int      `toml:"keep_last"`
	KeepHourly     int      `toml:"keep_hourly"`
	KeepDaily      int      `toml:"keep_daily"`
	KeepWeekly     int      `toml:"keep_weekly"`
	KeepMonthly    int      `toml:"keep_monthly"`
	KeepYearly     int      `toml:"keep_yearly"`
	KeepWithin     string   `toml:"keep_within"`
	KeepTags       []string `toml:"keep_tags"`
	GroupBy        *string  `toml:"group_by"`
	Prune          *bool    `toml:"prune"`            // default true
	PruneGrace     string   `toml:"prune_grace"`      // default 24h
	PruneMaxUnused string   `toml:"prune_max_unused"` // default 10%

	// Derived by Load.
	Policy     forget.Policy  `toml:"-"`
	PruneOpts  prune.Options  `toml:"-"`
	Plan       *schedule.Plan `toml:"-"` // nil: run by hand only
	VerifyPlan *schedule.Plan `toml:"-"`
	Retry      schedule.Retry `toml:"-"`
	Subset     *check.Subset  `toml:"-"`
	Priority   Priority       `toml:"-"`
	Location   *time.Location `toml:"-"`
}

// stringList is a string or a list of strings.
type stringList []string

func (s *stringList) UnmarshalTOML(v any) error {
	switch v := v.(type) {
	case string:
		*s = []string{v}
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			str, ok := e.(string)
			if !ok {
				return fmt.Errorf("want a string or a list of strings, found %T in the list", e)
			}
			out = append(out, str)
		}
		*s = out
	default:
		return fmt.Errorf("want a string or a list of strings, not %T", v)
	}
	return nil
}

// Problem is one mistake in a configuration file.
type Problem struct {
	Line int // 0: not tied to a line
	Msg  string
}

// ConfigError lists every problem of a configuration file.
type ConfigError struct {
	File     string
	Problems []Problem
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		if p.Line > 0 {
			fmt.Fprintf(&b, "%s:%d: %s", e.File, p.Line, p.Msg)
		} else {
			fmt.Fprintf(&b, "%s: %s", e.File, p.Msg)
		}
	}
	return b.String()
}

// Load reads and checks a configuration file.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent configuration: %w", err)
	}
	return Parse(path, data)
}

// Parse checks a configuration read from file (named in errors).
func Parse(file string, data []byte) (*Config, error) {
	cfg := &Config{File: file}
	fail := func(ps ...Problem) error { return &ConfigError{File: file, Problems: ps} }
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fail(Problem{Line: pe.Position.Line, Msg: pe.Message})
		}
		// a value of the wrong type: the library says where in its text
		if m := decodeError.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return nil, fail(Problem{Line: line, Msg: fmt.Sprintf("%s: %s", m[2], m[3])})
		}
		return nil, fail(Problem{Msg: err.Error()})
	}
	lines := locate(data)
	var ps []Problem
	for _, k := range md.Undecoded() {
		table, key := "", k[0]
		if len(k) > 1 {
			table, key = strings.Join(k[:len(k)-1], "."), k[len(k)-1]
		}
		found := lines.all(table, key)
		if len(found) == 0 {
			found = []int{0}
		}
		for _, l := range found {
			ps = append(ps, Problem{l, fmt.Sprintf("unknown key %q%s", k.String(), hintKey(key))})
		}
	}
	ps = append(ps, cfg.check(lines)...)
	if len(ps) > 0 {
		sort.SliceStable(ps, func(i, j int) bool { return ps[i].Line < ps[j].Line })
		return nil, fail(ps...)
	}
	return cfg, nil
}

// hintKey suggests the key meant for a few likely mistakes.
func hintKey(key string) string {
	for _, k := range []string{"exclude", "exclude_file", "path", "tag", "hook", "retry"} {
		if key == k {
			return fmt.Sprintf(" (did you mean %ss?)", k)
		}
	}
	if strings.Contains(key, "-") {
		return fmt.Sprintf(" (keys use underscores: %s)", strings.ReplaceAll(key, "-", "_"))
	}
	return ""
}

var decodeError = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

var jobName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// check validates the configuration and fills in what Load derives.
func (c *Config) check(lines lineIndex) []Problem {
	var ps []Problem
	top := func(key, format string, args ...any) {
		ps = append(ps, Problem{lines.first("", 0, key), fmt.Sprintf(format, args...)})
	}
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			top("host", "no host name: %v; set host", err)
		}
		c.Host = h
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	} else if !filepath.IsAbs(c.StateDir) {
		top("state_dir", "state_dir %q is not an absolute path", c.StateDir)
	}
	loc := time.Local
	if c.Timezone != "" {
		l, err := time.LoadLocation(c.Timezone)
		if err != nil {
			top("timezone", "timezone %q: %v", c.Timezone, err)
		} else {
			loc = l
		}
	}
	if len(c.Jobs) == 0 {
		ps = append(ps, Problem{Msg: "no jobs: add a [[job]] with a name, a repository and paths"})
	}
	seen := map[string]bool{}
	for i, j := range c.Jobs {
		bad := func(key, format string, args ...any) {
			l := lines.first("job", i, key)
			if l == 0 {
				l = lines.header("job", i)
			}
			ps = append(ps, Problem{l, fmt.Sprintf("job %q: ", j.Name) + fmt.Sprintf(format, args...)})
		}
		switch {
		case j.Name == "":
			bad("name", "no name")
		case !jobName.MatchString(j.Name):
			bad("name", "name: use letters, digits, '.', '_' and '-'")
		case seen[j.Name]:
			bad("name", "a second job of this name")
		}
		seen[j.Name] = true
		if j.Repository == "" {
			bad("repository", "no repository")
		}
		// the agent logs the repository of every run
		if hasUserinfo(j.Repository) {
			bad("repository", "credentials do not go in the repository location: use token_file, or the environment for S3")
		}
		if remote.IsURL(j.Repository) {
			if j.TokenFile == "" {
				bad("repository", "a floe server needs token_file")
			}
			if j.ServerFingerprint == "" && j.KnownServersFile == "" {
				bad("repository", "a floe server needs server_fingerprint (or known_servers_file, to trust the first one seen)")
			}
		} else if j.TokenFile != "" || j.ServerFingerprint != "" || j.KnownServersFile != "" {
			key := "token_file"
			if j.TokenFile == "" {
				key = "server_fingerprint"
				if j.ServerFingerprint == "" {
					key = "known_servers_file"
				}
			}
			bad(key, "token_file, server_fingerprint and known_servers_file are for a floe server (https://)")
		}
		creds := 0
		for _, v := range []string{j.PasswordFile, j.PasswordCommand, j.KeyFile} {
			if v != "" {
				creds++
			}
		}
		if creds != 1 {
			bad("password_file", "give one of password_file, password_command or key_file (the agent cannot ask for a password)")
		}
		// the daemon runs in / : a relative file would be looked for there
		for _, f := range []struct{ key, path string }{{"password_file", j.PasswordFile}, {"key_file", j.KeyFile},
			{"token_file", j.TokenFile}, {"known_servers_file", j.KnownServersFile}} {
			if f.path != "" && !filepath.IsAbs(f.path) {
				bad(f.key, "%s %q is not an absolute path", f.key, f.path)
			}
		}
		for _, ef := range []struct {
			key   string
			files []string
		}{{"exclude_files", j.ExcludeFiles}, {"iexclude_files", j.IExcludeFiles}} {
			for _, f := range ef.files {
				if !filepath.IsAbs(f) {
					bad(ef.key, "exclude file %q is not an absolute path", f)
				}
			}
		}
		if _, err := backup.Excludes(j.Excludes, nil); err != nil {
			bad("excludes", "%v", err)
		}
		if _, err := backup.Excludes(nil, j.IExcludes); err != nil {
			bad("iexcludes", "%v", err)
		}
		if j.ExcludeLargerThan != "" {
			if _, err := backup.ParseSize(j.ExcludeLargerThan); err != nil {
				bad("exclude_larger_than", "%v", err)
			}
		}
		switch j.Type {
		case "", JobBackup:
			j.Type = JobBackup
			if len(j.Paths) == 0 {
				bad("paths", "no paths")
			}
			if j.hasPolicy() {
				bad("keep_last", "keep_* and prune_* are for jobs of type = \"retention\"")
			}
		case JobRetention:
			j.checkRetention(bad)
		default:
			bad("type", "type %q: want backup or retention", j.Type)
		}
		for _, p := range j.Paths {
			if !filepath.IsAbs(p) {
				bad("paths", "path %q is not absolute", p)
			}
		}
		if j.FSSnapshot != "" {
			if _, err := fssnap.ParseKind(j.FSSnapshot); err != nil {
				bad("fs_snapshot", "%v", err)
			}
		}
		if j.FSSnapshotSize != "" && j.FSSnapshot != string(fssnap.LVM) {
			bad("fs_snapshot_size", "fs_snapshot_size is for fs_snapshot = \"lvm\"")
		}
		if j.LimitUpload < 0 {
			bad("limit_upload", "limit_upload is KiB/s, 0 or more")
		}
		if j.LimitDownload < 0 {
			bad("limit_download", "limit_download is KiB/s, 0 or more")
		}
		prio, key, err := parsePriority(j.Nice, j.IONiceClass, j.IONiceLevel)
		if err != nil {
			bad(key, "%v", err)
		}
		j.Priority = prio

		j.Location = loc
		if len(j.Schedule) > 0 || j.Window != "" {
			if j.Window != "" {
				if _, err := schedule.ParseWindow(j.Window); err != nil {
					bad("window", "%v", err)
				}
			}
			if p, err := schedule.New(j.Schedule, j.Window, c.Host, j.Name, loc); err == nil {
				j.Plan = p
			} else if j.Window == "" || !strings.HasPrefix(err.Error(), "window") {
				bad("schedule", "%v", err)
			}
		}

		if j.Retries < 0 {
			bad("retries", "retries must be 0 or more")
		}
		j.Retry = schedule.Retry{Attempts: j.Retries, Initial: time.Minute, Max: time.Hour}
		for _, d := range []struct {
			key, val string
			to       *time.Duration
		}{{"retry_initial", j.RetryInitial, &j.Retry.Initial}, {"retry_max", j.RetryMax, &j.Retry.Max}} {
			if d.val == "" {
				continue
			}
			v, err := time.ParseDuration(d.val)
			if err != nil || v <= 0 {
				bad(d.key, "%s %q: want a duration like 30s, 5m or 1h", d.key, d.val)
				continue
			}
			*d.to = v
		}
		if j.Retry.Max < j.Retry.Initial {
			bad("retry_max", "retry_max (%s) is shorter than retry_initial (%s)", j.Retry.Max, j.Retry.Initial)
		}

		hasVerifySchedule := len(j.VerifySchedule) > 0 || j.VerifyWindow != ""
		switch {
		case j.VerifySubset == "" && (j.VerifyEveryDays != 0 || hasVerifySchedule):
			key := "verify_every_days"
			if j.VerifyEveryDays == 0 {
				key = "verify_schedule"
				if len(j.VerifySchedule) == 0 {
					key = "verify_window"
				}
			}
			bad(key, "verify_every_days or verify_schedule needs verify_subset (like \"5%%\" or \"1/7\")")
		case j.VerifySubset != "" && j.VerifyEveryDays == 0 && !hasVerifySchedule:
			bad("verify_subset", "verify_subset needs verify_every_days or verify_schedule")
		case j.VerifyEveryDays != 0 && hasVerifySchedule:
			bad("verify_every_days", "give verify_every_days or verify_schedule, not both")
		case j.VerifyEveryDays < 0:
			bad("verify_every_days", "verify_every_days must be more than 0")
		}
		if j.VerifySubset != "" {
			s, err := check.ParseSubset(j.VerifySubset)
			if err != nil {
				bad("verify_subset", "%v", err)
			} else {
				j.Subset = &s
			}
		}
		if hasVerifySchedule {
			if p, err := schedule.New(j.VerifySchedule, j.VerifyWindow, c.Host, j.Name+"/verify", loc); err != nil {
				key := "verify_schedule"
				if strings.HasPrefix(err.Error(), "window") {
					key = "verify_window"
				}
				bad(key, "%v", err)
			} else {
				j.VerifyPlan = p
			}
		}
	}
	return ps
}

// Job types.
const (
	JobBackup    = "backup"
	JobRetention = "retention"
)

func (j *Job) hasPolicy() bool {
	return j.KeepLast != 0 || j.KeepHourly != 0 || j.KeepDaily != 0 || j.KeepWeekly != 0 || j.KeepMonthly != 0 ||
		j.KeepYearly != 0 || j.KeepWithin != "" || len(j.KeepTags) > 0 || j.GroupBy != nil || j.Prune != nil ||
		j.PruneGrace != "" || j.PruneMaxUnused != ""
}

// checkRetention checks a job of type retention and derives its policy
// and prune options; what is for backups only is refused, so that a
// mistake does not pass unnoticed.
func (j *Job) checkRetention(bad func(key, format string, args ...any)) {
	if len(j.Paths) > 0 || len(j.Excludes) > 0 || j.PreHook != "" || j.PostHook != "" || j.FSSnapshot != "" || len(j.Tags) > 0 {
		bad("paths", "a retention job backs nothing up: paths, excludes, tags, hooks and fs_snapshot are for backup jobs")
	}
	if j.VerifySubset != "" {
		bad("verify_subset", "a retention job has no verification (give it to the backup jobs)")
	}
	p := forget.Policy{Last: j.KeepLast, Hourly: j.KeepHourly, Daily: j.KeepDaily, Weekly: j.KeepWeekly, Monthly: j.KeepMonthly, Yearly: j.KeepYearly}
	if j.KeepWithin != "" {
		d, err := forget.ParseDuration(j.KeepWithin)
		if err != nil {
			bad("keep_within", "keep_within: %v", err)
		}
		p.Within = d
	}
	p.Tags = snapshot.ParseTagLists(j.KeepTags)
	if err := p.Validate(); err != nil {
		bad("keep_last", "%v", err)
	}
	if p.Empty() {
		bad("type", "a retention job needs a policy: keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within or keep_tags (it never removes every snapshot)")
	}
	j.Policy = p
	if j.GroupBy == nil {
		g := forget.DefaultGroupBy
		j.GroupBy = &g
	}
	if _, err := forget.Group(nil, *j.GroupBy); err != nil {
		bad("group_by", "group_by: %v", err)
	}
	j.PruneOpts = prune.Options{Grace: prune.DefaultGrace, MaxUnused: prune.DefaultMaxUnused}
	if j.PruneGrace != "" {
		g, err := prune.ParseGrace(j.PruneGrace)
		if err != nil {
			bad("prune_grace", "prune_grace: %v", err)
		}
		j.PruneOpts.Grace = g
	}
	if j.PruneMaxUnused != "" {
		m, err := prune.ParseMaxUnused(j.PruneMaxUnused)
		if err != nil {
			bad("prune_max_unused", "prune_max_unused: %v", err)
		}
		j.PruneOpts.MaxUnused = m
	}
}

// PruneEnabled says whether a retention job prunes after forget.
func (j *Job) PruneEnabled() bool { return j.Prune == nil || *j.Prune }

// hasUserinfo reports whether a URL-like location (https://, s3:https://)
// holds user:password@.
func hasUserinfo(loc string) bool {
	_, rest, ok := strings.Cut(loc, "://")
	if !ok {
		return false
	}
	host, _, _ := strings.Cut(rest, "/")
	return strings.Contains(host, "@")
}

// Job returns the job called name.
func (c *Config) Job(name string) (*Job, error) {
	for _, j := range c.Jobs {
		if j.Name == name {
			return j, nil
		}
	}
	names := make([]string, 0, len(c.Jobs))
	for _, j := range c.Jobs {
		names = append(names, j.Name)
	}
	return nil, fmt.Errorf("no job %q in %s (jobs: %s)", name, c.File, strings.Join(names, ", "))
}

// lineIndex says on which line each key of the file is set: the TOML
// library reports the line of syntax errors but not of keys, so the file
// is scanned once more, line by line, for headers and "key =" lines.
type lineIndex struct {
	keys    map[string][]int // "table#index.key" -> lines
	headers map[string]int   // "table#index" -> line
}

var (
	headerLine = regexp.MustCompile(`^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?`)
	keyLine    = regexp.MustCompile(`^\s*([A-Za-z0-9_-]+)\s*(\.|=)`)
)

func locate(data []byte) lineIndex {
	li := lineIndex{keys: map[string][]int{}, headers: map[string]int{}}
	table, index := "", 0
	counts := map[string]int{}
	inString := "" // the delimiter of a multi-line string we are in
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if inString != "" {
			if strings.Contains(line, inString) {
				inString = ""
			}
			continue
		}
		if m := headerLine.FindStringSubmatch(line); m != nil {
			table, index = m[2], 0
			if m[1] == "[[" {
				index = counts[table]
				counts[table]++
			}
			li.headers[fmt.Sprintf("%s#%d", table, index)] = n
			continue
		}
		if m := keyLine.FindStringSubmatch(line); m != nil {
			k := fmt.Sprintf("%s#%d.%s", table, index, m[1])
			li.keys[k] = append(li.keys[k], n)
			for _, d := range []string{`"""`, `'''`} {
				if strings.Count(line, d) == 1 {
					inString = d
				}
			}
		}
	}
	return li
}

// first is the line of key in the index-th table (0 if not found).
func (li lineIndex) first(table string, index int, key string) int {
	if l := li.keys[fmt.Sprintf("%s#%d.%s", table, index, key)]; len(l) > 0 {
		return l[0]
	}
	return 0
}

func (li lineIndex) header(table string, index int) int {
	return li.headers[fmt.Sprintf("%s#%d", table, index)]
}

// all is every line of key in any table of that name.
func (li lineIndex) all(table, key string) []int {
	var out []int
	for k, ls := range li.keys {
		t, rest, _ := strings.Cut(k, "#")
		_, kk, _ := strings.Cut(rest, ".")
		if t == table && kk == key {
			out = append(out, ls...)
		}
	}
	sort.Ints(out)
	return out
}
