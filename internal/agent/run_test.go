package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
)

// TestRunnerBackup: a job's settings reach the backup: host, tags,
// excludes and exclude files, hooks (the post-hook sees the status), and
// the report has the figures.
func TestRunnerBackup(t *testing.T) {
	t.Setenv("FLOE_INSECURE_TEST_KDF", "1")
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("agent-test-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loc := filepath.Join(dir, "repo")
	r, _, err := connect.Create(context.Background(), connect.Target{Location: loc, PasswordFile: pw}, repo.InitOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	data := filepath.Join(dir, "data")
	for _, f := range []string{"keep", "skip.tmp", "also-skip", "sub/keep2", "nob/.nobackup", "nob/file", "x.log", "big"} {
		p := filepath.Join(data, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		content := "content of " + f
		if f == "big" {
			content = strings.Repeat("big ", 1000)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exFile := filepath.Join(dir, "excludes")
	os.WriteFile(exFile, []byte("also-skip\n"), 0o644)
	hookLog := filepath.Join(dir, "hooks")
	cfg, err := Parse("agent.toml", []byte(fmt.Sprintf(`host = "runner-host"
state_dir = %q
cache_dir = %q
[[job]]
name = "j"
repository = %q
password_file = %q
paths = [%q]
excludes = ["*.tmp"]
iexcludes = ["*.LOG"]
exclude_if_present = [".nobackup"]
exclude_larger_than = "1k"
exclude_files = [%q]
tags = ["agent", "nightly"]
pre_hook = "echo pre >> %s"
post_hook = "echo post $FLOE_BACKUP_STATUS >> %s"
limit_upload = 100000
nice = 1
`, filepath.Join(dir, "state"), filepath.Join(dir, "cache"), loc, pw, data, exFile, hookLog, hookLog)))
	if err != nil {
		t.Fatal(err)
	}
	run := NewRunner(cfg, "test", slog.New(slog.NewTextHandler(io.Discard, nil)), RealClock{})
	rep, err := run.Backup(context.Background(), cfg.Jobs[0])
	if err != nil || rep.Status != fleet.StatusOK {
		t.Fatalf("backup: %v %+v", err, rep)
	}
	if rep.FilesNew != 2 || rep.Snapshot == "" || rep.Host != "runner-host" || rep.Task != fleet.TaskBackup {
		t.Errorf("report %+v", rep)
	}
	if b, _ := os.ReadFile(hookLog); string(b) != "pre\npost ok\n" {
		t.Errorf("hooks: %q", b)
	}
	r, err = connect.Open(context.Background(), connect.Target{Location: loc, PasswordFile: pw}, connect.Options{LoadIndex: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	recs, _, err := snapshot.List(context.Background(), r)
	if err != nil || len(recs) != 1 {
		t.Fatalf("snapshots: %v %v", recs, err)
	}
	sn := recs[0].Snapshot
	if sn.Hostname != "runner-host" || !slices.Equal(sn.Tags, []string{"agent", "nightly"}) || sn.ProgramVersion != "floe test" {
		t.Errorf("snapshot %+v", sn)
	}
	var names []string
	err = walk.Walk(context.Background(), snapshot.RepoTrees{Repo: r}, "/", sn.Tree, func(p string, n *snapshot.Node) error {
		names = append(names, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(names, " ")
	if !strings.Contains(joined, "/keep") || !strings.Contains(joined, "keep2") || strings.Contains(joined, "skip") ||
		strings.Contains(joined, "nob/file") || strings.Contains(joined, "x.log") || strings.Contains(joined, "big") {
		t.Errorf("files in the snapshot: %v", names)
	}

	// a failing pre-hook: failed, no snapshot, the post-hook says so
	cfg.Jobs[0].PreHook = "exit 7"
	rep, err = run.Backup(context.Background(), cfg.Jobs[0])
	if err == nil || rep.Status != fleet.StatusFailed || !strings.Contains(rep.Error, "pre-hook failed") {
		t.Errorf("failing pre-hook: %v %+v", err, rep)
	}
	if b, _ := os.ReadFile(hookLog); !strings.HasSuffix(string(b), "post failed\n") {
		t.Errorf("hooks: %q", b)
	}
	// interrupted
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cfg.Jobs[0].PreHook = ""
	if rep, _ = run.Backup(ctx, cfg.Jobs[0]); rep.Status != fleet.StatusInterrupted {
		t.Errorf("cancelled: %+v", rep)
	}
}
