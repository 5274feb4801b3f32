package snapshot

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/repo"
)

// Tags use restic's meaning everywhere. Where tags are given to a
// snapshot (backup --tag, tag --add/--remove/--set), "a,b" is the two tags
// a and b. Where snapshots are selected (--tag, forget --keep-tag), "a,b"
// is a TagList: snapshots that have both a and b; repeating the flag
// selects snapshots that match any of the lists.

// ParseTags splits flag values at commas into tags, in order, each once;
// empty parts are dropped.
func ParseTags(values []string) []string {
	var out []string
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if t != "" && !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	return out
}

// TagList is a set of tags a snapshot must all have; an empty list
// matches only snapshots without tags (restic's --tag "").
type TagList []string

// ParseTagLists reads filter flag values: each value is one TagList.
func ParseTagLists(values []string) []TagList {
	out := make([]TagList, 0, len(values))
	for _, v := range values {
		out = append(out, TagList(ParseTags([]string{v})))
	}
	return out
}

// String is the list as it is written on the command line.
func (l TagList) String() string { return strings.Join(l, ",") }

// Match reports whether tags has every tag of l (for an empty l: whether
// tags is empty).
func (l TagList) Match(tags []string) bool {
	if len(l) == 0 {
		return len(tags) == 0
	}
	for _, t := range l {
		if !slices.Contains(tags, t) {
			return false
		}
	}
	return true
}

// TagChange changes a snapshot's tags: Set replaces them all (when
// SetGiven, so that an empty Set removes every tag), then Add adds and
// Remove removes.
type TagChange struct {
	Set         []string
	SetGiven    bool
	Add, Remove []string
}

// Apply returns the changed tags and whether they differ from tags.
func (c TagChange) Apply(tags []string) ([]string, bool) {
	out := slices.Clone(tags)
	if c.SetGiven {
		out = slices.Clone(c.Set)
	}
	for _, t := range c.Add {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	out = slices.DeleteFunc(out, func(t string) bool { return slices.Contains(c.Remove, t) })
	return out, !slices.Equal(out, tags)
}

// Retag changes the tags of the snapshot rec. Records are immutable, so
// it saves a new record (with Original naming the snapshot it replaces,
// or the original of a copy, so that copy still knows it) and then removes
// rec. It returns the new ID, or rec's own when the tags stay the same.
// Removing needs a full key.
func Retag(ctx context.Context, r *repo.Repository, rec *Record, c TagChange) (hash.ID, bool, error) {
	tags, changed := c.Apply(rec.Tags)
	if !changed {
		return rec.ID, false, nil
	}
	if r.WriteOnly() {
		return hash.ID{}, false, repo.ErrWriteOnly
	}
	sn := *rec.Snapshot
	sn.Tags = tags
	if sn.Original.IsNull() {
		sn.Original = rec.ID
	}
	id, err := Save(ctx, r, &sn)
	if err != nil {
		return hash.ID{}, false, fmt.Errorf("save the retagged snapshot %s: %w", rec.ID.Short(), err)
	}
	if err := r.RemoveSnapshot(ctx, rec.ID); err != nil {
		return id, true, fmt.Errorf("snapshot %s saved as %s with the new tags, but the old record stays: %w", rec.ID.Short(), id.Short(), err)
	}
	return id, true, nil
}
