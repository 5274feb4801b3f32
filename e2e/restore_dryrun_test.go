//go:build linux

package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// restore --dry-run counts what a restore would do and writes nothing.
func TestRestoreDryRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "a"), 100<<10, 41)
	testutil.WriteRandom(t, filepath.Join(src, "b"), 50<<10, 42)
	e.mkdir("src", "sub")
	testutil.WriteRandom(t, filepath.Join(src, "sub", "c"), 10<<10, 43)
	e.backup(src)

	type dryOut struct {
		DryRun         bool   `json:"dry_run"`
		New            uint64 `json:"new"`
		NewBytes       uint64 `json:"new_bytes"`
		Overwrite      uint64 `json:"overwrite"`
		OverwriteBytes uint64 `json:"overwrite_bytes"`
		Unchanged      uint64 `json:"unchanged"`
		Delete         uint64 `json:"delete"`
		DeleteBytes    uint64 `json:"delete_bytes"`
	}
	// into a target that does not exist: everything is new, nothing is made
	target := e.path("target")
	out := decodeJSON[dryOut](t, e.ok("restore", "--json", "-n", "latest:"+src, "--target", target))
	if !out.DryRun || out.New != 4 || out.NewBytes != 160<<10 || out.Overwrite+out.Unchanged+out.Delete != 0 {
		t.Errorf("dry run into nothing: %+v", out)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("the dry run made the target: %v", err)
	}

	e.ok("restore", "latest:"+src, "--target", target)
	// a changed (same size), b gone, an extra file
	testutil.WriteRandom(t, filepath.Join(target, "a"), 100<<10, 44)
	os.Remove(filepath.Join(target, "b"))
	testutil.WriteRandom(t, filepath.Join(target, "extra"), 7<<10, 45)
	before := dirDigest(t, target)
	r := e.ok("restore", "--json", "-n", "-v", "--delete", "latest:"+src, "--target", target)
	out = decodeJSON[dryOut](t, r)
	if out.New != 1 || out.NewBytes != 50<<10 || out.Overwrite != 1 || out.OverwriteBytes != 100<<10 ||
		out.Unchanged != 1 || out.Delete != 1 || out.DeleteBytes != 7<<10 {
		t.Errorf("dry run: %+v", out)
	}
	want := map[string]string{"a": "overwrite", "b": "new", "sub/c": "unchanged", "extra": "delete"}
	got := map[string]string{}
	for _, line := range strings.Split(r.stdout, "\n") {
		var en struct {
			MessageType string `json:"message_type"`
			Action      string `json:"action"`
			Item        string `json:"item"`
		}
		if json.Unmarshal([]byte(line), &en) == nil && en.MessageType == "verbose_status" {
			got[en.Item] = en.Action
		}
	}
	for p, a := range want {
		if got[p] != a {
			t.Errorf("-v: %s is %q, want %q (all: %v)", p, got[p], a, got)
		}
	}
	if after := dirDigest(t, target); after != before {
		t.Error("the dry run changed the target")
	}
	// text, and the restore itself then does what the dry run said
	r = e.ok("restore", "-n", "--delete", "latest:"+src, "--target", target)
	if !strings.Contains(r.stdout, "overwrite 1") || !strings.Contains(r.stdout, "delete 1") {
		t.Errorf("text dry run: %s", r)
	}
	e.ok("restore", "--delete", "latest:"+src, "--target", target)
	testutil.CompareTrees(t, src, target)
}

// dirDigest hashes the names, modes, times and contents below dir.
func dirDigest(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %v %d %d\n", p, fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
