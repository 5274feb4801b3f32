//go:build linux

package audit

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/testutil"
	"github.com/floe-backup/floe/internal/testutil/backuptest"
	"github.com/floe-backup/floe/internal/walk"
)

func newRepo(t *testing.T) *repo.Repository {
	t.Helper()
	r, _ := testutil.NewRepo(t)
	return r
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t *testing.T, path string, data []byte) { t.Helper(); testutil.WriteFile(t, path, data) }

func backupDir(t *testing.T, r *repo.Repository, dir string) *snapshot.Snapshot {
	return backuptest.Backup(t, r, backup.Options{Paths: []string{dir}, Hostname: "test"}).Snapshot
}

func rules(t *testing.T, text string) *Rules {
	t.Helper()
	r, err := ParseRules(strings.NewReader(text), "test.rules")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func liveAudit(t *testing.T, r *repo.Repository, sn *snapshot.Snapshot, rl *Rules) *Report {
	t.Helper()
	rep, err := Run(context.Background(), Options{Rules: rl, Snapshot: sn, Trees: walk.NewCache(snapshot.RepoTrees{Repo: r}, 0), Repo: r})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// attrMap returns the changes of a report by path: name -> [old, new].
func attrMap(rep *Report) map[string]map[string][2]string {
	m := map[string]map[string][2]string{}
	for _, c := range rep.Changed {
		m[c.Path] = map[string][2]string{}
		for _, a := range c.Attrs {
			m[c.Path][a.Name] = [2]string{a.Old, a.New}
		}
	}
	return m
}

func attrNames(attrs map[string][2]string) []string {
	var names []string
	for n := range attrs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func entryPaths(es []Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Path)
	}
	return out
}

// TestAuditLive backs up a tree, changes it in every way the rules look
// at, and audits the snapshot against it.
func TestAuditLive(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	dir := filepath.Join(t.TempDir(), "tree")
	big := randomBytes(t, 3<<20)
	files := map[string][]byte{
		"etc/content":      []byte("version 1\n"),
		"etc/chmod":        []byte("mode\n"),
		"etc/chown":        []byte("owner\n"),
		"etc/removed":      []byte("going away\n"),
		"etc/renamed":      []byte("same content, new inode\n"),
		"etc/sneaky":       []byte("password=hunter2\n"),
		"etc/big":          big,
		"etc/unchanged":    []byte("stays\n"),
		"log/grows.log":    []byte("line 1\n"),
		"log/shrinks.log":  []byte("line 1\nline 2\n"),
		"log/rewrite.log":  []byte("aaaa\n"),
		"cache/junk":       []byte("cached\n"),
		"quiet/sneaky":     []byte("password=hunter2\n"),
		"quiet/touched":    []byte("x\n"),
		"exist/changed":    []byte("E checks nothing\n"),
		"exist/removed-me": []byte("but removal counts\n"),
	}
	for name, data := range files {
		write(t, filepath.Join(dir, name), data)
	}
	if err := os.Symlink("content", filepath.Join(dir, "etc", "link")); err != nil {
		t.Fatal(err)
	}
	sn := backupDir(t, r, dir)

	rl := rules(t, dir+` R
`+dir+`/log >
`+dir+`/quiet p+u+g+s+m+H
`+dir+`/exist E
!`+regexp.QuoteMeta(dir)+`/cache(/|$)
`)

	// nothing changed yet
	rep := liveAudit(t, r, sn, rl)
	if rep.Changes() || len(rep.Errors) > 0 {
		t.Fatalf("unchanged tree: %+v", rep)
	}
	if !slices.Equal(rep.Paths, []string{dir}) {
		t.Errorf("paths %v, want %s", rep.Paths, dir)
	}
	// the snapshot's parents (/tmp, ...) are not audited, the cache is ignored
	// files but the ignored one, the symlink, and 5 directories
	if want := uint64(len(files) - 1 + 1 + 5); rep.Summary.Checked != want {
		t.Errorf("checked %d, want %d", rep.Summary.Checked, want)
	}

	p := func(name string) string { return filepath.Join(dir, name) }
	oldNode := func(name string) *snapshot.Node {
		_, n, err := walk.Resolve(ctx, snapshot.RepoTrees{Repo: r}, sn.Tree, p(name))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	time.Sleep(10 * time.Millisecond) // new ctimes and mtimes

	write(t, p("etc/content"), []byte("version 2, longer\n"))
	os.Chmod(p("etc/chmod"), 0o600)
	asRoot := os.Geteuid() == 0
	if asRoot {
		if err := os.Chown(p("etc/chown"), 12345, 54321); err != nil {
			t.Fatal(err)
		}
	}
	os.Remove(p("etc/removed"))
	write(t, p("etc/added"), []byte("new\n"))
	write(t, p("etc/renamed.tmp"), files["etc/renamed"])
	os.Chtimes(p("etc/renamed.tmp"), time.Time{}, oldNode("etc/renamed").ModTime)
	if err := os.Rename(p("etc/renamed.tmp"), p("etc/renamed")); err != nil {
		t.Fatal(err)
	}
	// same size, mtime set back: only the content (and ctime) tell
	for _, name := range []string{"etc/sneaky", "quiet/sneaky"} {
		write(t, p(name), []byte("password=hunter3\n"))
		if err := os.Chtimes(p(name), time.Time{}, oldNode(name).ModTime); err != nil {
			t.Fatal(err)
		}
	}
	// change 1 byte in the third MiB of a multi-chunk file
	big[len(big)-1000] ^= 0xff
	write(t, p("etc/big"), big)
	// a new link made beside the old one, then renamed over it, so that
	// its inode differs (remove-then-create may reuse the inode number)
	os.Symlink("elsewhere", p("etc/link.new"))
	os.Rename(p("etc/link.new"), p("etc/link"))
	// logs
	f, _ := os.OpenFile(p("log/grows.log"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("line 2\n")
	f.Close()
	write(t, p("log/shrinks.log"), []byte("line 1\n"))
	write(t, p("log/rewrite.log"), []byte("bbbbbb\n")) // content changes are fine if it grows
	write(t, p("log/new.log"), []byte("new log\n"))
	// ignored
	write(t, p("cache/junk"), []byte("other junk\n"))
	write(t, p("cache/more"), []byte("more junk\n"))
	// quiet: touched only (mtime checked, ctime is not)
	os.Chtimes(p("quiet/touched"), time.Time{}, time.Now())
	// E
	write(t, p("exist/changed"), []byte("E checks nothing, not even this\n"))
	os.Remove(p("exist/removed-me"))

	rep = liveAudit(t, r, sn, rl)
	if len(rep.Errors) > 0 {
		t.Fatalf("errors: %v", rep.Errors)
	}
	if got, want := entryPaths(rep.Added), []string{p("etc/added"), p("log/new.log")}; !slices.Equal(got, want) {
		t.Errorf("added %v, want %v", got, want)
	}
	if got, want := entryPaths(rep.Removed), []string{p("etc/removed"), p("exist/removed-me")}; !slices.Equal(got, want) {
		t.Errorf("removed %v, want %v", got, want)
	}
	changed := attrMap(rep)
	expect := func(name string, attrs ...string) {
		t.Helper()
		got := attrNames(changed[p(name)])
		slices.Sort(attrs)
		if !slices.Equal(got, attrs) {
			t.Errorf("%s: changed %v, want %v", name, got, attrs)
		}
	}
	expect("etc/content", "size", "mtime", "ctime", "hash")
	expect("etc/chmod", "perm", "ctime")
	if asRoot {
		expect("etc/chown", "user", "group", "ctime")
		if got := changed[p("etc/chown")]["user"]; got[0] == "" || got[1] != "12345" {
			t.Errorf("chown: user %q", got)
		}
	}
	expect("etc/renamed", "inode", "ctime")
	expect("etc/sneaky", "ctime", "hash")
	expect("quiet/sneaky", "hash")
	expect("quiet/touched", "mtime")
	expect("etc/big", "mtime", "ctime", "hash")
	expect("etc/link", "size", "inode", "mtime", "ctime", "target")
	expect("etc/unchanged")
	expect("log/grows.log")
	expect("log/rewrite.log")
	expect("log/shrinks.log", "size")
	expect("exist/changed")
	expect("cache/junk")

	if got := changed[p("etc/chmod")]["perm"]; got != [2]string{"0644", "0600"} {
		t.Errorf("perm %q", got)
	}
	if got := changed[p("log/shrinks.log")]["size"]; got != [2]string{"14", "7"} {
		t.Errorf("size %q", got)
	}
	if got := changed[p("etc/link")]["target"]; got != [2]string{"content", "elsewhere"} {
		t.Errorf("target %q", got)
	}
	// the first differing chunk of the big file: not the first chunk
	bigOld := oldNode("etc/big").Content
	if len(bigOld) < 2 {
		t.Fatalf("big file has %d chunks", len(bigOld))
	}
	h := changed[p("etc/big")]["hash"]
	i := slices.IndexFunc(bigOld, func(ref hash.Ref) bool { return ref.Key.String()[:8] == h[0] })
	if i <= 0 || h[1] == h[0] || len(h[1]) != 8 {
		t.Errorf("big: hash %q: old is chunk %d of %d", h, i, len(bigOld))
	}
	mt := changed[p("quiet/touched")]["mtime"]
	if _, err := time.Parse(time.RFC3339Nano, mt[0]); err != nil || len(mt[0]) != len("2006-01-02T15:04:05.000000000Z") {
		t.Errorf("mtime %q: %v", mt[0], err)
	}
	// the directory whose entries changed is reported too
	if _, ok := changed[p("etc")]; !ok {
		t.Errorf("etc not changed: %v", attrNames(changed[p("etc")]))
	}

	// the JSON document
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Added   []struct{ Path, Type string }
		Removed []struct{ Path, Type string }
		Changed []struct {
			Path  string
			Attrs []struct{ Name, Old, New string }
		}
		Errors  []any
		Summary map[string]uint64
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Added) != 2 || doc.Added[0].Type != "file" || len(doc.Changed) != len(rep.Changed) ||
		doc.Summary["changed"] != uint64(len(rep.Changed)) || doc.Errors == nil {
		t.Errorf("JSON: %s", b)
	}
	var text strings.Builder
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Changes found", "Added entries:", "f+  " + p("etc/added"),
		"f-  " + p("etc/removed"), "File: " + p("etc/chmod"), "  perm   : 0644 ", "| 0600\n"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text output lacks %q:\n%s", want, text.String())
		}
	}

	// against a snapshot of the changed tree: the same findings, from
	// blob lists (ctimes of the snapshot are those the live check saw)
	sn2 := backupDir(t, r, dir)
	rep2, err := Run(ctx, Options{Rules: rl, Snapshot: sn, Other: sn2, Trees: walk.NewCache(snapshot.RepoTrees{Repo: r}, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(entryPaths(rep2.Added), entryPaths(rep.Added)) || !slices.Equal(entryPaths(rep2.Removed), entryPaths(rep.Removed)) {
		t.Errorf("snapshot audit: added %v removed %v", entryPaths(rep2.Added), entryPaths(rep2.Removed))
	}
	changed2 := attrMap(rep2)
	for path, attrs := range changed {
		if !slices.Equal(attrNames(attrs), attrNames(changed2[path])) {
			t.Errorf("snapshot audit: %s: %v, live: %v", path, attrNames(changed2[path]), attrNames(attrs))
		}
		if !strings.HasSuffix(path, "/etc") && attrs["hash"] != changed2[path]["hash"] {
			t.Errorf("snapshot audit: %s: hash %v, live %v", path, changed2[path]["hash"], attrs["hash"])
		}
	}
}

// A sparse file is cut between its holes; an unchanged one matches, a
// changed one is found.
func TestAuditSparse(t *testing.T) {
	r := newRepo(t)
	dir := filepath.Join(t.TempDir(), "tree")
	p := filepath.Join(dir, "sparse")
	os.MkdirAll(dir, 0o755)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("data in the middle"), 20<<20)
	f.Truncate(40 << 20)
	f.Close()
	sn := backupDir(t, r, dir)
	_, node, err := walk.Resolve(context.Background(), snapshot.RepoTrees{Repo: r}, sn.Tree, p)
	if err != nil {
		t.Fatal(err)
	}
	if !node.Sparse {
		t.Skip("the file system made no sparse file")
	}
	rl := rules(t, dir+" H")
	if rep := liveAudit(t, r, sn, rl); rep.Changes() || len(rep.Errors) > 0 {
		t.Fatalf("unchanged sparse file: %+v", rep)
	}
	f, _ = os.OpenFile(p, os.O_WRONLY, 0)
	f.WriteAt([]byte("DATA"), 20<<20)
	f.Close()
	rep := liveAudit(t, r, sn, rl)
	if len(rep.Changed) != 1 || rep.Changed[0].Attrs[0].Name != "hash" {
		t.Fatalf("changed sparse file: %+v", rep)
	}
	// the same data, written without holes: cut differently, compared byte by byte
	data, _ := os.ReadFile(p)
	data[20<<20] = 'd'
	data[20<<20+1] = 'a'
	data[20<<20+2] = 't'
	data[20<<20+3] = 'a'
	os.Remove(p)
	write(t, p, data)
	if rep := liveAudit(t, r, sn, rl); rep.Changes() || len(rep.Errors) > 0 {
		t.Fatalf("same content without holes: %+v", rep)
	}
}

func TestAuditNothingSelected(t *testing.T) {
	r := newRepo(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a"), []byte("a"))
	sn := backupDir(t, r, dir)
	_, err := Run(context.Background(), Options{Rules: rules(t, "/nowhere R"), Snapshot: sn,
		Trees: snapshot.RepoTrees{Repo: r}, Repo: r})
	if !errors.Is(err, ErrNothingSelected) {
		t.Fatalf("err = %v", err)
	}
}

// A selection below the snapshot's path, another above it, and the live
// side seen through another root (a mounted copy of the system).
func TestAuditRoots(t *testing.T) {
	r := newRepo(t)
	base := t.TempDir()
	dir := filepath.Join(base, "sys")
	write(t, filepath.Join(dir, "etc", "a"), []byte("a"))
	write(t, filepath.Join(dir, "etc", "sub", "b"), []byte("b"))
	write(t, filepath.Join(dir, "other", "c"), []byte("c"))
	sn := backupDir(t, r, dir)
	// a copy of the whole file system below /mnt: here, a tree of
	// symlink-free directories that holds dir at the same path
	mnt := filepath.Join(t.TempDir(), "mnt")
	copyTree(t, dir, filepath.Join(mnt, dir))
	rl := rules(t, filepath.Join(dir, "etc/sub")+" p+u+g+s+H\n"+filepath.Dir(base)+" E\n")
	rep, err := Run(context.Background(), Options{Rules: rl, Snapshot: sn, Trees: snapshot.RepoTrees{Repo: r}, Repo: r, Root: mnt})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Paths, []string{dir}) || rep.Changes() || len(rep.Errors) > 0 {
		t.Fatalf("report %+v", rep)
	}
	write(t, filepath.Join(mnt, dir, "etc", "sub", "b"), []byte("B"))
	os.Remove(filepath.Join(mnt, dir, "other", "c"))
	rep, _ = Run(context.Background(), Options{Rules: rl, Snapshot: sn, Trees: snapshot.RepoTrees{Repo: r}, Repo: r, Root: mnt})
	ch := attrMap(rep)
	if len(rep.Changed) != 1 || attrNames(ch[filepath.Join(dir, "etc/sub/b")])[0] != "hash" ||
		!slices.Equal(entryPaths(rep.Removed), []string{filepath.Join(dir, "other/c")}) {
		t.Fatalf("report %+v", rep)
	}
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}
