package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// buildInfo is what `floe version` and `floe --version` report.
type buildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit,omitempty"`
	Modified  bool   `json:"modified,omitempty"` // built from a tree with uncommitted changes
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

// commit is set at build time with -ldflags "-X main.commit=..."
// (scripts/build.sh); without it, the one the go command stamped from a
// git checkout (-buildvcs), if any.
var commit string

// readBuildInfo combines the version and commit stamped with -ldflags -X
// (scripts/build.sh uses `git describe`) with what the Go toolchain
// recorded: the commit when built with -buildvcs, and the Go version.
func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		b.GoVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if b.Commit == "" {
					b.Commit = s.Value
				}
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	return b
}

func (b buildInfo) String() string {
	s := "floe " + b.Version
	if b.Commit != "" {
		s += " (commit " + b.Commit
		if b.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s + " compiled with " + b.GoVersion + " on " + b.Platform
}

func newVersionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print floe's version, commit, Go version and platform",
		Example: `  floe version
  floe version --json`,
		Args: cobra.NoArgs,
		// needs no repository: skip the root's resolving of one
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: func(cmd *cobra.Command, args []string) error {
			b := readBuildInfo()
			if g.json {
				return writeDocument(b)
			}
			fmt.Fprintln(os.Stdout, b)
			return nil
		},
	}
}
