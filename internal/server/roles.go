package server

import (
	"fmt"
	"strings"

	"github.com/floe-backup/floe/internal/storage"
)

// Role is a set of rights; roles combine (backup,restore).
type Role uint8

// The roles of a credential (README "floe serve").
const (
	// RoleBackup lists, reads config, keys, index files and gc marks, and
	// saves new packs, index files and snapshots: what a backup needs and
	// nothing that reads backed-up data or removes anything.
	RoleBackup Role = 1 << iota
	// RoleRestore reads everything and writes nothing.
	RoleRestore
	// RoleAdmin may do everything: create the repository, write the config,
	// keys and gc marks, remove objects (prune, forget).
	RoleAdmin
	// RoleViewer reads the fleet's state (hosts, jobs, runs, alerts) and
	// nothing of any repository: for dashboards and monitoring.
	RoleViewer
)

var roleNames = []struct {
	r    Role
	name string
}{{RoleBackup, "backup"}, {RoleRestore, "restore"}, {RoleAdmin, "admin"}, {RoleViewer, "viewer"}}

// ParseRoles parses a comma-separated list such as "backup,restore".
func ParseRoles(s string) (Role, error) {
	var r Role
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		found := false
		for _, rn := range roleNames {
			if part == rn.name {
				r |= rn.r
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown role %q (roles: backup, restore, admin, viewer; combine with commas)", part)
		}
	}
	return r, nil
}

// String returns the roles comma-separated.
func (r Role) String() string {
	var names []string
	for _, rn := range roleNames {
		if r&rn.r != 0 {
			names = append(names, rn.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// MarshalText writes the roles as String does.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses what MarshalText wrote.
func (r *Role) UnmarshalText(b []byte) error {
	v, err := ParseRoles(string(b))
	*r = v
	return err
}

// Op is what a request does.
type Op string

// The operations of the protocol.
const (
	OpCreate Op = "create"
	OpList   Op = "list"
	OpStat   Op = "stat"
	OpLoad   Op = "load"
	OpSave   Op = "save"
	OpRemove Op = "remove"
)

// Allows reports whether r may do op on objects of type t.
func (r Role) Allows(op Op, t storage.FileType) bool {
	if r&RoleAdmin != 0 {
		return true
	}
	switch op {
	case OpList, OpStat:
		return r&(RoleBackup|RoleRestore) != 0
	case OpLoad:
		if r&RoleRestore != 0 {
			return true
		}
		if r&RoleBackup != 0 {
			switch t {
			case storage.Config, storage.Key, storage.Index, storage.GCMark:
				return true
			}
		}
	case OpSave:
		if r&RoleBackup != 0 {
			switch t {
			case storage.Pack, storage.Index, storage.Snapshot:
				return true
			}
		}
	}
	return false
}
