package agent

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/check"
)

const goodConfig = `# the agent of web1
host = "web1"
state_dir = "/var/lib/floe/agent"
timezone = "Europe/Berlin"

[[job]]
name = "system"
repository = "/srv/backup"
password_file = "/etc/floe/password"
paths = ["/etc", "/home"]
excludes = ["*.tmp"]
exclude_caches = true
one_file_system = true
schedule = ["Mon..Fri", "Sun"]
window = "01:00-05:00"
retries = 3
retry_initial = "5m"
retry_max = "1h"
nice = 10
ionice_class = "idle"
limit_upload = 2048
verify_subset = "1/7"
verify_every_days = 1

[[job]]
name = "db"
repository = "https://backup.example.com/db"
key_file = "/etc/floe/db.key"
token_file = "/etc/floe/token"
server_fingerprint = "sha256:ab12"
paths = ["/var/backups/db"]
pre_hook = """
pg_dumpall > /var/backups/db/all.sql
"""
schedule = "hourly"
ionice_level = 4
verify_subset = "5%"
verify_schedule = "Sat"
verify_window = "03:00-06:00"
`

func TestParseGood(t *testing.T) {
	cfg, err := Parse("agent.toml", []byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Jobs) != 2 || cfg.Host != "web1" {
		t.Fatalf("%+v", cfg)
	}
	sys, db := cfg.Jobs[0], cfg.Jobs[1]
	if sys.Plan == nil || sys.Plan.Offset() <= 0 || sys.Plan.Offset() >= 4*time.Hour {
		t.Errorf("system: plan %+v", sys.Plan)
	}
	if sys.Retry.Attempts != 3 || sys.Retry.Initial != 5*time.Minute || sys.Retry.Max != time.Hour {
		t.Errorf("system: retry %+v", sys.Retry)
	}
	if sys.Priority.Nice == nil || *sys.Priority.Nice != 10 || sys.Priority.IOClass != ioprioClassIdle {
		t.Errorf("system: priority %+v", sys.Priority)
	}
	if sys.Subset == nil || sys.Subset.String() != "1/7" || sys.VerifyPlan != nil {
		t.Errorf("system: verify %+v %v", sys.Subset, sys.VerifyPlan)
	}
	if db.Priority.IOClass != ioprioClassBE || db.Priority.IOLevel != 4 || db.VerifyPlan == nil || db.TokenFile != "/etc/floe/token" || db.ServerFingerprint != "sha256:ab12" {
		t.Errorf("db: %+v", db)
	}
	if !strings.Contains(db.PreHook, "pg_dumpall") || db.Location.String() != "Europe/Berlin" {
		t.Errorf("db: hook %q, zone %s", db.PreHook, db.Location)
	}
	if _, err := cfg.Job("nope"); err == nil || !strings.Contains(err.Error(), "system, db") {
		t.Errorf("Job(nope): %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string // "LINE: text" each
	}{
		{"syntax", "host = \"a\"\nname = = 3\n", []string{"2: "}},
		{"unknown keys", `host = "h"
colour = "blue"
[[job]]
name = "a"
repository = "/r"
password_file = "/p"
paths = ["/etc"]
exclude = ["x"]
[[job]]
name = "b"
repository = "/r"
password_file = "/p"
paths = ["/etc"]
retry-max = "1h"
`, []string{`2: unknown key "colour"`, `8: unknown key "job.exclude" (did you mean excludes?)`, `14: unknown key "job.retry-max" (keys use underscores: retry_max)`}},
		{"bad schedules", `[[job]]
name = "a"
repository = "/r"
password_file = "/p"
paths = ["/etc"]
schedule = ["Mon..Fri 02:00",
  "Mon..Fry 03:00"]
[[job]]
name = "b"
repository = "/r"
password_file = "/p"
paths = ["/etc"]
schedule = "daily"
window = "01:00-25:00"
[[job]]
name = "c"
repository = "/r"
password_file = "/p"
paths = ["/etc"]
schedule = "02:00"
window = "01:00-03:00"
`, []string{`6: job "a": schedule "Mon..Fry 03:00": unknown day "Fry"`, `14: job "b": window "01:00-25:00"`, `20: job "c": schedule "02:00" has a time`}},
		{"missing and wrong values", `timezone = "Mars/Olympus"
[[job]]
name = "bad name"
paths = ["etc"]
fs_snapshot = "zfs"
nice = 30
retries = -1
retry_initial = "soon"
verify_subset = "200%"
verify_every_days = 3
[[job]]
name = "x"
repository = "/r"
key_file = "/k"
password_file = "/p"
paths = ["/x"]
ionice_class = "idle"
ionice_level = 3
verify_every_days = 2
`, []string{`1: timezone "Mars/Olympus"`, `3: job "bad name": name: use letters`, `2: job "bad name": no repository`, `2: job "bad name": give one of`,
			`4: job "bad name": path "etc" is not absolute`, `5: job "bad name": unknown file system snapshot kind "zfs"`, `6: job "bad name": nice 30`,
			`7: job "bad name": retries must be 0 or more`, `8: job "bad name": retry_initial "soon"`, `9: job "bad name": read-data subset "200%"`,
			`15: job "x": give one of`, `18: job "x": ionice_level is for the realtime`, `19: job "x": verify_every_days or verify_schedule needs verify_subset`}},
		{"no jobs", `host = "h"`, []string{"no jobs"}},
		{"bad patterns", "[[job]]\nname = \"a\"\nrepository = \"/r\"\nkey_file = \"/k\"\npaths = [\"/e\"]\nexcludes = [\"[x\"]\nexclude_larger_than = \"lots\"\n",
			[]string{`6: job "a": exclude `, `7: job "a": `}},
		{"credentials in the location", "[[job]]\nname = \"a\"\nrepository = \"s3:https://AKIA:secret-key@s3.example.com/b\"\nkey_file = \"/k\"\npaths = [\"/e\"]\n",
			[]string{`3: job "a": credentials do not go in the repository location`}},
		{"server settings", "[[job]]\nname = \"a\"\nrepository = \"https://b:8443/r\"\nkey_file = \"/k\"\npaths = [\"/e\"]\n" +
			"[[job]]\nname = \"b\"\nrepository = \"/r\"\nkey_file = \"/k\"\npaths = [\"/e\"]\ntoken_file = \"/t\"\n",
			[]string{`3: job "a": a floe server needs token_file`, `3: job "a": a floe server needs server_fingerprint`, `11: job "b": token_file, server_fingerprint and known_servers_file are for a floe server`}},
		{"relative files", "[[job]]\nname = \"a\"\nrepository = \"/r\"\npassword_file = \"pw\"\npaths = [\"/e\"]\nexclude_files = [\"ex\"]\n",
			[]string{`4: job "a": password_file "pw" is not an absolute path`, `6: job "a": exclude file "ex" is not an absolute path`}},
		{"wrong type", "[[job]]\nname = 3\n", []string{"2: "}},
		{"duplicate", "[[job]]\nname = \"a\"\nrepository = \"/r\"\npassword_file = \"/p\"\npaths = [\"/e\"]\n[[job]]\nname = \"a\"\nrepository = \"/r\"\npassword_file = \"/p\"\npaths = [\"/e\"]\n", []string{`7: job "a": a second job`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("agent.toml", []byte(tc.text))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("want a ConfigError, got %v", err)
			}
			msg := err.Error()
			if strings.Contains(msg, "secret-key") {
				t.Errorf("the error shows a secret: %s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, "agent.toml:"+w) && !(strings.HasPrefix(w, "no jobs") && strings.Contains(msg, w)) {
					t.Errorf("no %q in:\n%s", "agent.toml:"+w, msg)
				}
			}
			for _, p := range ce.Problems {
				if p.Line == 0 && tc.name != "no jobs" {
					t.Errorf("problem without a line: %s", p.Msg)
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte("[[job]]\nname = \"a\"\nschedule = [1, 2]\n"))
	f.Add([]byte("a = '''\nx\n'''\n[b]\nc.d = 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("f.toml", data)
		if err == nil && len(cfg.Jobs) == 0 {
			t.Fatal("a configuration without jobs was accepted")
		}
	})
}

// TestReadmeExample: the example of README.md is a valid configuration.
func TestReadmeExample(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "## Running floe on a schedule")
	_, rest, ok2 := strings.Cut(rest, "```toml\n")
	example, _, ok3 := strings.Cut(rest, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("no TOML example under \"Running floe on a schedule\" in README.md")
	}
	cfg, err := Parse("README.md", []byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if j := cfg.Jobs[0]; j.Plan == nil || j.Subset == nil || j.Retry.Attempts != 3 || j.Priority.IOClass != ioprioClassIdle {
		t.Errorf("README example: %+v", j)
	}
}

func TestVerifyPart(t *testing.T) {
	j := &Job{}
	for _, tc := range []struct {
		subset string
		done   int
		want   string
	}{{"1/7", 0, "1/7"}, {"1/7", 1, "2/7"}, {"1/7", 6, "7/7"}, {"1/7", 7, "1/7"}, {"3/4", 2, "1/4"}, {"5%", 3, "5%"}} {
		s, err := check.ParseSubset(tc.subset)
		if err != nil {
			t.Fatal(err)
		}
		j.Subset = &s
		if got := j.VerifyPart(tc.done).String(); got != tc.want {
			t.Errorf("%s after %d: %s, want %s", tc.subset, tc.done, got, tc.want)
		}
	}
}

// A retention job: a policy as floe forget takes it, prune options; what
// belongs to backups is refused, and so is a job with no policy.
func TestParseRetention(t *testing.T) {
	good := `host = "admin"
[[job]]
name = "retention"
type = "retention"
repository = "https://backup.example.com/fleet"
password_file = "/etc/floe/password"
token_file = "/etc/floe/admin.token"
server_fingerprint = "sha256:ab12"
schedule = "05:30"
keep_hourly = 24
keep_daily = 7
keep_within = "2d"
prune_grace = "2d"
prune_max_unused = "5%"
`
	cfg, err := Parse("agent.toml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	j := cfg.Jobs[0]
	if j.Type != JobRetention || j.Policy.Hourly != 24 || j.Policy.Daily != 7 || j.Policy.Within.Days != 2 ||
		j.PruneOpts.Grace != 48*time.Hour || j.PruneOpts.MaxUnused != 0.05 || !j.PruneEnabled() || *j.GroupBy != "host,paths" || j.Plan == nil {
		t.Fatalf("%+v", j)
	}
	for _, tc := range []struct{ extra, want string }{
		{"", ""},
		{`paths = ["/etc"]`, "backs nothing up"},
		{`keep_last = -2`, "negative"},
		{`group_by = "colour"`, "group_by"},
		{`prune_grace = "soon"`, "prune_grace"},
	} {
		text := strings.Replace(good, "keep_hourly = 24\nkeep_daily = 7\nkeep_within = \"2d\"\n", tc.extra+"\n", 1)
		if tc.want == "" {
			tc.want = "needs a policy"
		}
		_, err := Parse("agent.toml", []byte(text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want %q", tc.extra, err, tc.want)
		}
	}
	// a backup job with a policy: a mistake, said so
	bad := strings.Replace(goodConfig, `paths = ["/etc", "/home"]`, "paths = [\"/etc\"]\nkeep_last = 3", 1)
	if _, err := Parse("agent.toml", []byte(bad)); err == nil || !strings.Contains(err.Error(), `type = \"retention\"`) && !strings.Contains(err.Error(), `retention`) {
		t.Errorf("policy on a backup job: %v", err)
	}
	if _, err := Parse("agent.toml", []byte(strings.Replace(good, `"retention"`+"\n"+`repository`, `"cleanup"`+"\n"+`repository`, 1))); err == nil || !strings.Contains(err.Error(), "want backup or retention") {
		t.Errorf("unknown type: %v", err)
	}
}
