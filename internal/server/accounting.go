package server

import (
	"context"
	"fmt"

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
}

// Accounting returns what repository repo holds, by uploader. It lists
// every object once (a directory walk on the server's disk) and reads
// the repository's upload journal.
func Accounting(ctx context.Context, repos Repositories, repo string) (StoredByUploader, error) {
	out := StoredByUploader{ByHost: map[string]int64{}}
	be, err := repos.Open(ctx, repo)
	if err != nil {
		return out, fmt.Errorf("repository %s: %w", repo, err)
	}
	j := journalOf(repos, repo, be, &journal{})
	for _, t := range []storage.FileType{storage.Pack, storage.Index, storage.Snapshot, storage.Key} {
		who := map[string]UploadRecord{}
		if j != nil {
			if who, err = j.read(ctx, t); err != nil {
				return out, err
			}
		}
		err := be.List(ctx, t, func(fi storage.FileInfo) error {
			out.Bytes += fi.Size
			out.Objects++
			out.ByHost[who[fi.Name].Host] += fi.Size
			return nil
		})
		if err != nil {
			return out, fmt.Errorf("repository %s: list %s: %w", repo, t, err)
		}
	}
	return out, nil
}
