package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestEveryCommandHasExamples: the project's standard is `--help` with
// examples for every command and subcommand, groups included (`floe key`
// shows what its subcommands look like in use), and flags that say what
// they do.
func TestEveryCommandHasExamples(t *testing.T) {
	root := newRootCommand(&globals{})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden {
			return
		}
		path := c.CommandPath()
		if c.Short == "" {
			t.Errorf("%s has no one-line summary (Short)", path)
		}
		if c.HasParent() && strings.TrimSpace(c.Example) == "" {
			t.Errorf("%s has no Example", path)
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Hidden {
				return
			}
			if len(strings.TrimSpace(f.Usage)) < 8 {
				t.Errorf("%s --%s: description %q says too little", path, f.Name, f.Usage)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}
