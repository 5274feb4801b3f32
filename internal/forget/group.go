package forget

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/floe-backup/floe/internal/snapshot"
)

// GroupKey identifies a group of snapshots. Fields not grouped by are
// empty. It is comparable, so it can key a map.
type GroupKey struct {
	Host  string
	paths string // sorted, NUL-separated
	tags  string // sorted, NUL-separated
}

// Paths returns the group's paths (sorted), or nil when not grouped by paths.
func (k GroupKey) Paths() []string { return split(k.paths) }

// Tags returns the group's tags (sorted), or nil when not grouped by tags.
func (k GroupKey) Tags() []string { return split(k.tags) }

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}

func join(list []string) string {
	s := slices.Clone(list)
	sort.Strings(s)
	s = slices.Compact(s)
	return strings.Join(s, "\x00")
}

// groupBy is the parsed form of a --group-by value.
type groupBy struct{ host, paths, tags bool }

// DefaultGroupBy groups like backup chooses parents: same host, same paths.
const DefaultGroupBy = "host,paths"

func parseGroupBy(by string) (groupBy, error) {
	var g groupBy
	for _, f := range strings.Split(by, ",") {
		switch strings.TrimSpace(f) {
		case "":
		case "host":
			g.host = true
		case "paths":
			g.paths = true
		case "tags":
			g.tags = true
		default:
			return g, fmt.Errorf("group-by: unknown field %q (want a comma-separated list of host, paths, tags, or \"\" for no grouping)", f)
		}
	}
	return g, nil
}

// Group sorts snapshots into groups by a comma-separated list of host,
// paths and tags ("" puts every snapshot into one group). Paths and tags
// compare as sets. Each group keeps the order of snaps.
func Group(snaps []*snapshot.Record, by string) (map[GroupKey][]*snapshot.Record, error) {
	g, err := parseGroupBy(by)
	if err != nil {
		return nil, err
	}
	out := make(map[GroupKey][]*snapshot.Record)
	for _, sn := range snaps {
		var k GroupKey
		if g.host {
			k.Host = sn.Hostname
		}
		if g.paths {
			k.paths = join(sn.Paths)
		}
		if g.tags {
			k.tags = join(sn.Tags)
		}
		out[k] = append(out[k], sn)
	}
	return out, nil
}

// SortedKeys returns the keys of groups in a stable order: by host, then
// paths, then tags.
func SortedKeys(groups map[GroupKey][]*snapshot.Record) []GroupKey {
	keys := make([]GroupKey, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.Host != b.Host {
			return a.Host < b.Host
		}
		if a.paths != b.paths {
			return a.paths < b.paths
		}
		return a.tags < b.tags
	})
	return keys
}
