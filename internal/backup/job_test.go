package backup

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/snapshot"
)

func TestJob(t *testing.T) {
	ctx := context.Background()
	t.Setenv("FLOE_INSECURE_TEST_KDF", "1")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	loc := filepath.Join(t.TempDir(), "repo")
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "keep"), []byte("data"), 0o644)
	os.WriteFile(filepath.Join(src, "skip.tmp"), []byte("data"), 0o644)
	excl := filepath.Join(t.TempDir(), "excludes")
	os.WriteFile(excl, []byte("*.tmp\n"), 0o644)
	status := filepath.Join(t.TempDir(), "status")
	var created, warned []string
	job := func() *Job {
		return &Job{
			Options:      Options{Paths: []string{src}, Hostname: "h"},
			ExcludeFiles: []string{excl},
			// the pre-hook runs before the files are read
			PreHook:    "echo dumped > " + filepath.Join(src, "dump.sql"),
			PostHook:   `echo "$FLOE_BACKUP_STATUS" >> ` + status,
			Repository: connect.Target{Location: loc, Default: true},
			Events: Events{
				Created: func(l, k string) { created = append(created, l, k) },
				Warn:    func(m string) { warned = append(warned, m) },
			},
		}
	}
	res, err := job().Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Created || len(created) != 2 || created[0] != loc || res.Parent != nil {
		t.Fatalf("first job: created %v (%v), parent %v", res.Created, created, res.Parent)
	}
	if s := res.Snapshot.Summary; s.FilesNew != 2 {
		t.Errorf("first job saved %d new files, want keep and dump.sql (skip.tmp excluded)", s.FilesNew)
	}
	res2, err := job().Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Created || res2.Parent == nil || res2.Parent.ID != res.ID {
		t.Fatalf("second job: created %v, parent %v, want %s", res2.Created, res2.Parent, res.ID.Short())
	}
	b, _ := os.ReadFile(status)
	if got := strings.Fields(string(b)); len(got) != 2 || got[0] != "ok" || got[1] != "ok" {
		t.Errorf("post-hook saw %q", got)
	}

	// a failing pre-hook: no snapshot, the post-hook sees "failed"
	os.Remove(status)
	j := job()
	j.PreHook = "exit 3"
	if _, err := j.Run(ctx); err == nil || !strings.Contains(err.Error(), "pre-hook") {
		t.Errorf("failing pre-hook: %v", err)
	}
	// a failing post-hook: the snapshot is kept, the error returned
	j = job()
	j.PostHook = "exit 5"
	res3, err := j.Run(ctx)
	if err == nil || res3 == nil || !strings.Contains(err.Error(), "post-hook") {
		t.Errorf("failing post-hook: %v, %v", res3, err)
	}
	r, err := connect.Open(ctx, connect.Target{Location: loc, Default: true}, connect.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	all, _, err := snapshot.List(ctx, r)
	if err != nil || len(all) != 3 {
		t.Errorf("%d snapshots, want 3 (%v)", len(all), err)
	}
	if b, _ := os.ReadFile(status); strings.TrimSpace(string(b)) != "failed" {
		t.Errorf("post-hook after a failed pre-hook saw %q", b)
	}
	if len(warned) != 0 {
		t.Errorf("warnings: %v", warned)
	}
}
