package connect

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/repo"
)

// DamagedError says that a repository cannot be opened because it is
// damaged (every key, or its config), not because of the credential.
type DamagedError struct{ msg string }

func (e *DamagedError) Error() string { return e.msg }

func damaged(format string, args ...any) error {
	return &DamagedError{msg: fmt.Sprintf(format, args...)}
}

// Diagnose tells damage that keeps the repository t from opening (every
// key damaged, or the config) from a wrong password: given the error Open
// returned, it returns a *DamagedError for damage, else err. check uses
// it, since check is where people look when things break.
func Diagnose(ctx context.Context, t Target, err error) error {
	if errors.Is(err, repo.ErrNoRepository) || errors.Is(err, ErrNoRepoGiven) || errors.Is(err, ErrCredentialWithoutRepo) || ctx.Err() != nil {
		return err
	}
	if errors.Is(err, repo.ErrDamagedConfig) {
		return damaged("cannot open the repository: %v; without its config nothing in it can be read", err)
	}
	if !errors.Is(err, repo.ErrWrongKey) {
		return err
	}
	be, berr := location.OpenWith(ctx, t.Location, t.Server)
	if berr != nil {
		return err
	}
	defer be.Close()
	ids, bad, kerr := repo.CheckKeyRecords(ctx, be)
	if kerr != nil {
		return err
	}
	if len(ids) == 0 {
		return damaged("cannot open the repository: it has no keys (%s/keys is empty)", be.Location())
	}
	if len(bad) < len(ids) {
		return err
	}
	var lines []string
	for _, id := range ids {
		lines = append(lines, "  "+bad[id].Error())
	}
	sort.Strings(lines)
	return damaged("cannot open the repository: every key is damaged (%d of %d), so no password or key file can open it:\n%s",
		len(bad), len(ids), strings.Join(lines, "\n"))
}
