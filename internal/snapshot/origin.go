package snapshot

import (
	"context"
	"fmt"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
)

// Origins returns who stored each snapshot record and when the storage
// received it, when the storage records that (a floe server does: see
// storage.Origins); ok is false when it does not (a local directory).
// A snapshot's own time and host name are what its writer claims; its
// origin is what the server saw.
func Origins(ctx context.Context, r *repo.Repository) (origins map[hash.ID]storage.Origin, ok bool, err error) {
	o, has := storage.As[storage.Origins](r.Backend())
	if !has {
		return nil, false, nil
	}
	byName, err := o.Origins(ctx, storage.Snapshot)
	if err != nil {
		return nil, false, fmt.Errorf("who stored the snapshots: %w", err)
	}
	origins = make(map[hash.ID]storage.Origin, len(byName))
	for name, og := range byName {
		id, err := hash.Parse(name)
		if err != nil {
			continue
		}
		origins[id] = og
	}
	return origins, true, nil
}

// FutureSkew is how far a snapshot's time may be ahead of its arrival at
// the storage (or of now) before it counts as dated in the future: clocks
// of hosts differ a little, and a backup takes a while between its
// start (the snapshot's time) and its upload.
const FutureSkew = 5 * time.Minute

// EffectiveTime is the time retention policies use: the snapshot's own
// time, or its arrival at the storage if that is earlier (a snapshot
// that claims a time after it arrived is dated in the future, and would
// otherwise be kept as the newest forever).
func EffectiveTime(sn *Record, origins map[hash.ID]storage.Origin) time.Time {
	if og, ok := origins[sn.ID]; ok && !og.Received.IsZero() && og.Received.Before(sn.Time) {
		return og.Received
	}
	return sn.Time
}
