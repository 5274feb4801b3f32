package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/floe-backup/floe/internal/cache"
	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
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

	cpuProfile string
	memProfile string

	usingDefault bool // no repository given: the default local one
	exitCode     int
}

var errNoRepoGiven = errors.New("no repository given (-r/--repo or FLOE_REPOSITORY) and no default repository yet")

func (g *globals) addFlags(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVarP(&g.repo, "repo", "r", "", "repository location (env FLOE_REPOSITORY; default: the local default repository)")
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
	_ = f.MarkHidden("mem-profile")
	for _, add := range extraGlobalFlags {
		add(f)
	}
}

// extraGlobalFlags and backendWrappers let features that apply to every
// command (bandwidth limits, ...) live in their own file.
var (
	extraGlobalFlags []func(*pflag.FlagSet)
	backendWrappers  []func(storage.Backend) (storage.Backend, error)
)

// openBackend opens the storage at loc with the wrappers applied.
func openBackend(loc string) (storage.Backend, error) {
	be, err := location.Open(loc)
	if err != nil {
		return nil, err
	}
	return wrapBackend(be)
}

func wrapBackend(be storage.Backend) (storage.Backend, error) {
	for _, wrap := range backendWrappers {
		w, err := wrap(be)
		if err != nil {
			be.Close()
			return nil, err
		}
		be = w
	}
	return be, nil
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
	if g.repo == "" {
		dir, err := defaultRepoDir()
		if err != nil {
			return err
		}
		g.repo = dir
		g.usingDefault = true
	}
	return nil
}

func xdgDir(env, fallback string) (string, error) {
	if d := os.Getenv(env); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cannot find a home directory for the default repository (set %s or use -r): %w", env, err)
	}
	return filepath.Join(home, fallback), nil
}

func defaultRepoDir() (string, error) {
	d, err := xdgDir("XDG_DATA_HOME", ".local/share")
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "floe", "repository"), nil
}

func defaultKeyFile() (string, error) {
	d, err := xdgDir("XDG_CONFIG_HOME", ".config")
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "floe", "repository.key"), nil
}

// kdfParams returns cheap argon2 parameters when FLOE_INSECURE_TEST_KDF=1
// (the test suite creates hundreds of keys); nil means the secure default.
func kdfParams() *crypto.KDFParams {
	if os.Getenv("FLOE_INSECURE_TEST_KDF") != "1" {
		return nil
	}
	p := crypto.DefaultKDFParams()
	p.Time, p.MemoryKiB, p.Threads = 1, 8*1024, 1
	return &p
}

// readPasswordFile returns the first line of a password file.
func readPasswordFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read password file: %w", err)
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) == 0 {
		return nil, fmt.Errorf("password file %s is empty", path)
	}
	return line, nil
}

func runPasswordCommand(ctx context.Context, command string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		// the command itself is not echoed: it may contain a secret
		return nil, fmt.Errorf("password command failed: %w", err)
	}
	line, _, _ := bytes.Cut(out, []byte("\n"))
	if len(line) == 0 {
		return nil, errors.New("password command printed nothing")
	}
	return line, nil
}

func prompt(label string) ([]byte, error) {
	tty := os.Stdin
	if !term.IsTerminal(int(tty.Fd())) {
		return nil, errors.New("no password given and standard input is not a terminal: use --password-file, FLOE_PASSWORD_FILE, FLOE_PASSWORD_COMMAND or --key-file")
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
	if file != "" {
		return readPasswordFile(file)
	}
	pw, err := prompt("new password: ")
	if err != nil {
		return nil, err
	}
	again, err := prompt("repeat password: ")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(pw, again) {
		return nil, errors.New("the passwords do not match")
	}
	return pw, nil
}

// credential finds what opens the repository.
func (g *globals) credential(ctx context.Context) (repo.Credential, error) {
	switch {
	case g.keyFile != "":
		kf, err := repo.ReadKeyFile(g.keyFile)
		if err != nil {
			return repo.Credential{}, err
		}
		return repo.Credential{KeyFile: kf}, nil
	case g.passwordFile != "":
		pw, err := readPasswordFile(g.passwordFile)
		return repo.Credential{Password: pw}, err
	case g.passwordCommand != "":
		pw, err := runPasswordCommand(ctx, g.passwordCommand)
		return repo.Credential{Password: pw}, err
	}
	if g.usingDefault {
		if path, err := defaultKeyFile(); err == nil {
			if _, err := os.Stat(path); err == nil {
				kf, err := repo.ReadKeyFile(path)
				if err != nil {
					return repo.Credential{}, err
				}
				return repo.Credential{KeyFile: kf}, nil
			}
		}
	}
	pw, err := prompt("password for " + g.repo + ": ")
	return repo.Credential{Password: pw}, err
}

// openRepo opens the repository; with loadIndex, also its index.
func (g *globals) openRepo(ctx context.Context, loadIndex bool) (*repo.Repository, error) {
	be, err := openBackend(g.repo)
	if err != nil {
		missing := errors.Is(err, os.ErrNotExist) || errors.Is(err, storage.ErrNotExist)
		if g.usingDefault && missing {
			return nil, errNoRepoGiven
		}
		if missing {
			return nil, fmt.Errorf("%v: %w", err, repo.ErrNoRepository)
		}
		return nil, err
	}
	cred, err := g.credential(ctx)
	if err != nil {
		be.Close()
		return nil, err
	}
	r, err := repo.Open(ctx, be, cred, repo.OpenOptions{KDF: kdfParams()})
	if err != nil {
		be.Close()
		return nil, err
	}
	if loadIndex {
		if err := r.LoadIndex(ctx); err != nil {
			var ile *repo.IndexLoadError
			if !errors.As(err, &ile) {
				r.Close()
				return nil, err
			}
			g.warn("warning: %v; run `floe check`", err)
		}
	}
	return r, nil
}

// openCache opens the local cache of r, or returns nil (caching is an
// optimisation: problems are warnings).
func (g *globals) openCache(r *repo.Repository) *cache.Cache {
	if g.noCache {
		return nil
	}
	base := g.cacheDir
	if base == "" {
		var err error
		if base, err = cache.DefaultDir(); err != nil {
			g.warn("warning: no cache: %v", err)
			return nil
		}
	}
	c, err := cache.Open(base, r.Config().ID)
	if err != nil {
		g.warn("warning: no cache: %v", err)
		return nil
	}
	return c
}

func (g *globals) warn(format string, args ...any) {
	fmt.Fprintln(os.Stderr, ui.Sanitize(fmt.Sprintf(format, args...)))
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
