package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage/limit"
	"github.com/floe-backup/floe/internal/storage/remote"
	"github.com/floe-backup/floe/internal/ui"
)

// globals are the flags every command shares.
type globals struct {
	repo            string
	passwordFile    string
	passwordCommand string
	keyFile         string
	cacheDir        string
	noCache         bool
	json            bool
	quiet           bool

	uploadKiB   int64
	downloadKiB int64

	// a repository on a floe server (https://)
	tokenFile         string
	serverFingerprint string
	connections       int
	sshCommand        string
	repoDirectIO      bool

	cpuProfile string
	memProfile string
	tracePath  string

	usingDefault bool // no repository given: the default local one
	limits       *connect.Limits
	exitCode     int
}

var errNoRepoGiven = connect.ErrNoRepoGiven

func (g *globals) addFlags(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVarP(&g.repo, "repo", "r", "", "repository location: a directory, s3:https://HOST/BUCKET[/PREFIX], https://HOST:PORT/REPO (a floe server) or ssh://[USER@]HOST[:PORT]/PATH (env FLOE_REPOSITORY; default: the local default repository)")
	f.StringVar(&g.passwordFile, "password-file", "", "read the repository password from this file (env FLOE_PASSWORD_FILE)")
	f.StringVar(&g.passwordCommand, "password-command", "", "run this shell command to get the password (env FLOE_PASSWORD_COMMAND)")
	f.StringVar(&g.keyFile, "key-file", "", "open the repository with this key file (env FLOE_KEY_FILE)")
	f.StringVar(&g.cacheDir, "cache-dir", "", "local cache directory (env FLOE_CACHE_DIR; default $XDG_CACHE_HOME/floe)")
	f.BoolVar(&g.noCache, "no-cache", false, "do not use the local cache")
	f.BoolVar(&g.json, "json", false, "print JSON for scripts instead of text")
	f.BoolVarP(&g.quiet, "quiet", "q", false, "print only errors")
	// for developers: pprof profiles (see bench/README.md)
	f.StringVar(&g.cpuProfile, "cpu-profile", "", "write a CPU profile to this file")
	f.StringVar(&g.memProfile, "mem-profile", "", "write a heap profile to this file at exit")
	_ = f.MarkHidden("cpu-profile")
	f.StringVar(&g.tracePath, "trace", "", "write a runtime execution trace (go tool trace) to this file")
	_ = f.MarkHidden("mem-profile")
	_ = f.MarkHidden("trace")
	// Bandwidth limits apply to every command and every repository it
	// opens (copy: both): all saves share one upload limit, all loads one
	// download limit.
	f.Int64Var(&g.uploadKiB, "limit-upload", 0, "limit uploads (bytes saved to repositories) to this many `KiB/s`; 0: no limit")
	f.Int64Var(&g.downloadKiB, "limit-download", 0, "limit downloads (bytes loaded from repositories) to this many `KiB/s`; 0: no limit")
	f.StringVar(&g.tokenFile, "token-file", "", "read the floe server token from this `file` (env FLOE_TOKEN_FILE)")
	f.IntVar(&g.connections, "connections", 0, "open `N` connections to a floe server (https:// or ssh://) and spread requests over them; default 2")
	f.StringVar(&g.sshCommand, "ssh-command", "", "the ssh `command` and options for ssh:// locations (env FLOE_SSH_COMMAND; default ssh)")
	f.BoolVar(&g.repoDirectIO, "repo-direct-io", false, "write and read a local repository's packs around the page cache, with O_DIRECT on ext4, xfs, btrfs and f2fs, so that a backup does not push out what the host caches (env FLOE_REPO_DIRECT_IO=1)")
	f.StringVar(&g.serverFingerprint, "server-fingerprint", "", "accept only the floe server certificate with this `sha256:HEX` fingerprint (env FLOE_SERVER_FINGERPRINT)")
}

func envDefault(v *string, name string) {
	if *v == "" {
		*v = os.Getenv(name)
	}
}

func (g *globals) resolve() error {
	envDefault(&g.repo, "FLOE_REPOSITORY")
	envDefault(&g.passwordFile, "FLOE_PASSWORD_FILE")
	envDefault(&g.passwordCommand, "FLOE_PASSWORD_COMMAND")
	envDefault(&g.keyFile, "FLOE_KEY_FILE")
	envDefault(&g.cacheDir, "FLOE_CACHE_DIR")
	envDefault(&g.tokenFile, "FLOE_TOKEN_FILE")
	envDefault(&g.serverFingerprint, "FLOE_SERVER_FINGERPRINT")
	envDefault(&g.sshCommand, "FLOE_SSH_COMMAND")
	if os.Getenv("FLOE_REPO_DIRECT_IO") == "1" {
		g.repoDirectIO = true
	}
	if g.connections < 0 || g.connections > remote.MaxConnections {
		return usageError{fmt.Errorf("--connections must be 1 to %d", remote.MaxConnections)}
	}
	if g.uploadKiB < 0 || g.downloadKiB < 0 {
		return usageError{fmt.Errorf("--limit-upload and --limit-download take KiB/s, 0 or more")}
	}
	g.limits = connect.NewLimits(g.uploadKiB<<10, g.downloadKiB<<10)
	if g.repo == "" {
		dir, err := connect.DefaultRepository()
		if err != nil {
			return err
		}
		g.repo = dir
		g.usingDefault = true
	}
	return nil
}

func prompt(label string) ([]byte, error) {
	return promptNaming("--password-file, FLOE_PASSWORD_FILE, FLOE_PASSWORD_COMMAND or --key-file")(label)
}

// promptNaming is prompt for another repository than -r's (copy --to, an
// export, init's --copy-chunker-params-from): without a terminal it names
// that repository's credential flags, not -r's, which would not help.
func promptNaming(flags string) func(label string) ([]byte, error) {
	return func(label string) ([]byte, error) {
		return promptTTY(label, flags)
	}
}

func promptTTY(label, flags string) ([]byte, error) {
	tty := os.Stdin
	if !term.IsTerminal(int(tty.Fd())) {
		return nil, errors.New("no password given and standard input is not a terminal: use " + flags)
	}
	fmt.Fprint(os.Stderr, label)
	pw, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return nil, fmt.Errorf("read password: %w", err)
	}
	if len(pw) == 0 {
		return nil, errors.New("empty password")
	}
	return pw, nil
}

// newPassword asks twice (or reads a file) for a password to create a key.
func newPassword(ctx context.Context, file string) ([]byte, error) {
	return connect.NewPassword(file, prompt)
}

// target is the repository of the global flags.
func (g *globals) target() connect.Target {
	t := g.otherTarget(g.repo, g.passwordFile, g.passwordCommand, g.keyFile)
	t.Default = g.usingDefault
	return t
}

// otherTarget is another repository (copy --to, init
// --copy-chunker-params-from, an export), opened with the global limits.
func (g *globals) otherTarget(loc, passwordFile, passwordCommand, keyFile string) connect.Target {
	return connect.Target{Location: loc, PasswordFile: passwordFile, PasswordCommand: passwordCommand,
		KeyFile: keyFile, Prompt: prompt, CacheDir: g.cacheDir, NoCache: g.noCache, Limits: g.limits,
		Server: g.serverOptions(), Warn: func(msg string) { g.warn("%s", msg) }, Hint: hintFor}
}

// openRepo opens the repository; with loadIndex, also its index.
func (g *globals) openRepo(ctx context.Context, loadIndex bool) (*repo.Repository, error) {
	return connect.Open(ctx, g.target(), connect.Options{LoadIndex: loadIndex})
}

func (g *globals) warn(format string, args ...any) {
	fmt.Fprintln(os.Stderr, ui.Line(fmt.Sprintf(format, args...)))
}

// say prints a line for people unless --quiet or --json.
func (g *globals) say(format string, args ...any) {
	if g.quiet || g.json {
		return
	}
	fmt.Fprintln(os.Stdout, ui.Sanitize(fmt.Sprintf(format, args...)))
}

func (g *globals) status() *ui.Status { return ui.NewStatus(os.Stderr, !g.quiet && !g.json) }

// cmdPrefix is how to call floe again with the same repository, for hints.
func (g *globals) cmdPrefix() string {
	if g.usingDefault || os.Getenv("FLOE_REPOSITORY") == g.repo {
		return "floe"
	}
	return "floe -r " + g.repo
}

// fetchedCounter returns a function that tells how many bytes a restore
// reporting to m fetched since now, as they arrive, or -1 while that is
// not known: restored bytes move only as whole blobs (streamed from S3 or
// a floe server) or whole ranges (4 MiB, through a download limit) are
// written, so on a slow link a restore sat at "0 B/s". The loaders count
// streamed bytes read by read (repo.CountFetched); a download limit, which
// hides streaming, counts what it lets through part by part.
func (g *globals) fetchedCounter(m *ui.Meter) func() int64 {
	var lim *limit.Limiter
	if g.limits != nil {
		lim = g.limits.Download
	}
	passed := passedSince(lim)
	return func() int64 {
		n := max(passed(), m.Counter(repo.CountFetched))
		if n == 0 && lim == nil {
			return -1 // a local repository: nothing to show
		}
		return n
	}
}

// uploadCounter is downloadCounter for the upload limit: a pack is paid
// for part by part before it is stored, so this moves while the count of
// stored packs moves only a pack at a time.
func (g *globals) uploadCounter() func() int64 {
	if g.limits == nil {
		return passedSince(nil)
	}
	return passedSince(g.limits.Upload)
}

func passedSince(lim *limit.Limiter) func() int64 {
	if lim == nil {
		return func() int64 { return -1 }
	}
	base := lim.Passed()
	return func() int64 { return lim.Passed() - base }
}
