// Package testutil holds helpers shared by floe's tests: deterministic
// random data, file trees with every kind of entry a backup meets in the
// wild (hard links, sparse files, devices, hostile names, xattrs, odd modes
// and times), and a comparison of two trees' contents and metadata, for
// checking that a restore gave back what was backed up.
//
// The helpers that touch the file system are Linux only, like floe's
// metadata code (internal/fsmeta).
package testutil
