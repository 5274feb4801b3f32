package local

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// renameNoReplace moves old to new atomically, failing with an error that
// matches fs.ErrExist if new exists. It uses renameat2(RENAME_NOREPLACE) and
// falls back to a hard link where the file system does not support it.
func renameNoReplace(old, new string) error {
	err := unix.Renameat2(unix.AT_FDCWD, old, unix.AT_FDCWD, new, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOTSUP) {
		return linkNoReplace(old, new)
	}
	return &os.LinkError{Op: "rename", Old: old, New: new, Err: err}
}
