// Package hook runs the commands around a backup (--pre-hook, --post-hook):
// flushing and freezing a database before, thawing it after.
package hook

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// killDelay is how long a hook has to end after SIGTERM when its context
// ends, before it is killed.
const killDelay = 10 * time.Second

// Run runs command with sh -c, with extra environment variables, passing
// its output through to ours. The error names the hook, not the command
// (it may contain a secret). When ctx ends, the hook and everything it
// started get SIGTERM (it runs in a process group of its own, so that a
// `sleep` or a dump the shell started does not outlive it and hold our
// output open), and SIGKILL after killDelay.
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
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM); err != nil {
			return cmd.Process.Kill()
		}
		return nil
	}
	cmd.WaitDelay = killDelay
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s stopped: %w", which, ctx.Err())
		}
		return fmt.Errorf("%s failed: %w", which, err)
	}
	return nil
}
