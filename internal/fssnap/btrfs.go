//go:build linux

package fssnap

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/floe-backup/floe/internal/pathmatch"
)

// btrfsRootInode is the inode number of the root directory of every btrfs
// subvolume (BTRFS_FIRST_FREE_OBJECTID), the top-level one included.
const btrfsRootInode = 256

// btrfs snapshots the subvolume holding real (the resolved path p) and
// returns where real is in the snapshot. The snapshot is a read-only
// subvolume .floe-snap-* at the root of the subvolume: the one place on
// the same file system that is sure to be visible.
func (s *Set) btrfs(ctx context.Context, p, real string, isDir bool, m *Mount, warn func(string), warned map[string]bool) (string, error) {
	if m.FSType != "btrfs" {
		return "", fmt.Errorf("path %s is on %s (%s, mounted at %s), not on btrfs", p, m.FSType, m.Source, m.Point)
	}
	start := real
	if !isDir {
		start = filepath.Dir(real)
	}
	root, err := s.sys.subvolumeRoot(start, m.Point)
	if err != nil {
		return "", fmt.Errorf("path %s: %w", p, err)
	}
	key := "btrfs:" + root
	sn := s.byKey[key]
	if sn == nil {
		if !warned[key] {
			warned[key] = true
			if old, _ := s.sys.glob(filepath.Join(root, "."+Prefix+"*")); len(old) > 0 {
				warn(fmt.Sprintf("warning: snapshots left behind by an earlier floe run: %s; unless a backup is running, remove them with: btrfs subvolume delete %s",
					strings.Join(old, ", "), strings.Join(old, " ")))
			}
		}
		s.nested = append(s.nested, s.sys.nestedSubvolumes(ctx, root)...)
		sn = &snap{kind: Btrfs, of: root, path: filepath.Join(root, "."+Prefix+s.sys.random())}
		_, err := s.sys.run(ctx, "btrfs", "subvolume", "snapshot", "-r", root, sn.path)
		if err != nil && !s.sys.exists(sn.path) {
			return "", fmt.Errorf("snapshot the btrfs subvolume %s (for %s): %w", root, p, err)
		}
		sn.created, sn.root = true, sn.path
		s.snaps = append(s.snaps, sn)
		s.byKey[key] = sn
		if err != nil {
			return "", fmt.Errorf("snapshot the btrfs subvolume %s (for %s): %w", root, p, err)
		}
	}
	// the subvolume's root too: read it from the snapshot should another
	// path hold it
	s.sources[root] = sn.path
	return pathmatch.Rebase(real, root, sn.path), nil
}

// subvolumeRoot finds the root of the btrfs subvolume holding the directory
// dir: the highest directory above it, up to the mount point, on the same
// device (each subvolume has a device number of its own).
func (sys *system) subvolumeRoot(dir, mountPoint string) (string, error) {
	dev, _, _, err := sys.stat(dir)
	if err != nil {
		return "", err
	}
	cur := dir
	for cur != mountPoint && cur != "/" {
		parent := filepath.Dir(cur)
		pdev, _, _, err := sys.stat(parent)
		if err != nil {
			return "", err
		}
		if pdev != dev {
			break
		}
		cur = parent
	}
	_, ino, _, err := sys.stat(cur)
	if err != nil {
		return "", err
	}
	if ino != btrfsRootInode {
		return "", fmt.Errorf("the root of its btrfs subvolume is not visible: %s (mounted at %s) is a directory inside a subvolume, not a subvolume's root (a bind mount?); mount the subvolume itself", cur, mountPoint)
	}
	return cur, nil
}

// nestedSubvolumes lists the subvolumes directly inside the subvolume at
// root, which its snapshot shows as empty directories. It is best effort:
// on any error it lists none.
func (sys *system) nestedSubvolumes(ctx context.Context, root string) []boundary {
	show, err := sys.run(ctx, "btrfs", "subvolume", "show", root)
	if err != nil {
		return nil
	}
	// the first line is the subvolume's path from the top level, or "/"
	self, _, _ := strings.Cut(show, "\n")
	self = strings.TrimSpace(self)
	list, err := sys.run(ctx, "btrfs", "subvolume", "list", "-o", root)
	if err != nil {
		return nil
	}
	var out []boundary
	for _, line := range strings.Split(list, "\n") {
		i := strings.Index(line, " path ")
		if i < 0 {
			continue
		}
		sub := strings.TrimSpace(line[i+len(" path "):])
		rel := sub
		if self != "/" {
			var ok bool
			if rel, ok = strings.CutPrefix(sub, self+"/"); !ok {
				continue
			}
		}
		if strings.HasPrefix(filepath.Base(rel), "."+Prefix) {
			continue
		}
		out = append(out, boundary{filepath.Join(root, rel), "another btrfs subvolume"})
	}
	return out
}

func (s *Set) removeBtrfs(ctx context.Context, sn *snap) error {
	if !sn.created {
		return nil
	}
	err := s.sys.retry(3, func() error {
		_, err := s.sys.run(ctx, "btrfs", "subvolume", "delete", sn.path)
		if err != nil && !s.sys.exists(sn.path) {
			return nil // gone after all
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("could not delete the btrfs snapshot %s of %s: %w\nremove it by hand: btrfs subvolume delete %s\n(floe's snapshots are the subvolumes named .%s* in `btrfs subvolume list %s`)",
			sn.path, sn.of, err, sn.path, Prefix, sn.of)
	}
	return nil
}
