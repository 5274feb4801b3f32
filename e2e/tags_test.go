//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Tags mean what restic documents: on backup and tag, "a,b" is two tags;
// in filters, "a,b" needs both and a repeated --tag is "or".
func TestTags(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	os.WriteFile(filepath.Join(src, "f"), []byte("tags"), 0o644)
	s1, _ := e.backup("--tag", "a,b", "--tag", "c", src)
	s2, _ := e.backup("--tag", "a", src)
	s3, _ := e.backup("--tag", "b,c", src)
	other := e.mkdir("other")
	s4, _ := e.backup(other)

	snaps := e.snapshots()
	if len(snaps) != 4 || !slices.Equal(snaps[0].Tags, []string{"a", "b", "c"}) {
		t.Fatalf("backup --tag a,b --tag c: %+v", snaps[0])
	}
	ids := func(args ...string) []string {
		t.Helper()
		var out []string
		for _, s := range decodeJSON[snapshotList](t, e.ok(append([]string{"snapshots", "--json"}, args...)...)).Snapshots {
			out = append(out, s.ID)
		}
		return out
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--tag", "a,b"}, []string{s1.Snapshot}},
		{[]string{"--tag", "a"}, []string{s1.Snapshot, s2.Snapshot}},
		{[]string{"--tag", "a", "--tag", "c"}, []string{s1.Snapshot, s2.Snapshot, s3.Snapshot}},
		{[]string{"--tag", "a,c"}, []string{s1.Snapshot}},
		{[]string{"--tag", "x"}, nil},
		{[]string{"--tag", ""}, []string{s4.Snapshot}},
		{[]string{"--latest", "1"}, []string{s3.Snapshot, s4.Snapshot}},
		{[]string{"--latest", "2", "--tag", "a"}, []string{s1.Snapshot, s2.Snapshot}},
	} {
		if got := ids(c.args...); !slices.Equal(got, c.want) {
			t.Errorf("snapshots %q: %q, want %q", c.args, got, c.want)
		}
	}
	r := e.ok("snapshots")
	header := strings.Fields(strings.SplitN(r.stdout, "\n", 2)[0])
	if !slices.Contains(header, "Tags") || !strings.Contains(r.stdout, "a,b,c") {
		t.Errorf("snapshots shows no tags column: %s", r)
	}
	expectCode(t, e.floe("snapshots", "--latest", "-1"), 2)

	// forget --keep-tag a,b keeps what has both; a repeated --keep-tag is "or"
	forgetPlan := func(args ...string) (keep, remove []string) {
		t.Helper()
		r := e.ok(append([]string{"forget", "--dry-run", "--json", "--group-by", ""}, args...)...)
		type group struct {
			Keep []struct {
				ID string `json:"id"`
			} `json:"keep"`
			Remove []string `json:"remove"`
		}
		groups := decodeJSON[struct {
			Groups []group `json:"groups"`
		}](t, r).Groups
		for _, g := range groups {
			for _, k := range g.Keep {
				keep = append(keep, k.ID)
			}
			remove = append(remove, g.Remove...)
		}
		slices.Sort(keep)
		return keep, remove
	}
	if keep, _ := forgetPlan("--keep-tag", "a,b"); !slices.Equal(keep, []string{s1.Snapshot}) {
		t.Errorf("forget --keep-tag a,b keeps %q, want only %s", keep, s1.Snapshot[:8])
	}
	want := []string{s1.Snapshot, s2.Snapshot}
	slices.Sort(want)
	if keep, _ := forgetPlan("--keep-tag", "a,b", "--keep-tag", "a"); !slices.Equal(keep, want) {
		t.Errorf("forget --keep-tag a,b --keep-tag a keeps %q, want %q", keep, want)
	}

	// copy first, to see that a retagged snapshot is still known as copied
	sib := newOtherRepo(e, "sibling")
	e.ok("copy", s2.Snapshot, "--to", sib.repo, "--to-password-file", sib.pwFile)

	// floe tag writes a new record and removes the old one
	r = e.ok("tag", s2.Snapshot, "--add", "keep,x", "--json")
	type tagOut struct {
		Old  string   `json:"old"`
		New  string   `json:"new"`
		Tags []string `json:"tags"`
	}
	out := decodeJSON[struct {
		Changed []tagOut `json:"changed"`
	}](t, r).Changed
	if len(out) != 1 || out[0].Old != s2.Snapshot || out[0].New == s2.Snapshot || !slices.Equal(out[0].Tags, []string{"a", "keep", "x"}) {
		t.Fatalf("tag --add: %+v", out)
	}
	retagged := out[0].New
	if got := ids("--tag", "keep"); !slices.Equal(got, []string{retagged}) {
		t.Errorf("after tag --add keep: %q", got)
	}
	if got := ids(); slices.Contains(got, s2.Snapshot) || len(got) != 4 {
		t.Errorf("the old record stays, or a snapshot went missing: %q", got)
	}
	rec := e.ok("cat", "snapshot", retagged)
	if !strings.Contains(rec.stdout, `"original": "`+s2.Snapshot+`"`) && !strings.Contains(rec.stdout, `"original":"`+s2.Snapshot+`"`) {
		t.Errorf("the retagged record does not name the original: %s", rec)
	}
	r = e.ok("copy", "--json", retagged, "--to", sib.repo, "--to-password-file", sib.pwFile)
	if c := decodeJSON[copyOut](t, r); c.Copied != 0 || c.Skipped != 1 {
		t.Errorf("copy of a retagged snapshot already copied: %+v", c)
	}

	e.ok("tag", retagged, "--remove", "x")
	e.ok("tag", "--tag", "b,c", "--set", "weekly")
	if got := ids("--tag", "weekly"); len(got) != 2 {
		t.Errorf("tag --tag b,c --set weekly changed %d snapshots, want 2 (%q)", len(got), got)
	}
	e.ok("tag", "latest", "--set", "")
	if got := ids("--tag", ""); len(got) != 1 {
		t.Errorf("tag --set \"\" on latest: %d snapshots without tags, want 1: %q", len(got), got)
	}
	r = e.ok("tag", "--tag", "keep", "--add", "a")
	if !strings.Contains(r.stdout, "0 of 1") {
		t.Errorf("a tag already there changes nothing: %s", r)
	}
	expectCode(t, e.floe("tag", "latest"), 2)
	expectCode(t, e.floe("tag", "latest", "--set", "a", "--add", "b"), 2)

	// a write-only key cannot
	wo := e.path("wo.key")
	e.ok("key", "add", "--write-only", "--new-key-file", wo)
	registerKeyFile(t, wo)
	expectCode(t, e.run("-r", e.repo, "--key-file", wo, "tag", "latest", "--add", "z"), 12)
}
