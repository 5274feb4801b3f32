package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/backup"
	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/devrestore"
	"github.com/floe-backup/floe/internal/dump"
	"github.com/floe-backup/floe/internal/fssnap"
	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/prune"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/server"
	"github.com/floe-backup/floe/internal/server/fleetsrv"
	"github.com/floe-backup/floe/internal/snapimage"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/remote"
	"github.com/floe-backup/floe/internal/transfer"
	"github.com/floe-backup/floe/internal/walk"
)

// Exit codes, documented in `floe --help` and README.md.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitUsage       = 2
	ExitPartial     = 3
	ExitChanges     = 4 // audit found changes
	ExitNoRepo      = 10
	ExitWrongKey    = 11
	ExitWriteOnly   = 12
	ExitDamage      = 13
	ExitRefused     = 14 // the floe server refused the token or its role
	ExitInterrupted = 130
)

type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCodeFor(err error) int {
	var ee *exitError
	var ue usageError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ue), errors.Is(err, connect.ErrCredentialWithoutRepo):
		return ExitUsage
	case strings.HasPrefix(err.Error(), "unknown command "):
		// cobra's error for `floe bogus`; it has no type to match
		return ExitUsage
	case errors.Is(err, repo.ErrWrongKey):
		return ExitWrongKey
	case errors.Is(err, repo.ErrWriteOnly):
		return ExitWriteOnly
	case errors.Is(err, repo.ErrNoRepository), errors.Is(err, errNoRepoGiven):
		return ExitNoRepo
	case isServerRefusal(err):
		return ExitRefused
	case errors.Is(err, remote.ErrFingerprint), errors.Is(err, remote.ErrSSH):
		return ExitNoRepo
	}
	return ExitError
}

// isUnreachable says that a server could not be reached at all: the
// connection was refused or timed out, or its name does not resolve.
func isUnreachable(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// explainUnreachable makes a repository's server (floe serve, S3) that
// does not answer "repository unreachable" (exit 10, as documented) with
// what to check, instead of a plain error. Not for `floe serve`'s own
// commands, whose connections (SMTP, webhooks) are no repository, nor
// where the command chose its exit code already (fleet: Nagios codes).
func explainUnreachable(cmd *cobra.Command, err error) error {
	var ee *exitError
	if !isUnreachable(err) || errors.As(err, &ee) {
		return err
	}
	if cmd != nil && strings.HasPrefix(cmd.CommandPath(), cmd.Root().Name()+" serve") {
		return err
	}
	return &exitError{ExitNoRepo, hintedError{err, "nothing answered: check the host and port of -r/FLOE_REPOSITORY, that `floe serve` (or the S3 service) runs there, and the network (DNS, firewall)"}}
}

// explainCredentialFile gives an error about a file that --token-file,
// --key-file or --password-file (or their variables) name a hint that
// names the flag, and exit code 1: a missing token file would otherwise
// read as a missing repository (exit 10, "create one with floe init").
func (g *globals) explainCredentialFile(err error) error {
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Path == "" {
		return err
	}
	var hint string
	switch pe.Path {
	case g.tokenFile:
		hint = "check --token-file or FLOE_TOKEN_FILE: it names the file holding this host's token for the floe server (`floe serve token add` on the server makes one)"
	case g.keyFile:
		hint = "check --key-file or FLOE_KEY_FILE (`floe key add --new-key-file FILE` makes a key file)"
	case g.passwordFile:
		hint = "check --password-file or FLOE_PASSWORD_FILE"
	default:
		return err
	}
	return &exitError{ExitError, hintedError{err, hint}}
}

// neededRole is the role on a floe server that each command needs, for
// the commands whose needs are plain (docs/PROTOCOL.md, "Roles"): admin
// may do everything, restore may read everything, backup may add.
var neededRole = map[string]string{
	"backup":  "backup (or admin)",
	"restore": "restore (or admin)", "snapshots": "restore (or admin)", "ls": "restore (or admin)",
	"find": "restore (or admin)", "diff": "restore (or admin)", "dump": "restore (or admin)",
	"stats": "restore (or admin)", "mount": "restore (or admin)", "nbd": "restore (or admin)",
	"check": "restore (or admin)", "audit": "restore (or admin)", "cat": "restore (or admin)",
	"init": "admin", "forget": "admin", "prune": "admin", "tag": "admin", "rewrite": "admin",
	"repair": "admin", "key add": "admin", "key remove": "admin", "key passwd": "admin",
}

// explainRole gives a refusal of the server's (HTTP 403) a hint that
// names the role the command needs, when cmd is one whose needs are plain.
func explainRole(cmd *cobra.Command, err error) error {
	if cmd == nil || !errors.Is(err, remote.ErrForbidden) {
		return err
	}
	name := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
	role, ok := neededRole[name]
	if !ok {
		return err
	}
	return hintedError{err, fmt.Sprintf("`floe %s` needs the %s role for this repository (a token's, or --role in an ssh key's forced command): this credential lacks it or is for another repository; `floe serve token add --role ROLE` on the server makes a token", name, role)}
}

// restoreHint says what to do about the errors of a partial restore, by
// their causes: a full target, a target that refused writes, damaged data.
func restoreHint(errs []error) string {
	var causes []string
	seen := map[string]bool{}
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			causes = append(causes, s)
		}
	}
	for _, e := range errs {
		switch {
		case errors.Is(e, syscall.ENOSPC), errors.Is(e, syscall.EDQUOT):
			add("the target's file system is full: free space there, or restore elsewhere with --target")
		case errors.Is(e, fs.ErrPermission):
			add("the target refused writes: restore as a user who may write there (owners and device nodes need root)")
		case errors.Is(e, repo.ErrForged), errors.Is(e, storage.ErrNotExist):
			add("data is damaged or missing in the repository: `floe check --read-data` lists what")
		}
	}
	causes = append(causes, "the files named above are missing or incomplete, the rest is restored; restoring again rewrites only what differs")
	return strings.Join(causes, "; ")
}

// hintFor returns what to do about err in floe's terms (flags, commands):
// the packages below cmd/floe name neither, since other front ends (the
// agent's configuration, a library user) spell them differently.
func hintFor(err error) string {
	var he hintedError
	var held *repo.LeaseHeldError
	switch {
	case errors.As(err, &he):
		return he.hint
	case strings.HasPrefix(err.Error(), "unknown command "):
		return "`floe --help` lists the commands"
	case errors.Is(err, repo.ErrFormatV1):
		return "make a new repository with `floe init` and back up again"
	case errors.Is(err, repo.ErrWriteOnly):
		return "use a full key (--password-file or --key-file of a full key)"
	case errors.Is(err, repo.ErrNotPassphrase):
		return "use `floe key add` for a passphrase key"
	case errors.Is(err, connect.ErrCredentialWithoutRepo):
		return "use -r or FLOE_REPOSITORY; to create a repository there, use `floe init`"
	case errors.Is(err, location.ErrNoLocation):
		return "use -r/--repo or FLOE_REPOSITORY"
	case errors.Is(err, remote.ErrPinned):
		return "the fingerprint was pinned with --server-fingerprint/FLOE_SERVER_FINGERPRINT: compare it with what `floe serve fingerprint` prints on the server, and pin the new one only if its certificate was replaced on purpose"
	case errors.Is(err, remote.ErrUnknownAuthority):
		return "pin the certificate with --server-fingerprint (`floe serve` prints its fingerprint)"
	case errors.Is(err, remote.ErrCredentialsInURL):
		return "give the token file with --token-file or FLOE_TOKEN_FILE"
	case errors.Is(err, location.ErrNoToken):
		return "use --token-file or FLOE_TOKEN_FILE (`floe serve token add` makes one)"
	case errors.Is(err, backup.ErrStdinFilename):
		return "give another name with --stdin-filename"
	case errors.Is(err, backup.ErrParentNeedsCache):
		return "--parent with a write-only key looks the snapshot up in the local cache: drop --no-cache"
	case errors.Is(err, fssnap.ErrNeedsRoot):
		return "run floe as root to use --fs-snapshot"
	case errors.Is(err, fssnap.ErrBtrfsNotLVM):
		return "use --fs-snapshot btrfs for paths on btrfs"
	case errors.Is(err, fssnap.ErrNoRoom), errors.Is(err, fssnap.ErrOverflowed):
		return "give the LVM snapshot the room it needs with --fs-snapshot-size"
	case errors.As(err, new(*repo.IndexLoadError)):
		return "run `floe check`"
	case errors.As(err, &held) && held.Lease.RunsHere():
		return fmt.Sprintf("that %s is still running on this machine (pid %d): wait for it to end; do not remove its lease", held.Lease.TaskName(), held.Lease.PID)
	case errors.As(err, &held):
		return fmt.Sprintf("if that %s died on another machine, wait until its lease ends, or remove the lease with `floe prune --force-unlock` or `floe repair --force-unlock` (each asks first); a %s that died on this machine is noticed by the next one", held.Lease.TaskName(), held.Lease.TaskName())
	case errors.Is(err, devrestore.ErrNotDevice):
		return "restore an image into a file with --target"
	case errors.Is(err, server.ErrNoRoot):
		return "give the directory of the repositories with --root"
	case errors.Is(err, server.ErrNoRole):
		return "give the ssh key's forced command `floe serve --stdio --role ROLE`"
	case errors.Is(err, server.ErrTLSPair):
		return "give both --tls-cert and --tls-key, or neither"
	case errors.Is(err, server.ErrNoToken):
		return "`floe serve token list` shows the tokens"
	case errors.Is(err, fleetsrv.ErrHostEnrolled):
		return "revoke it first: `floe serve host revoke`"
	case errors.Is(err, backup.ErrImageType):
		return "--image takes a block device or a regular file (a raw image)"
	case errors.Is(err, prune.ErrUnsafe), errors.Is(err, dump.ErrSizeMismatch), errors.Is(err, snapimage.ErrDamaged):
		return "run `floe check`"
	case errors.Is(err, transfer.ErrSourceDamaged):
		return "run `floe check` on the source repository"
	case errors.Is(err, transfer.ErrDestinationDamaged):
		return "run `floe check` on the destination repository"
	case errors.Is(err, repo.ErrWrongKey):
		return "check --password-file, FLOE_PASSWORD_FILE, FLOE_PASSWORD_COMMAND or --key-file"
	case errors.Is(err, repo.ErrNoRepository):
		return "create one with `floe init -r LOCATION`, or check -r/--repo and FLOE_REPOSITORY"
	case errors.Is(err, errNoRepoGiven):
		return "give one with -r/--repo or FLOE_REPOSITORY, run `floe backup PATH` once to create the default repository, or use `floe init -r LOCATION`"
	case errors.Is(err, remote.ErrUnauthorized):
		return "the floe server does not know this token: check --token-file/FLOE_TOKEN_FILE, or ask for one (`floe serve token add`)"
	case errors.Is(err, remote.ErrForbidden):
		return "the credential's role on the floe server (the token's, or --role in the ssh key's forced command) does not allow this command (backup only adds backups; restore needs a restore or admin role)"
	case errors.Is(err, remote.ErrSSH):
		return "check the ssh:// location, --ssh-command/FLOE_SSH_COMMAND (key, known_hosts) and that floe is installed on the host"
	case errors.Is(err, remote.ErrQuota):
		return "the floe server's quota for this token or repository is used up; nothing partial was stored (`floe serve usage` on the server shows it)"
	case errors.Is(err, repo.ErrUnknownID):
		return "`floe snapshots` and `floe key list` show the IDs there are"
	case errors.Is(err, repo.ErrForged):
		return "run `floe check --read-data` to list every damaged pack and the snapshots it affects"
	case errors.Is(err, walk.ErrNotFound):
		return "paths in a snapshot are absolute, as they were backed up: `floe ls SNAPSHOT` lists them"
	case errors.Is(err, snapshot.ErrNoSnapshot):
		return "`floe snapshots` lists the snapshots (and `floe snapshots --host HOST` a host's)"
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return "a file system is full (the one named above: the repository's, the cache's or $TMPDIR's): free space there and run again; in the repository, `floe forget` and then `floe prune` free space"
	case errors.Is(err, storage.ErrNotExist):
		return "the object is missing from the repository; run `floe check` to see what is affected"
	}
	return ""
}
