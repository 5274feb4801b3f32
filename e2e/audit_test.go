package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// auditOut is `floe audit --json`.
type auditOut struct {
	Snapshot string   `json:"snapshot"`
	Against  string   `json:"against"`
	Paths    []string `json:"paths"`
	Added    []struct {
		Path string `json:"path"`
		Type string `json:"type"`
	} `json:"added"`
	Removed []struct {
		Path string `json:"path"`
		Type string `json:"type"`
	} `json:"removed"`
	Changed []struct {
		Path  string `json:"path"`
		Type  string `json:"type"`
		Attrs []struct {
			Name string `json:"name"`
			Old  string `json:"old"`
			New  string `json:"new"`
		} `json:"attrs"`
	} `json:"changed"`
	Errors  []any `json:"errors"`
	Summary struct {
		Checked uint64 `json:"checked"`
		Added   uint64 `json:"added"`
		Removed uint64 `json:"removed"`
		Changed uint64 `json:"changed"`
		Errors  uint64 `json:"errors"`
	} `json:"summary"`
}

// An audit of an unchanged tree exits 0; after changes it exits 4 and
// reports them, as text and as one JSON document.
func TestAudit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	for name, data := range map[string]string{
		"etc/passwd": "root:x:0:0::/root:/bin/sh\n", "etc/hosts": "127.0.0.1 localhost\n",
		"bin/tool": "#!/bin/sh\necho hi\n", "log/syslog": "boot\n", "cache/x": "junk\n",
	} {
		testutil.WriteFile(t, filepath.Join(src, name), []byte(data))
	}
	b, _ := e.backup(src)
	rules := e.path("audit.rules")
	os.WriteFile(rules, []byte("# test rules\n"+src+" R\n"+src+"/log >\n!"+regexp.QuoteMeta(src)+"/cache(/|$)\n"), 0o644)

	r := e.floe("audit", "latest", "--rules", rules)
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "No changes") {
		t.Errorf("unchanged: %s", r)
	}
	r = e.floe("audit", b.Snapshot, "--rules", rules, "--json")
	expectCode(t, r, 0)
	doc := decodeJSON[auditOut](t, r)
	if doc.Snapshot != b.Snapshot || doc.Against != "/" || len(doc.Paths) != 1 || doc.Paths[0] != src ||
		doc.Summary.Checked == 0 || doc.Added == nil || doc.Removed == nil || doc.Changed == nil || doc.Errors == nil {
		t.Errorf("unchanged --json: %s", r)
	}

	time.Sleep(10 * time.Millisecond)
	os.WriteFile(filepath.Join(src, "etc/hosts"), []byte("10.66.6.6 localhost\n"), 0o644) // same size
	os.Chmod(filepath.Join(src, "bin/tool"), os.ModeSetuid|0o755)
	os.Remove(filepath.Join(src, "etc/passwd"))
	os.WriteFile(filepath.Join(src, "bin/backdoor"), []byte("x"), 0o755)
	f, _ := os.OpenFile(filepath.Join(src, "log/syslog"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("more\n") // logs may grow
	f.Close()
	os.WriteFile(filepath.Join(src, "cache/x"), []byte("other junk\n"), 0o644) // ignored

	r = e.floe("audit", "latest", "--rules", rules)
	expectCode(t, r, 4)
	for _, want := range []string{"Changes found", "f+  " + src + "/bin/backdoor", "f-  " + src + "/etc/passwd",
		"File: " + src + "/bin/tool", "perm   : 0644", "| 4755"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the report lacks %q: %s", want, r)
		}
	}
	if strings.Contains(r.stdout, "syslog") || strings.Contains(r.stdout, "cache") {
		t.Errorf("a growing log or an ignored path is reported: %s", r)
	}

	r = e.floe("audit", "latest", "--rules", rules, "--json")
	expectCode(t, r, 4)
	doc = decodeJSON[auditOut](t, r)
	if len(doc.Added) != 1 || doc.Added[0].Path != src+"/bin/backdoor" || doc.Added[0].Type != "file" ||
		len(doc.Removed) != 1 || doc.Removed[0].Path != src+"/etc/passwd" ||
		doc.Summary.Added != 1 || doc.Summary.Removed != 1 || doc.Summary.Changed != uint64(len(doc.Changed)) {
		t.Errorf("--json: %s", r)
	}
	attrs := map[string]map[string][2]string{}
	for _, c := range doc.Changed {
		attrs[c.Path] = map[string][2]string{}
		for _, a := range c.Attrs {
			attrs[c.Path][a.Name] = [2]string{a.Old, a.New}
		}
	}
	if got := attrs[src+"/bin/tool"]["perm"]; got != [2]string{"0644", "4755"} {
		t.Errorf("perm of bin/tool: %q", got)
	}
	if h := attrs[src+"/etc/hosts"]["hash"]; len(h[0]) != 8 || len(h[1]) != 8 || h[0] == h[1] {
		t.Errorf("hash of etc/hosts: %q", h)
	}
	if _, ok := attrs[src+"/etc/hosts"]["size"]; ok {
		t.Errorf("etc/hosts: size reported, but it did not change")
	}
	if _, ok := attrs[src+"/log/syslog"]; ok {
		t.Errorf("a growing log is reported as changed")
	}

	// against a second snapshot: the same changes, from the repository alone
	b2, _ := e.backup(src)
	r = e.floe("audit", b.Snapshot, "--against-snapshot", b2.Snapshot, "--rules", rules, "--json")
	expectCode(t, r, 4)
	if d := decodeJSON[auditOut](t, r); d.Against != b2.Snapshot || len(d.Added) != 1 || len(d.Removed) != 1 ||
		len(d.Changed) != len(doc.Changed) {
		t.Errorf("--against-snapshot: %s", r)
	}
	expectCode(t, e.floe("audit", b2.Snapshot, "--rules", rules, "-q"), 0)
}

func TestAuditUsage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// no repository needed
	r := e.run("audit", "--print-default-rules")
	expectCode(t, r, 0)
	for _, want := range []string{"\n/etc ", "\n/usr ", "\n/var/log ", "\n!/etc/mtab$"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("default rules lack %q:\n%s", want, r.stdout)
		}
	}
	// the printed rules are a valid rules file
	rules := e.path("default.rules")
	os.WriteFile(rules, []byte(r.stdout), 0o644)
	e.init()
	src := e.mkdir("src")
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	e.backup(src)
	r = e.floe("audit", "latest", "--rules", rules)
	expectCode(t, r, 1) // valid rules, but they select nothing of src
	if !strings.Contains(r.stderr, "no backed-up path of the snapshot is selected") {
		t.Errorf("nothing selected: %s", r)
	}

	bad := e.path("bad.rules")
	os.WriteFile(bad, []byte("# ok\n/etc R\n/usr Q\n"), 0o644)
	r = e.floe("audit", "latest", "--rules", bad)
	expectCode(t, r, 1)
	if !strings.Contains(r.stderr, bad+":3: unknown attribute or rule set \"Q\"") {
		t.Errorf("bad rules: %s", r)
	}
	expectCode(t, e.floe("audit"), 2)
	expectCode(t, e.floe("audit", "latest", "--against", "/", "--against-snapshot", "latest"), 2)
}
