//go:build linux

package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// jsonSpec is one row of the field table in docs/JSON.md: what a command
// prints with --json, as a message type (lines of a long-running command)
// or "document" (everything else). A field ending in "?" may be absent.
type jsonSpec struct {
	required, optional map[string]bool
}

// readJSONSpec parses the table of docs/JSON.md: rows of
// | `command` | `message_type` | `field`, `field?`, ... |
func readJSONSpec(t *testing.T) map[string]jsonSpec {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "docs", "JSON.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("^\\| `([a-z *-]+)` \\| `([a-z_]+)` \\| (.+) \\|$")
	specs := map[string]jsonSpec{}
	for _, line := range strings.Split(string(data), "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		s := jsonSpec{required: map[string]bool{}, optional: map[string]bool{}}
		for _, f := range strings.Split(m[3], ",") {
			f = strings.Trim(strings.TrimSpace(f), "`")
			if name, ok := strings.CutSuffix(f, "?"); ok {
				s.optional[name] = true
			} else {
				s.required[f] = true
			}
		}
		specs[m[1]+" "+m[2]] = s
	}
	if len(specs) < 20 {
		t.Fatalf("docs/JSON.md: found %d rows of the field table, want every command's", len(specs))
	}
	return specs
}

// jsonChecker checks outputs against the spec and remembers which rows
// it has seen.
type jsonChecker struct {
	t     *testing.T
	specs map[string]jsonSpec
	seen  map[string]bool
}

func (c *jsonChecker) fields(key string, obj map[string]json.RawMessage, r result) {
	c.t.Helper()
	spec, ok := c.specs[key]
	if !ok {
		c.t.Errorf("docs/JSON.md has no row for %q: %s", key, r)
		return
	}
	c.seen[key] = true
	for f := range obj {
		if !spec.required[f] && !spec.optional[f] {
			c.t.Errorf("%s: field %q is not in docs/JSON.md", key, f)
		}
	}
	for f := range spec.required {
		if _, ok := obj[f]; !ok {
			c.t.Errorf("%s: documented field %q is missing: %s", key, f, r)
		}
	}
}

// lines checks the JSON lines of a long-running command: every line an
// object with a documented message_type, the summary last.
func (c *jsonChecker) lines(cmd string, r result) map[string]int {
	c.t.Helper()
	counts := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	sc.Buffer(nil, 16<<20)
	last := ""
	for sc.Scan() {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &obj); err != nil {
			c.t.Errorf("%s: a line is not a JSON object: %v\n%s", cmd, err, r)
			return counts
		}
		var mt string
		json.Unmarshal(obj["message_type"], &mt)
		if mt == "" {
			c.t.Errorf("%s: a line without message_type: %s", cmd, sc.Text())
			continue
		}
		key := cmd + " " + mt
		if _, fatal := obj["exit_code"]; fatal && mt == "error" {
			key = "* error"
		}
		c.fields(key, obj, r)
		counts[mt]++
		last = mt
	}
	if r.code == 0 && last != "summary" {
		c.t.Errorf("%s: the last line is %q, want the summary: %s", cmd, last, r)
	}
	return counts
}

// document checks the one document of a listing.
func (c *jsonChecker) document(cmd string, r result) {
	c.t.Helper()
	var obj map[string]json.RawMessage
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	if err := dec.Decode(&obj); err != nil {
		c.t.Errorf("%s: not one JSON document: %v\n%s", cmd, err, r)
		return
	}
	if dec.More() {
		c.t.Errorf("%s: more than one JSON document: %s", cmd, r)
	}
	if v := string(obj["schema_version"]); v != "1" {
		c.t.Errorf("%s: schema_version %q, want 1", cmd, v)
	}
	c.fields(cmd+" document", obj, r)
}

// TestJSONOutput runs every command with --json and checks what it prints
// against the field table of docs/JSON.md: long-running commands print
// JSON lines with message_type (status lines at most once a second),
// listings one document with schema_version, errors a JSON error object
// on stdout.
func TestJSONOutput(t *testing.T) {
	c := &jsonChecker{t: t, specs: readJSONSpec(t), seen: map[string]bool{}}
	e := newEnv(t)
	c.document("init", e.floe("init", "--json"))

	src := e.mkdir("src")
	for i, size := range []int{200 << 10, 200 << 10, 10} {
		data := make([]byte, size)
		rand.Read(data) // incompressible: the upload limit applies to all of it
		if err := os.WriteFile(filepath.Join(src, string(rune('a'+i))), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "secret"), []byte("x"), 0o000); err != nil {
		t.Fatal(err)
	}
	// limits make the commands last a few seconds: status lines
	slowUp := []string{"--limit-upload", "150"}
	slowDown := []string{"--limit-download", "150"}

	r := e.floe(append(slowUp, "backup", "--json", src)...)
	counts := c.lines("backup", r)
	if counts["status"] == 0 {
		t.Errorf("backup: no status line in a backup of %v: %s", r.wall, r)
	}
	if max := int(r.wall.Seconds()) + 1; counts["status"] > max {
		t.Errorf("backup: %d status lines in %v: more than one a second", counts["status"], r.wall)
	}
	os.WriteFile(filepath.Join(src, "c"), []byte("changed"), 0o644)
	os.Remove(filepath.Join(src, "secret"))
	if counts := c.lines("backup", e.ok("backup", "-v", "--json", src)); counts["verbose_status"] < 3 {
		t.Errorf("backup -v --json: want a verbose_status line per file, got %v", counts)
	}

	snaps := e.snapshots()
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots, want 2", len(snaps))
	}
	first := snaps[0].ID
	c.document("snapshots", e.ok("snapshots", "--json"))
	c.document("ls", e.ok("ls", "latest", "--json"))
	c.document("find", e.ok("find", "a", "--json"))
	c.document("diff", e.ok("diff", first, "latest", "--json"))
	c.document("stats", e.ok("stats", "--json"))
	c.document("key list", e.ok("key", "list", "--json"))
	c.document("version", e.ok("version", "--json"))
	c.document("tag", e.ok("tag", "latest", "--add", "x", "--json"))
	root := e.mkdir("server")
	for _, cmd := range []struct {
		name string
		args []string
	}{
		{"serve token add", []string{"serve", "token", "add", "--repo", "r", "--host", "h", "--role", "backup"}},
		{"serve token list", []string{"serve", "token", "list"}},
		{"serve usage", []string{"serve", "usage"}},
	} {
		r := e.run(append(cmd.args, "--root", root, "--json")...)
		expectCode(t, r, 0)
		c.document(cmd.name, r)
	}
	c.document("repair", e.ok("repair", "--dry-run", "--json"))
	rules := e.path("audit.rules")
	os.WriteFile(rules, []byte(src+" R\n"), 0o644)
	r = e.floe("audit", "latest", "--rules", rules, "--json")
	if r.code != 0 && r.code != 4 {
		t.Fatalf("audit: %s", r)
	}
	c.document("audit", r)

	r = e.floe(append(slowDown, "restore", "latest", "--target", e.path("restored"), "--json")...)
	if counts := c.lines("restore", r); counts["status"] == 0 {
		t.Errorf("restore: no status line: %s", r)
	}
	c.lines("check", e.floe(append(slowDown, "check", "--read-data", "--json")...))
	c.lines("restore --dry-run", e.ok("restore", "latest", "--target", e.path("restored"), "-n", "-v", "--delete", "--json"))
	c.document("stats --by-host", e.ok("stats", "--by-host", "--json"))
	c.document("rewrite", e.ok("rewrite", "--all", "--exclude", "c", "--dry-run", "-v", "--json"))

	other := newOtherRepo(e, "other")
	r = e.ok(append(slowUp, "copy", "--all", "--json", "--to", other.repo, "--to-password-file", other.pwFile)...)
	if counts := c.lines("copy", r); counts["status"] == 0 || counts["verbose_status"] != 2 {
		t.Errorf("copy: want status lines and one verbose_status per snapshot: %v %s", counts, r)
	}
	exp := e.path("export")
	c.lines("export", e.ok(append(slowUp, "export", "--all", "--json", "--to", exp)...))
	target := newOtherRepo(e, "target")
	if counts := c.lines("import", target.ok(append(slowUp, "import", exp, "--json", "--from-password-file", e.pwFile)...)); counts["status"] == 0 {
		t.Errorf("import: no status line")
	}

	c.lines("forget", e.ok("forget", first, "--json"))
	// the pack of the forgotten file holds live data too: repacking it
	// downloads it, slowly
	if counts := c.lines("prune", e.ok(append(slowDown, "prune", "--grace", "0", "--max-unused", "0%", "--json")...)); counts["status"] == 0 {
		t.Errorf("prune: no status line")
	}

	wo := e.path("wo.key")
	r = e.ok("key", "add", "--write-only", "--new-key-file", wo, "--json")
	c.document("key add", r)
	var added struct {
		ID string `json:"id"`
	}
	json.Unmarshal([]byte(r.stdout), &added)
	c.document("key remove", e.ok("key", "remove", added.ID, "--json"))

	// errors: a JSON error object on stdout, of a long command and of a listing
	for _, args := range [][]string{{"backup", "--json", e.path("missing")}, {"snapshots", "--json"}} {
		r := e.run(append([]string{"-r", e.path("nowhere"), "--password-file", e.pwFile}, args...)...)
		expectCode(t, r, 10)
		c.lines(args[0], r)
	}
	// an item that failed, while the command went on
	if os.Getuid() != 0 {
		t.Log("(not root: the unreadable file was an item error above)")
	}

	// every row of the table was seen, except what this test cannot run
	// (the agent's, fleet's and nbd's documents need a server, an agent or
	// a kernel: their own tests read them)
	notRun := map[string]bool{"mount document": true, "key passwd document": true, "forget status": true, "agent next document": true,
		"agent enroll document": true, "serve host add document": true, "serve host list document": true, "fleet status document": true,
		"fleet runs document": true, "fleet report document": true, "nbd document": true,
		"restore --to-device summary": true, // needs a loop device: e2e/image_test.go reads it
		"backup error":                true, "restore error": true, "forget error": true,
		// e2e/ux_test.go's TestJSONServeAndAgentConfig reads these (a server)
		"serve fingerprint document": true, "serve token revoke document": true, "serve quota document": true,
		"serve host revoke document": true, "agent config check document": true}
	var missing []string
	for key := range c.specs {
		if !c.seen[key] && !notRun[key] {
			missing = append(missing, key)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("rows of docs/JSON.md that no command printed: %v", missing)
	}
}
