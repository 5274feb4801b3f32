package connect

import (
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/limit"
)

// Limits are bandwidth limits shared by every repository a process opens
// (copy: both): all saves share one upload limit, all loads one download
// limit.
type Limits struct {
	Upload, Download *limit.Limiter
}

// NewLimits returns limits of upload and download bytes per second; 0 or
// less is no limit.
func NewLimits(upload, download int64) *Limits {
	return &Limits{Upload: limit.NewLimiter(upload), Download: limit.NewLimiter(download)}
}

// Wrap returns be limited by l (be itself for a nil l or no limits).
func (l *Limits) Wrap(be storage.Backend) storage.Backend {
	if l == nil {
		return be
	}
	return limit.Wrap(be, l.Upload, l.Download)
}
