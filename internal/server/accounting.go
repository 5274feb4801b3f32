package server

import (
	"context"
	"fmt"
	"time"

	"github.com/floe-backup/floe/internal/storage"
)

// StoredByUploader is what a repository holds, by who uploaded it: the
// bytes of every object it stores now (packs, index files, snapshot
// records, keys), each counted for the host of the credential that
// uploaded it by the upload journal ("" when the journal does not know:
// objects from before the journal, or copied in by hand). The server
// holds no keys: this is what it can know of who uses the space, without
// knowing what is shared between hosts (deduplicated data is counted for
// whoever uploaded it first).
type StoredByUploader struct {
	Bytes   int64
	Objects int64
	ByHost  map[string]int64
	// ObjectsByHost counts the objects of ByHost; Counted is what the
	// objects count against a quota (Charged).
	ObjectsByHost map[string]int64
	Counted       int64
	// Uploads are, by host, what the journal recorded of uploads: the
	// bytes uploaded in the day and the 30 days before the time given
	// to Accounting (objects removed since included) and the last one.
	Uploads map[string]HostUploads
}

// HostUploads is what one host uploaded lately (StoredByUploader).
type HostUploads struct {
	Day, Month int64
	Last       time.Time
}

// Accounting returns what repository repo holds, by uploader. It lists
// every object once (a directory walk on the server's disk) and reads
// the repository's upload journal.
func Accounting(ctx context.Context, repos Repositories, repo string) (StoredByUploader, error) {
	return AccountingAt(ctx, repos, repo, time.Now())
}

// AccountingAt is Accounting with the uploads of the day and month before
// now.
func AccountingAt(ctx context.Context, repos Repositories, repo string, now time.Time) (StoredByUploader, error) {
	out := StoredByUploader{ByHost: map[string]int64{}, ObjectsByHost: map[string]int64{}, Uploads: map[string]HostUploads{}}
	be, err := repos.Open(ctx, repo)
	if err != nil {
		return out, fmt.Errorf("repository %s: %w", repo, err)
	}
	j := journalOf(repos, repo, be, &journal{})
	for _, t := range journaledTypes {
		who := map[string]UploadRecord{}
		if j != nil {
			if who, err = j.read(ctx, t); err != nil {
				return out, err
			}
		}
		sizes := map[string]int64{}
		err := be.List(ctx, t, func(fi storage.FileInfo) error {
			out.Bytes += fi.Size
			out.Objects++
			out.Counted += Charged(fi.Size)
			host := who[fi.Name].Host
			out.ByHost[host] += fi.Size
			out.ObjectsByHost[host]++
			sizes[fi.Name] = fi.Size
			return nil
		})
		if err != nil {
			return out, fmt.Errorf("repository %s: list %s: %w", repo, t, err)
		}
		if j == nil {
			continue
		}
		err = j.each(ctx, t, func(rec UploadRecord) {
			if rec.Removed || rec.Time.After(now) {
				return
			}
			size := rec.Size
			if size == 0 {
				size = sizes[rec.Name] // a record from before sizes were kept
			}
			u := out.Uploads[rec.Host]
			if age := now.Sub(rec.Time); age <= 24*time.Hour {
				u.Day += size
			}
			if age := now.Sub(rec.Time); age <= 30*24*time.Hour {
				u.Month += size
			}
			if rec.Time.After(u.Last) {
				u.Last = rec.Time
			}
			out.Uploads[rec.Host] = u
		})
		if err != nil {
			return out, fmt.Errorf("repository %s: %w", repo, err)
		}
	}
	// the config counts against a quota too (RepoSize)
	if fi, err := be.Stat(ctx, storage.Handle{Type: storage.Config}); err == nil {
		out.Counted += Charged(fi.Size)
	}
	return out, nil
}

// journaledTypes are the object types whose uploads the journal records.
var journaledTypes = []storage.FileType{storage.Pack, storage.Index, storage.Snapshot, storage.Key}

// lastUploads is the time of each host's latest upload recorded in a
// repository's journal (removals are not writes).
func lastUploads(ctx context.Context, j uploadJournal) (map[string]time.Time, error) {
	last := map[string]time.Time{}
	for _, t := range journaledTypes {
		err := j.each(ctx, t, func(rec UploadRecord) {
			if !rec.Removed && rec.Time.After(last[rec.Host]) {
				last[rec.Host] = rec.Time
			}
		})
		if err != nil {
			return nil, err
		}
	}
	return last, nil
}
