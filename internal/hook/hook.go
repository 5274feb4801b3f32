// Package hook runs the commands around a backup (--pre-hook, --post-hook):
// flushing and freezing a database before, thawing it after.
package hook

import (
	"context"
	"fmt"
	"os"
	"os/exec"
)

// Run runs command with sh -c, with extra environment variables, passing
// its output through to ours. The error names the hook, not the command
// (it may contain a secret).
func Run(ctx context.Context, which, command string, env map[string]string) error {
	if command == "" {
		return nil
	}
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Stdout = os.Stderr // stdout belongs to floe's own (maybe JSON) output
	cmd.Stderr = os.Stderr
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s failed: %w", which, err)
	}
	return nil
}
