package main

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

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
	"github.com/floe-backup/floe/internal/storage/remote"
	"github.com/floe-backup/floe/internal/transfer"
	"github.com/floe-backup/floe/internal/walk"
)

// The packages below cmd/floe name no flags and no commands; the hint for
// each of their errors, however deeply wrapped, names them.
func TestHintsNameFlagsAndCommands(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{repo.ErrFormatV1, "`floe init`"},
		{repo.ErrWriteOnly, "--password-file or --key-file of a full key"},
		{repo.ErrNotAuthority, "--password-file or --key-file of a full key"},
		{repo.ErrNotPassphrase, "`floe key add`"},
		{connect.ErrNoRepoGiven, "-r/--repo or FLOE_REPOSITORY"},
		{connect.ErrCredentialWithoutRepo, "use -r or FLOE_REPOSITORY"},
		{location.ErrNoLocation, "-r/--repo or FLOE_REPOSITORY"},
		{location.ErrNoToken, "--token-file"},
		{remote.ErrPinned, "--server-fingerprint/FLOE_SERVER_FINGERPRINT"},
		{remote.ErrUnknownAuthority, "--server-fingerprint"},
		{remote.ErrCredentialsInURL, "--token-file"},
		{backup.ErrStdinFilename, "--stdin-filename"},
		{backup.ErrParentNeedsCache, "--no-cache"},
		{fssnap.ErrNeedsRoot, "as root"},
		{fssnap.ErrBtrfsNotLVM, "use --fs-snapshot btrfs"},
		{fssnap.ErrNoRoom, "--fs-snapshot-size"},
		{fssnap.ErrOverflowed, "--fs-snapshot-size"},
		{prune.ErrUnsafe, "`floe check`"},
		{dump.ErrSizeMismatch, "`floe check`"},
		{snapimage.ErrDamaged, "`floe check`"},
		{transfer.ErrSourceDamaged, "`floe check` on the source"},
		{transfer.ErrDestinationDamaged, "`floe check` on the destination"},
		{&repo.IndexLoadError{Errs: []error{errors.New("bad magic")}}, "`floe check`"},
		{&repo.LeaseHeldError{Lease: repo.Lease{Holder: "h"}}, "--force-unlock"},
		{devrestore.ErrNotDevice, "--target"},
		{backup.ErrImageType, "--image"},
		{server.ErrNoRoot, "--root"},
		{server.ErrNoRole, "--stdio --role"},
		{server.ErrTLSPair, "--tls-cert and --tls-key"},
		{server.ErrNoToken, "`floe serve token list`"},
		{fleetsrv.ErrHostEnrolled, "`floe serve host revoke`"},
		{repo.ErrForged, "`floe check --read-data`"},
		{snapshot.ErrNoSnapshot, "`floe snapshots`"},
		{syscall.ENOSPC, "`floe prune`"},
		{walk.ErrNotFound, "`floe ls SNAPSHOT`"},
	} {
		wrapped := fmt.Errorf("outer: %w", fmt.Errorf("inner (%w)", c.err))
		if got := hintFor(wrapped); !strings.Contains(got, c.want) {
			t.Errorf("%v: hint %q, want it to say %q", c.err, got, c.want)
		}
		if strings.Contains(c.err.Error(), "--") || strings.Contains(c.err.Error(), "`floe") {
			t.Errorf("%q names a flag or a command itself", c.err)
		}
	}
	if got := hintFor(errors.New("something else")); got != "" {
		t.Errorf("hint for an unknown error: %q", got)
	}
}
