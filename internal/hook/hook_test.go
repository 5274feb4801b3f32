package hook

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	if err := Run(context.Background(), "pre-hook", "echo $X > "+out, map[string]string{"X": "hello"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(out); string(b) != "hello\n" {
		t.Errorf("hook wrote %q", b)
	}
	err := Run(context.Background(), "pre-hook", "exit 3 # secret-word", nil)
	if err == nil || !strings.Contains(err.Error(), "pre-hook failed") || strings.Contains(err.Error(), "secret-word") {
		t.Errorf("failing hook: %v", err)
	}
}

// TestCancelKillsGroup: a cancelled hook ends with what it started, at
// once, not when its children end.
func TestCancelKillsGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			// the shell creates the file before echo writes to it:
			// cancelled in between, the hook leaves no PID to look for
			if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	start := time.Now()
	err := Run(ctx, "pre-hook", "sleep 60 & echo $! > "+pidFile+"; wait", nil)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "pre-hook stopped") {
		t.Errorf("cancelled hook: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the cancelled hook took %s", d)
	}
	b, _ := os.ReadFile(pidFile)
	pid := strings.TrimSpace(string(b))
	time.Sleep(100 * time.Millisecond)
	if stat, err := os.ReadFile("/proc/" + pid + "/stat"); err == nil && !strings.Contains(string(stat), ") Z ") {
		t.Errorf("the hook's child %s outlived it: %s", pid, stat)
	}
}
