package main

import (
	"fmt"
	"sync"

	"github.com/spf13/pflag"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/limit"
)

// Bandwidth limits apply to every command and every repository it opens
// (copy: both): all saves share one upload limit, all loads one download
// limit.
var limits struct {
	uploadKiB, downloadKiB int64

	mu               sync.Mutex
	upload, download *limit.Limiter
	madeUp, madeDown int64 // the flag values the limiters were made for
	made             bool
}

func init() {
	extraGlobalFlags = append(extraGlobalFlags, func(f *pflag.FlagSet) {
		f.Int64Var(&limits.uploadKiB, "limit-upload", 0, "limit uploads (bytes saved to repositories) to this many `KiB/s`; 0: no limit")
		f.Int64Var(&limits.downloadKiB, "limit-download", 0, "limit downloads (bytes loaded from repositories) to this many `KiB/s`; 0: no limit")
	})
	backendWrappers = append(backendWrappers, wrapLimits)
}

func wrapLimits(be storage.Backend) (storage.Backend, error) {
	up, down, err := limiters()
	if err != nil {
		return nil, err
	}
	return limit.Wrap(be, up, down), nil
}

// limiters returns the process's limiters for the flags' values.
func limiters() (*limit.Limiter, *limit.Limiter, error) {
	limits.mu.Lock()
	defer limits.mu.Unlock()
	if limits.uploadKiB < 0 || limits.downloadKiB < 0 {
		return nil, nil, usageError{fmt.Errorf("--limit-upload and --limit-download take KiB/s, 0 or more")}
	}
	if !limits.made || limits.madeUp != limits.uploadKiB || limits.madeDown != limits.downloadKiB {
		limits.upload = limit.NewLimiter(limits.uploadKiB << 10)
		limits.download = limit.NewLimiter(limits.downloadKiB << 10)
		limits.madeUp, limits.madeDown, limits.made = limits.uploadKiB, limits.downloadKiB, true
	}
	return limits.upload, limits.download, nil
}
