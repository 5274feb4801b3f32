//go:build !linux

package local

// renameNoReplace moves old to new atomically, failing with an error that
// matches fs.ErrExist if new exists.
func renameNoReplace(old, new string) error { return linkNoReplace(old, new) }
