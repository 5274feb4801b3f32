package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// stdinCommand is a command whose standard output is backed up (restic's
// --stdin-from-command). Its exit status is checked when its output ends,
// before the snapshot is saved: a command that fails (a pg_dump that lost
// its connection) fails the backup instead of leaving a truncated dump
// that looks like a good one.
type stdinCommand struct {
	cmd  *exec.Cmd
	out  io.ReadCloser
	name string // the program, never its arguments (they may hold secrets)

	once    sync.Once
	waitErr error
}

func startCommand(ctx context.Context, args []string) (*stdinCommand, error) {
	if len(args) == 0 || args[0] == "" {
		return nil, errors.New("stdin-from-command: no command given")
	}
	c := &stdinCommand{cmd: exec.CommandContext(ctx, args[0], args[1:]...), name: filepath.Base(args[0])}
	c.cmd.Stderr = os.Stderr // its messages are for the user; stdout is the data
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("command %s: %w", c.name, err)
	}
	c.out = out
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start command %s: %w", c.name, err)
	}
	return c, nil
}

// Read passes the command's output on; at its end it waits for the
// command, and a failed command turns the end into an error.
func (c *stdinCommand) Read(p []byte) (int, error) {
	n, err := c.out.Read(p)
	if err == io.EOF {
		if werr := c.wait(); werr != nil {
			return n, werr
		}
	}
	return n, err
}

func (c *stdinCommand) wait() error {
	c.once.Do(func() {
		if err := c.cmd.Wait(); err != nil {
			c.waitErr = fmt.Errorf("command %s failed: %w", c.name, err)
		}
	})
	return c.waitErr
}

// stop ends the command if the backup stopped before its output ended.
func (c *stdinCommand) stop() {
	c.once.Do(func() {
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
		c.waitErr = errors.New("stopped")
	})
}
