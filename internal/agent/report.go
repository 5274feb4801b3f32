package agent

import (
	"context"
	"log/slog"
	"time"

	"github.com/floe-backup/floe/internal/fleet"
)

// Reporter is told the outcome of every run. Without a server,
// LogReporter writes it to the log (which journald keeps); a floe server
// will collect them for its dashboard and alerts.
type Reporter interface {
	Report(ctx context.Context, run fleet.Run) error
}

// LogReporter logs each run as one structured line.
type LogReporter struct{ Log *slog.Logger }

func (l LogReporter) Report(ctx context.Context, r fleet.Run) error {
	attrs := []slog.Attr{
		slog.String("job", r.Job), slog.String("task", string(r.Task)), slog.String("status", string(r.Status)),
		slog.Int("attempt", r.Attempt), slog.String("repository", r.Repository),
		slog.Time("scheduled", r.Scheduled), slog.Time("started", r.Started), slog.Float64("seconds", r.Finished.Sub(r.Started).Round(time.Millisecond).Seconds()),
	}
	if r.Snapshot != "" {
		attrs = append(attrs, slog.String("snapshot", r.Snapshot),
			slog.Uint64("files_new", r.FilesNew), slog.Uint64("files_changed", r.FilesChanged),
			slog.Uint64("files_unchanged", r.FilesUnchanged), slog.Uint64("file_errors", r.FileErrors),
			slog.Uint64("total_bytes", r.TotalBytes), slog.Uint64("data_added", r.DataAdded),
			slog.Uint64("data_added_stored", r.DataAddedStored))
	}
	if r.Task == fleet.TaskCheck && r.CheckSubset != "" {
		attrs = append(attrs, slog.String("subset", r.CheckSubset), slog.Int("check_errors", r.CheckErrors), slog.Int("check_warnings", r.CheckWarnings))
	}
	if r.Task == fleet.TaskRetention {
		attrs = append(attrs, slog.Int("snapshots_kept", r.SnapshotsKept), slog.Int("snapshots_removed", r.SnapshotsRemoved),
			slog.Int64("pruned_bytes", r.PrunedBytes), slog.Int64("marked_bytes", r.MarkedBytes))
	}
	if r.Error != "" {
		attrs = append(attrs, slog.String("error", r.Error))
	}
	if !r.RetryAt.IsZero() {
		attrs = append(attrs, slog.Time("retry_at", r.RetryAt))
	}
	level := slog.LevelInfo
	switch r.Status {
	case fleet.StatusFailed:
		level = slog.LevelError
	case fleet.StatusPartial, fleet.StatusRetrying, fleet.StatusSkipped:
		level = slog.LevelWarn
	}
	l.Log.LogAttrs(ctx, level, "run", attrs...)
	return nil
}
