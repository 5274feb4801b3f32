// Package e2e runs the floe binary end to end, as people and scripts do:
// back up tricky trees and restore them, check deduplication and the
// skipping of unchanged files, kill backups at random moments, and check
// exit codes, messages, keys, hooks and excludes. TestMain builds the
// binary once; every test has its own repository, home and cache
// directories. Run with: go test ./e2e/
package e2e
