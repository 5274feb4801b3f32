package snapshot

import (
	"context"
	"slices"
	"sort"
	"strings"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
)

// Select chooses snapshots as every command does: with specs (full IDs,
// unique prefixes, or "latest" for the newest that passes f; see Find),
// each named snapshot once, in the order given; with none, every snapshot
// that passes f, oldest first. Snapshots that cannot be loaded while
// listing are returned as errors beside the good ones (as List does), so
// that the caller can warn and go on.
func Select(ctx context.Context, r *repo.Repository, specs []string, f Filter) ([]*Record, []error, error) {
	if len(specs) > 0 {
		var sel []*Record
		seen := map[hash.ID]bool{}
		for _, s := range specs {
			sn, err := Find(ctx, r, s, f)
			if err != nil {
				return nil, nil, err
			}
			if !seen[sn.ID] {
				seen[sn.ID] = true
				sel = append(sel, sn)
			}
		}
		return sel, nil, nil
	}
	all, errs, err := List(ctx, r)
	if err != nil {
		return nil, nil, err
	}
	var sel []*Record
	for _, s := range all {
		if f.Match(s.Snapshot) {
			sel = append(sel, s)
		}
	}
	return sel, errs, nil
}

// Latest keeps the n newest snapshots of each group of the same host and
// paths (restic's snapshots --latest), in the order of sel.
func Latest(sel []*Record, n int) []*Record {
	type group struct{ host, paths string }
	byGroup := map[group][]*Record{}
	for _, s := range sel {
		p := slices.Clone(s.Paths)
		sort.Strings(p)
		k := group{s.Hostname, strings.Join(p, "\x00")}
		byGroup[k] = append(byGroup[k], s)
	}
	keep := map[hash.ID]bool{}
	for _, list := range byGroup {
		list = slices.Clone(list)
		SortByTime(list)
		for i := len(list) - 1; i >= 0 && i >= len(list)-n; i-- {
			keep[list[i].ID] = true
		}
	}
	var out []*Record
	for _, s := range sel {
		if keep[s.ID] {
			out = append(out, s)
		}
	}
	return out
}
