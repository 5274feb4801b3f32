package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/ui"
)

type serveFlags struct {
	root, stateDir, storage string
}

func (f *serveFlags) state() (string, error) {
	switch {
	case f.stateDir != "":
		return f.stateDir, nil
	case f.storage != "":
		return "", usageError{errors.New("with --storage, give --state-dir DIR (tokens, quotas, audit log, certificate)")}
	case f.root != "":
		return server.StateDirFor(f.root), nil
	}
	return "", usageError{errors.New("give --root (or --state-dir)")}
}

// prefixRepos serves the repositories that are prefixes of --storage.
func (f *serveFlags) prefixRepos(ctx context.Context) (*server.PrefixRepos, error) {
	if f.root != "" {
		return nil, usageError{errors.New("give --root DIR or --storage s3:..., not both")}
	}
	if !strings.HasPrefix(f.storage, "s3:") {
		return nil, usageError{errors.New("--storage takes an S3 location: s3:https://HOST[:PORT]/BUCKET[/PREFIX]")}
	}
	open, where, err := location.S3Prefixes(ctx, f.storage)
	if err != nil {
		return nil, err
	}
	return server.NewPrefixRepos(where, open), nil
}

// makeState returns the state directory, made if missing: for the
// commands that store the first token or quota of a new server.
func (f *serveFlags) makeState() (string, error) {
	state, err := f.state()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return "", fmt.Errorf("state directory: %w", err)
	}
	return state, nil
}

// tokenStore opens the server's token store; create makes the state
// directory first.
func (f *serveFlags) tokenStore(create bool) (*server.TokenStore, error) {
	state, err := f.state()
	if create {
		state, err = f.makeState()
	}
	if err != nil {
		return nil, err
	}
	return server.OpenTokenStore(state)
}

func newServeCommand(g *globals) *cobra.Command {
	sf := &serveFlags{}
	cfg := server.Config{}
	var maxObject string
	var stdio bool
	var stdioRole, stdioHost string
	var ff *serveFleetFlags
	c := &cobra.Command{
		Use:   "serve --root DIR",
		Short: "Serve repositories to hosts over HTTPS (append-only credentials)",
		Long: `Serve the repositories in the subdirectories of --root over HTTP/2 and TLS.
Hosts reach them as -r https://HOST:PORT/REPO with a token (--token-file).
With --storage s3:https://HOST/BUCKET[/PREFIX] (and --state-dir) the
repositories are PREFIX/REPO of a bucket instead; several servers can stand
in front of one bucket (give them one state directory).

The server holds no keys: it moves encrypted objects. It checks that every
uploaded object is named by the BLAKE3-256 of its bytes and never
overwrites one, so a backup token can add backups but not change or delete
anything. It hashes every blob of an uploaded pack against its ID and every
entry of an uploaded index file against the stored pack it names, and
refuses forgeries (422), so that hosts may deduplicate against each other's
data without reading it back. Every write, delete and refused request goes to the audit log
(JSON lines, STATE/audit.log).

Without --tls-cert/--tls-key a self-signed certificate is made on first
start in the state directory (default ROOT/.floe-server); its fingerprint is
printed: give it to clients (--server-fingerprint or FLOE_SERVER_FINGERPRINT),
or they trust it on first use and remember it in ~/.config/floe/known_servers.

Roles (combine with commas): backup (list, read config/keys/index/gc marks,
add packs, index files and snapshots), restore (read everything), admin
(everything: init, key management, forget, prune), viewer (the fleet's
state only: floe fleet, the dashboard).

The fleet: hosts enrolled with ` + "`floe serve host add`" + ` ask for a lease before
each backup (--max-concurrent-backups), report their runs, and show in
` + "`floe fleet status`" + ` and on the dashboard at https://HOST:PORT/ui/ (log in with
a viewer or admin token). Alerts go to --alert-webhook and --alert-smtp.

With --stdio, the server speaks the same protocol on standard input and
output for one repository (--root is its directory) and one credential
(--role): sshd starts it for ssh://HOST/PATH locations. Put it in a forced
command in authorized_keys, so that the key can do only that:
  command="floe serve --stdio --root /srv/floe/web1 --role backup --host web1",restrict ssh-ed25519 AAAA...`,
		Example: `  floe serve --root /srv/floe --listen :8443
  floe serve --storage s3:https://s3.example.net/backups/floe --state-dir /var/lib/floe-serve --listen :8443
  floe serve --root /srv/floe --listen :8443 --metrics-listen 127.0.0.1:9464
  floe serve token add --root /srv/floe --repo fleet --host admin --role admin > admin.token
  floe serve token add --root /srv/floe --repo fleet --host web1 --role backup > web1.token
  floe -r https://backup.example:8443/fleet --token-file admin.token init
  floe -r https://backup.example:8443/fleet --token-file web1.token --key-file web1.key backup /etc
  floe serve token list --root /srv/floe
  floe serve token revoke --root /srv/floe 3f2a9c1e0b7d4a55`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := server.ParseSize(maxObject)
			if err != nil {
				return usageError{fmt.Errorf("--max-object-size: %w", err)}
			}
			if n < 1<<20 {
				return usageError{errors.New("--max-object-size must be at least 1MiB (packs are 1 MiB or more)")}
			}
			// every pack's blobs and every index entry are checked by
			// hashing, so that clients may deduplicate against what this
			// server holds without reading it back
			cfg.Verifier = server.NewFormatVerifier()
			if stdio {
				if sf.root == "" || sf.storage != "" {
					return usageError{errors.New("serve --stdio needs --root DIR (the repository's directory), not --storage")}
				}
				for _, name := range []string{"listen", "tls-cert", "tls-key", "tls-name", "metrics-listen"} {
					if cmd.Flags().Changed(name) {
						return usageError{fmt.Errorf("--%s does not go with --stdio (ssh carries the connection)", name)}
					}
				}
				// without a forced command the client may ask for
				// anything its login could do anyway
				role := server.RoleAdmin
				if stdioRole != "" {
					if role, err = server.ParseRoles(stdioRole); err != nil {
						return usageError{err}
					}
				}
				return server.RunStdio(cmd.Context(), server.StdioConfig{Root: sf.root, StateDir: sf.stateDir, AuditLog: cfg.AuditLog,
					Role: role, Host: stdioHost, Remote: server.SSHClientAddr(os.Getenv("SSH_CLIENT")), Verifier: cfg.Verifier,
					MaxObjectSize: n, MaxUploadsPerToken: cfg.MaxUploadsPerToken, BufferedIO: cfg.BufferedIO, In: os.Stdin, Out: os.Stdout})
			}
			if stdioRole != "" || stdioHost != "" {
				return usageError{errors.New("--role and --host go with --stdio (tokens carry them otherwise)")}
			}
			cfg.Root, cfg.StateDir = sf.root, sf.stateDir
			served := cfg.Root
			switch {
			case sf.storage != "":
				if _, err := sf.state(); err != nil {
					return err
				}
				if cfg.BufferedIO {
					return usageError{errors.New("--buffered-io is for --root (a directory)")}
				}
				if cfg.Storage, err = sf.prefixRepos(cmd.Context()); err != nil {
					return err
				}
				served = cfg.Storage.Where()
			case cfg.Root == "":
				return usageError{errors.New("serve needs --root DIR (one subdirectory per repository) or --storage s3:...")}
			default:
				served, _ = filepath.Abs(cfg.Root)
			}
			if err := ff.apply(&cfg); err != nil {
				return err
			}
			cfg.MaxObjectSize = n
			cfg.MetricsReady = func(addr string) { g.say("metrics on http://%s/metrics", addr) }
			cfg.Ready = func(addr, fp string, created bool) {
				if created {
					g.say("created a self-signed TLS certificate")
				}
				g.say("serving repositories in %s on https://%s", served, addr)
				g.say("certificate fingerprint: %s", fp)
			}
			return server.Run(cmd.Context(), cfg)
		},
	}
	f := c.Flags()
	c.PersistentFlags().StringVar(&sf.root, "root", "", "directory holding one subdirectory per repository")
	c.PersistentFlags().StringVar(&sf.stateDir, "state-dir", "", "tokens, audit log and certificate (default ROOT/.floe-server)")
	c.PersistentFlags().StringVar(&sf.storage, "storage", "", "instead of --root: an S3 `location` s3:https://HOST[:PORT]/BUCKET[/PREFIX] whose PREFIX/REPO are the repositories (with --state-dir; several servers may share it)")
	f.StringVar(&cfg.Listen, "listen", ":8443", "`address` to listen on (host:port)")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "TLS certificate `file` (PEM; default: a self-signed one in the state directory)")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "TLS private key `file` (PEM)")
	f.StringSliceVar(&cfg.TLSNames, "tls-name", nil, "extra host `name` or IP of the self-signed certificate (repeatable)")
	f.StringVar(&cfg.AuditLog, "audit-log", "", "audit log `file` (default STATE/audit.log)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "", "serve Prometheus metrics over plain HTTP at /metrics on this `host:port` (keep it private)")
	f.StringVar(&maxObject, "max-object-size", "1088MiB", "largest upload accepted (`size`; a pack is at most 1 GiB plus a blob); larger ones are refused before they are read")
	f.BoolVar(&stdio, "stdio", false, "serve one repository (--root is its directory) on standard input and output, for ssh (forced command)")
	f.StringVar(&stdioRole, "role", "", "with --stdio: the `roles` of the connection (backup, restore, admin; default admin)")
	f.StringVar(&stdioHost, "host", "", "with --stdio: the host `name` the audit log and upload records show (default ssh:ROLE)")
	f.IntVar(&cfg.MaxUploadsPerToken, "max-uploads", server.DefaultMaxUploads, "concurrent uploads per token")
	f.BoolVar(&cfg.BufferedIO, "buffered-io", false, "write and read packs through the page cache (default: around it, with O_DIRECT where the file system allows)")
	ff = addServeFleetFlags(c)
	c.AddCommand(newServeHostCommand(g, sf), newServeAlertCommand(g, sf))
	c.AddCommand(newServeTokenCommand(g, sf), newServeFingerprintCommand(g, sf),
		newServeQuotaCommand(g, sf), newServeUsageCommand(g, sf))
	return c
}

func newServeFingerprintCommand(g *globals, sf *serveFlags) *cobra.Command {
	var cert, key string
	c := &cobra.Command{
		Use:     "fingerprint",
		Short:   "Print the fingerprint of the server's certificate (for clients to pin)",
		Example: `  floe serve fingerprint --root /srv/floe`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			state, err := sf.state()
			if err != nil {
				return err
			}
			if cert == "" {
				if _, err := os.Stat(state + "/" + server.CertFile); err != nil {
					return fmt.Errorf("no certificate in %s yet: start `floe serve` once", state)
				}
			}
			_, fp, _, err := server.LoadCertificate(state, cert, key, nil)
			if err != nil {
				return err
			}
			if g.json {
				return writeDocument(map[string]any{"fingerprint": fp})
			}
			fmt.Println(fp)
			return nil
		},
	}
	c.Flags().StringVar(&cert, "tls-cert", "", "certificate `file` (default: the self-signed one)")
	c.Flags().StringVar(&key, "tls-key", "", "key `file`")
	return c
}

func newServeTokenCommand(g *globals, sf *serveFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "token",
		Short: "Manage the credentials of hosts (add, list, revoke, quota)",
		Example: `  floe serve token add --root /srv/floe --repo fleet --host web1 --role backup > web1.token
  floe serve token list --root /srv/floe
  floe serve token revoke --root /srv/floe 3f2a9c1e0b7d4a55`,
	}
	var repoName, host, roles, quota, output string
	add := &cobra.Command{
		Use:   "add --repo REPO --host HOST --role ROLES",
		Short: "Create a token; it is printed once and only its hash is kept",
		Long: `Create a token for one host on one repository. The token is printed once on
standard output, or written to a new file of mode 0600 with --output (a shell
redirect makes the file with the umask's mode, often readable by everyone);
the server keeps only its SHA-256. Store it on the host in a file of mode 0600
and pass it with --token-file or FLOE_TOKEN_FILE.

Roles, combinable with commas: backup, restore, admin.`,
		Example: `  floe serve token add --root /srv/floe --repo fleet --host web1 --role backup --output web1.token
  floe serve token add --root /srv/floe --repo fleet --host ops --role backup,restore
  floe serve token add --root /srv/floe --repo fleet --host web2 --role backup --quota 50GiB`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := sf.state(); err != nil {
				return err
			}
			if repoName == "" || host == "" || roles == "" {
				return usageError{errors.New("token add needs --repo, --host and --role")}
			}
			r, err := server.ParseRoles(roles)
			if err != nil {
				return usageError{err}
			}
			var q int64
			if quota != "" {
				if q, err = server.ParseSize(quota); err != nil {
					return usageError{err}
				}
			}
			ts, err := sf.tokenStore(true)
			if err != nil {
				return err
			}
			tok, t, err := ts.AddWithQuota(repoName, host, r, q)
			if err != nil {
				return err
			}
			if output != "" {
				if err := server.WriteTokenFile(output, tok); err != nil {
					// the token is made but nobody has it: revoke it
					_ = ts.Revoke(t.ID)
					return err
				}
				if g.json {
					return writeDocument(map[string]any{"id": t.ID, "repo": t.Repo, "host": t.Host, "roles": t.Roles, "token_file": output})
				}
				if !g.quiet {
					fmt.Fprintf(os.Stderr, "token %s for host %s on repository %s, roles %s: written to %s (mode 0600); copy it to the host (--token-file)\n",
						t.ID, ui.Sanitize(t.Host), t.Repo, t.Roles, ui.Sanitize(output))
				}
				return nil
			}
			if g.json {
				return writeDocument(map[string]any{"id": t.ID, "repo": t.Repo, "host": t.Host, "roles": t.Roles, "token": tok})
			}
			fmt.Println(tok)
			if !g.quiet {
				fmt.Fprintf(os.Stderr, "token %s for host %s on repository %s, roles %s; shown only this once: store it in a file of mode 0600 on the host (--token-file)\n",
					t.ID, ui.Sanitize(t.Host), t.Repo, t.Roles)
			}
			return nil
		},
	}
	add.Flags().StringVar(&repoName, "repo", "", "repository `name` (subdirectory of --root)")
	add.Flags().StringVar(&host, "host", "", "host `name` the token is for (shown in the audit log)")
	add.Flags().StringVar(&roles, "role", "", "`roles`: backup, restore, admin (comma-separated)")
	add.Flags().StringVar(&output, "output", "", "write the token to this new `file` (mode 0600) instead of standard output")
	add.Flags().StringVar(&quota, "quota", "", "most bytes of new objects this token may store, each counted in whole 4 KiB blocks (`size`: 500MiB, 20G, ...; default none)")

	list := &cobra.Command{
		Use:     "list",
		Short:   "List tokens (ids, never the tokens)",
		Example: `  floe serve token list --root /srv/floe`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ts, err := sf.tokenStore(false)
			if err != nil {
				return err
			}
			list, err := ts.List()
			if err != nil {
				return err
			}
			if g.json {
				out := []map[string]any{}
				for _, t := range list {
					out = append(out, map[string]any{"id": t.ID, "repo": t.Repo, "host": t.Host, "roles": t.Roles, "quota": t.Quota, "created": t.Created})
				}
				return writeDocument(map[string]any{"tokens": out})
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tREPO\tHOST\tROLES\tQUOTA\tCREATED")
			for _, t := range list {
				quota := "-"
				if t.Quota > 0 {
					quota = server.FormatSize(t.Quota)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Repo, ui.Sanitize(t.Host), t.Roles, quota, t.Created.Format("2006-01-02 15:04:05"))
			}
			return tw.Flush()
		},
	}
	revoke := &cobra.Command{
		Use:     "revoke ID...",
		Short:   "Revoke tokens; a running server refuses them at once",
		Example: `  floe serve token revoke --root /srv/floe 3f2a9c1e0b7d4a55`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ts, err := sf.tokenStore(false)
			if err != nil {
				return err
			}
			revoked := []string{}
			for _, id := range args {
				if err := ts.Revoke(strings.TrimSpace(id)); err != nil {
					return err
				}
				revoked = append(revoked, strings.TrimSpace(id))
				g.say("revoked token %s", id)
			}
			if g.json {
				return writeDocument(map[string]any{"revoked": revoked})
			}
			return nil
		},
	}
	setQuota := &cobra.Command{
		Use:   "quota ID SIZE",
		Short: "Set a token's quota (0: none); a running server applies it at once",
		Long: `Set the most bytes of objects a token may have stored (each object counted in
whole 4 KiB blocks), 0 for none. What it stored counts until the objects are
removed (prune, forget): raise the quota, or prune, when a host is refused with
"quota exceeded".`,
		Example: `  floe serve token quota --root /srv/floe 3f2a9c1e0b7d4a55 100GiB
  floe serve token quota --root /srv/floe 3f2a9c1e0b7d4a55 0`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := server.ParseSize(args[1])
			if err != nil {
				return usageError{err}
			}
			ts, err := sf.tokenStore(false)
			if err != nil {
				return err
			}
			t, err := ts.SetQuota(strings.TrimSpace(args[0]), n)
			if err != nil {
				return err
			}
			if g.json {
				return writeDocument(map[string]any{"id": t.ID, "repo": t.Repo, "host": t.Host, "quota": t.Quota})
			}
			if n == 0 {
				g.say("token %s (host %s): no quota", t.ID, ui.Sanitize(t.Host))
			} else {
				g.say("token %s (host %s): quota %s", t.ID, ui.Sanitize(t.Host), server.FormatSize(n))
			}
			return nil
		},
	}
	c.AddCommand(add, list, revoke, setQuota)
	return c
}

func newServeQuotaCommand(g *globals, sf *serveFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "quota REPO SIZE",
		Short: "Set the quota of a repository (0: none); a running server applies it at once",
		Long: `Set the most bytes a repository may hold. An upload that would exceed it is
refused before any byte is stored (HTTP 507; the client exits 14). Removing
objects (prune) frees quota. Token quotas are set with ` + "`token add --quota`" + `.`,
		Example: `  floe serve quota --root /srv/floe fleet 2TiB
  floe serve quota --root /srv/floe fleet 0`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := sf.state(); err != nil {
				return err
			}
			n, err := server.ParseSize(args[1])
			if err != nil {
				return usageError{err}
			}
			state, err := sf.makeState()
			if err != nil {
				return err
			}
			l, err := server.OpenLedger(state)
			if err != nil {
				return err
			}
			if err := l.SetRepoQuota(args[0], n); err != nil {
				return err
			}
			if g.json {
				return writeDocument(map[string]any{"repo": args[0], "quota": n})
			}
			if n == 0 {
				g.say("repository %s: no quota", args[0])
			} else {
				g.say("repository %s: quota %s", args[0], server.FormatSize(n))
			}
			return nil
		},
	}
}

func newServeUsageCommand(g *globals, sf *serveFlags) *cobra.Command {
	return &cobra.Command{
		Use:     "usage",
		Short:   "Show what each repository holds and each token stored, with quotas",
		Example: `  floe serve usage --root /srv/floe`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if sf.root == "" && sf.storage == "" {
				return usageError{errors.New("usage needs --root or --storage")}
			}
			state, err := sf.state()
			if err != nil {
				return err
			}
			var repos []server.RepoUsage
			var tokens []server.TokenUsageLine
			if sf.storage != "" {
				pr, perr := sf.prefixRepos(cmd.Context())
				if perr != nil {
					return perr
				}
				repos, tokens, err = server.UsageReportOf(cmd.Context(), pr, state)
			} else {
				repos, tokens, err = server.UsageReport(cmd.Context(), sf.root, state)
			}
			if err != nil {
				return err
			}
			if g.json {
				if repos == nil {
					repos = []server.RepoUsage{} // [] for scripts, not null
				}
				if tokens == nil {
					tokens = []server.TokenUsageLine{}
				}
				return writeDocument(map[string]any{"repositories": repos, "tokens": tokens})
			}
			quota := func(n int64) string {
				if n == 0 {
					return "-"
				}
				return server.FormatSize(n)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "REPOSITORY\tOBJECTS\tSTORED\tCOUNTED\tQUOTA")
			for _, r := range repos {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", r.Repo, r.Objects, server.FormatSize(r.Bytes), server.FormatSize(r.Counted), quota(r.Quota))
			}
			fmt.Fprintln(tw, "\nREPOSITORY\tHOST\tOBJECTS\tSTORED\tUPLOADED 24H\tUPLOADED 30D\tLAST WRITE")
			for _, r := range repos {
				for _, h := range r.Hosts {
					host, last := ui.Sanitize(h.Host), "-"
					if h.Host == "" {
						host = "(not recorded)"
					}
					if h.LastWrite != nil {
						last = h.LastWrite.UTC().Format("2006-01-02 15:04 UTC")
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Repo, host, h.Objects, server.FormatSize(h.Bytes),
						server.FormatSize(h.UploadedDay), server.FormatSize(h.UploadedMonth), last)
				}
			}
			fmt.Fprintln(tw, "\nTOKEN\tREPO\tHOST\tSTORED\tQUOTA")
			for _, t := range tokens {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Repo, ui.Sanitize(t.Host), server.FormatSize(t.Bytes), quota(t.Quota))
			}
			return tw.Flush()
		},
	}
}
