package mount

import (
	"sort"
	"strings"
	"time"

	"github.com/floe-backup/floe/internal/snapshot"
)

// Time formats of the directory names (in the local time zone).
const (
	hostTimeFormat = "2006-01-02T15:04:05"
	dateFormat     = "2006-01-02"
	clockFormat    = "15:04:05"
)

// vnode is one entry of the fixed part of the mount: a directory made up
// by floe, a snapshot's root, or a symlink.
type vnode struct {
	name     string
	path     string // from the mount's root, "" for the root itself
	children []*vnode
	snap     *snapshot.Record // a snapshot's root directory
	link     string           // a symlink's target
	mtime    time.Time
}

func (v *vnode) child(name string) *vnode {
	for _, c := range v.children {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (v *vnode) add(c *vnode) *vnode {
	if v.path == "" {
		c.path = c.name
	} else {
		c.path = v.path + "/" + c.name
	}
	v.children = append(v.children, c)
	return c
}

func (v *vnode) dir(name string) *vnode {
	if c := v.child(name); c != nil {
		return c
	}
	return v.add(&vnode{name: name})
}

// buildLayout returns the fixed tree for snaps, which must be sorted oldest
// first (snapshot.SortByTime):
//
//	ids/<short id>/                     each snapshot
//	hosts/<host>/<2006-01-02T15:04:05>/ each snapshot of a host
//	hosts/<host>/latest                 -> the newest of them
//	dates/<2006-01-02>/<host>-<15:04:05>/
//	latest                              -> ids/<short id> of the newest snapshot
//
// Times are local. Names that would collide get "-<short id>" appended.
func buildLayout(snaps []*snapshot.Record, loc *time.Location) *vnode {
	root := &vnode{}
	ids := root.dir("ids")
	hosts := root.dir("hosts")
	dates := root.dir("dates")
	idLen := uniquePrefixLen(snaps)
	used := map[string]bool{}
	unique := func(dir, name string, sn *snapshot.Record) string {
		if used[dir+"/"+name] {
			name += "-" + sn.ID.String()[:idLen]
		}
		used[dir+"/"+name] = true
		return name
	}
	for _, sn := range snaps {
		t := sn.Time.In(loc)
		id := sn.ID.String()[:idLen]
		ids.add(&vnode{name: id, snap: sn, mtime: sn.Time})

		host := safeName(sn.Hostname, "unknown-host")
		h := hosts.dir(host)
		name := unique(h.path, t.Format(hostTimeFormat), sn)
		h.add(&vnode{name: name, snap: sn, mtime: sn.Time})
		if l := h.child("latest"); l != nil {
			l.link, l.mtime = name, sn.Time
		} else {
			h.add(&vnode{name: "latest", link: name, mtime: sn.Time})
		}

		d := dates.dir(t.Format(dateFormat))
		d.add(&vnode{name: unique(d.path, host+"-"+t.Format(clockFormat), sn), snap: sn, mtime: sn.Time})
	}
	if n := len(snaps); n > 0 {
		newest := snaps[n-1]
		root.add(&vnode{name: "latest", link: "ids/" + newest.ID.String()[:idLen], mtime: newest.Time})
	}
	finish(root)
	return root
}

// finish sorts the children by name and gives directories the time of
// their newest entry.
func finish(v *vnode) time.Time {
	sort.Slice(v.children, func(i, j int) bool { return v.children[i].name < v.children[j].name })
	if v.snap != nil || v.link != "" {
		return v.mtime
	}
	for _, c := range v.children {
		if t := finish(c); t.After(v.mtime) {
			v.mtime = t
		}
	}
	return v.mtime
}

// uniquePrefixLen returns the shortest length, at least that of
// hash.ID.Short, at which the snapshots' hex IDs are all different.
func uniquePrefixLen(snaps []*snapshot.Record) int {
	n := 8
	for ; n < 64; n++ {
		seen := make(map[string]bool, len(snaps))
		dup := false
		for _, sn := range snaps {
			p := sn.ID.String()[:n]
			if seen[p] {
				dup = true
				break
			}
			seen[p] = true
		}
		if !dup {
			break
		}
	}
	return n
}

// safeName makes s usable as one path element: '/' and NUL become '_',
// and "", "." and ".." are replaced.
func safeName(s, empty string) string {
	s = strings.NewReplacer("/", "_", "\x00", "_").Replace(s)
	switch s {
	case "":
		return empty
	case ".", "..":
		return "_" + s
	}
	return s
}
