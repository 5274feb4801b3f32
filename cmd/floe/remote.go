package main

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/storage/remote"
	"github.com/floe-backup/floe/internal/ui"
)

// trustHint ends the message of a floe server trusted on first use.
const trustHint = "compare it with what `floe serve` printed, or pin it with --server-fingerprint"

// serverOptions are what a repository on a floe server needs: the token
// file, the pinned fingerprint, and where fingerprints trusted on first use
// are remembered.
func (g *globals) serverOptions() location.Options {
	o := location.Options{
		TokenFile:         g.tokenFile,
		ServerFingerprint: g.serverFingerprint,
		// what ssh and the host say on stderr comes through Warn: the
		// host's bytes, escaped as every host-supplied string is
		Warn:         func(s string) { os.Stderr.WriteString(ui.Line(s) + "\n") },
		TrustHint:    trustHint,
		Connections:  g.connections,
		SSHCommand:   g.sshCommand,
		RepoDirectIO: g.repoDirectIO,
	}
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		o.KnownServersFile = filepath.Join(d, "floe", "known_servers")
	} else if home, err := os.UserHomeDir(); err == nil {
		o.KnownServersFile = filepath.Join(home, ".config", "floe", "known_servers")
	}
	return o
}

func isServerRefusal(err error) bool {
	return errors.Is(err, remote.ErrForbidden) || errors.Is(err, remote.ErrUnauthorized) || errors.Is(err, remote.ErrQuota)
}
