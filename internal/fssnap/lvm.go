//go:build linux

package fssnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/floe-backup/floe/internal/pathmatch"
)

var (
	sizeRe    = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?[bBsSkKmMgGtTpPeE]?$`)
	percentRe = regexp.MustCompile(`^([0-9]+)%(?i:(origin|vg|free|pvs))?$`)
)

// ValidateSize checks an LVM snapshot size before anything starts
// (a bad value is wrong usage).
func ValidateSize(size string) error {
	_, err := sizeArgs(size)
	return err
}

// sizeArgs turns an LVM snapshot size into lvcreate's arguments.
func sizeArgs(size string) ([]string, error) {
	if size == "" {
		return []string{"--extents", "10%ORIGIN"}, nil
	}
	if m := percentRe.FindStringSubmatch(size); m != nil && strings.TrimLeft(m[1], "0") != "" {
		of := strings.ToUpper(m[2])
		if of == "" {
			of = "ORIGIN"
		}
		return []string{"--extents", m[1] + "%" + of}, nil
	}
	if sizeRe.MatchString(size) && strings.Trim(size, "0.bBsSkKmMgGtTpPeE") != "" {
		return []string{"--size", size}, nil
	}
	return nil, fmt.Errorf("invalid snapshot size %q: give a size such as 2G, or a percentage such as 20%% (of the volume) or 50%%FREE (of the volume group's free space)", size)
}

// mountOptions mounts a snapshot read-only without touching it: no journal
// replay on ext3/4 (the snapshot was taken of a frozen file system), and for
// xfs a second file system with the same UUID must be allowed.
func mountOptions(fstype string) string {
	switch fstype {
	case "ext3", "ext4":
		return "ro,noload"
	case "xfs":
		return "ro,nouuid"
	}
	return "ro"
}

// ErrNoRoom is wrapped by the error about an LVM snapshot that the volume
// group has no room for: a smaller size may fit.
var ErrNoRoom = errors.New("the volume group needs free space for the snapshot")

// ErrBtrfsNotLVM is wrapped by the error about an LVM snapshot asked of a
// path on btrfs.
var ErrBtrfsNotLVM = errors.New("it needs a btrfs snapshot, not an LVM one")

// lvm snapshots the logical volume under the mount m of real (the resolved
// path p), mounts the snapshot read-only on a new temporary directory, and
// returns where real is in it.
func (s *Set) lvm(ctx context.Context, p, real string, m *Mount, size string, warn func(string), warned map[string]bool) (string, error) {
	if m.FSType == "btrfs" {
		return "", fmt.Errorf("path %s is on btrfs (%s, mounted at %s): %w (a block-level copy of a mounted btrfs would show the kernel two file systems with one UUID)", p, m.Source, m.Point, ErrBtrfsNotLVM)
	}
	vg, lv, segtype, err := s.sys.logicalVolume(ctx, m)
	if err != nil {
		return "", fmt.Errorf("path %s: %w", p, err)
	}
	sn, dev, err := s.lvmSnapshot(ctx, p, vg, lv, segtype, size, warn, warned)
	if err != nil {
		return "", err
	}
	if !sn.mounted {
		if sn.dir, err = s.sys.mkdirTemp(); err != nil {
			return "", fmt.Errorf("make a mount point for the snapshot: %w", err)
		}
		if _, err := s.sys.run(ctx, "mount", "-t", m.FSType, "-o", mountOptions(m.FSType), dev, sn.dir); err != nil {
			return "", fmt.Errorf("mount the snapshot %s/%s of %s (for %s): %w", vg, sn.name, sn.of, p, err)
		}
		sn.mounted = true
		sn.root = sn.dir
	}
	// the snapshot shows the whole file system; the mount m may show only
	// its directory m.Root. The mount point too is read from the snapshot
	// should another path hold it.
	at := pathmatch.Rebase(m.Root, "/", sn.root)
	s.sources[m.Point] = at
	return pathmatch.Rebase(real, m.Point, at), nil
}

// lvmSnapshot makes (once per logical volume) a snapshot of vg/lv, for
// the path p, and returns it with its device.
func (s *Set) lvmSnapshot(ctx context.Context, p, vg, lv, segtype, size string, warn func(string), warned map[string]bool) (*snap, string, error) {
	key := "lvm:" + vg + "/" + lv
	if sn := s.byKey[key]; sn != nil {
		return sn, sn.dev, nil
	}
	if !warned["vg:"+vg] {
		warned["vg:"+vg] = true
		if out, err := s.sys.run(ctx, "lvs", "--noheadings", "-o", "lv_name", vg); err == nil {
			var old []string
			for _, name := range strings.Fields(out) {
				if strings.HasPrefix(name, Prefix) {
					old = append(old, vg+"/"+name)
				}
			}
			if len(old) > 0 {
				warn(fmt.Sprintf("warning: LVM snapshots left behind by an earlier floe run: %s; unless a backup is running, unmount them (see mount | grep %s) and remove them with: lvremove %s",
					strings.Join(old, ", "), Prefix, strings.Join(old, " ")))
			}
		}
	}
	sn := &snap{kind: LVM, of: vg + "/" + lv, vg: vg, lv: lv, name: Prefix + s.sys.random(), thin: segtype == "thin"}
	args := []string{"--snapshot", "--name", sn.name}
	if sn.thin && size == "" {
		// a thin snapshot takes its room from the pool; it is made with
		// the activation skip flag unless told otherwise
		args = append(args, "--setactivationskip", "n")
	} else {
		sa, err := sizeArgs(size)
		if err != nil {
			return nil, "", err
		}
		args = append(args, sa...)
	}
	args = append(args, vg+"/"+lv)
	s.snaps = append(s.snaps, sn)
	s.byKey[key] = sn
	if _, err := s.sys.run(ctx, "lvcreate", args...); err != nil {
		// lvcreate undoes a failed creation; if the LV exists anyway,
		// Remove deletes it
		if _, lerr := s.sys.run(ctx, "lvs", "--noheadings", "-o", "lv_name", vg+"/"+sn.name); lerr == nil {
			sn.created = true
		}
		if strings.Contains(err.Error(), "nsufficient free") {
			return nil, "", fmt.Errorf("snapshot the logical volume %s/%s (for %s): %w (%w)", vg, lv, p, err, ErrNoRoom)
		}
		return nil, "", fmt.Errorf("snapshot the logical volume %s/%s (for %s): %w", vg, lv, p, err)
	}
	sn.created = true
	dev, err := s.sys.waitForDevice(vg, sn.name)
	if err != nil {
		return nil, "", err
	}
	sn.dev = dev
	return sn, dev, nil
}

// lvmDevice snapshots the logical volume that is the block device p
// (number rdev; backup --image) and returns the snapshot's device, which
// is read instead: not mounted, the volume's blocks as of one instant.
func (s *Set) lvmDevice(ctx context.Context, p string, rdev uint64, size string, warn func(string), warned map[string]bool) (string, error) {
	m := &Mount{Major: unix.Major(rdev), Minor: unix.Minor(rdev), Source: p, FSType: "a block device", Point: "nowhere"}
	vg, lv, segtype, err := s.sys.logicalVolume(ctx, m)
	if err != nil {
		return "", fmt.Errorf("image %s: %w", p, err)
	}
	_, dev, err := s.lvmSnapshot(ctx, p, vg, lv, segtype, size, warn, warned)
	return dev, err
}

// logicalVolume finds the LVM logical volume behind a mount: its device
// must be a device-mapper device whose UUID says LVM.
func (sys *system) logicalVolume(ctx context.Context, m *Mount) (vg, lv, segtype string, err error) {
	dm := filepath.Join(sys.sysfs, "dev", "block", fmt.Sprintf("%d:%d", m.Major, m.Minor), "dm")
	name, err := os.ReadFile(filepath.Join(dm, "name"))
	if err != nil {
		return "", "", "", fmt.Errorf("it is on %s (%s, mounted at %s), which is not an LVM logical volume", m.Source, m.FSType, m.Point)
	}
	uuid, _ := os.ReadFile(filepath.Join(dm, "uuid"))
	if !strings.HasPrefix(string(uuid), "LVM-") {
		kind, _, _ := strings.Cut(strings.TrimSpace(string(uuid)), "-")
		if kind == "" {
			kind = "unknown"
		}
		return "", "", "", fmt.Errorf("it is on %s (%s, mounted at %s), a device-mapper device of kind %s, not an LVM logical volume", m.Source, m.FSType, m.Point, kind)
	}
	dev := "/dev/mapper/" + strings.TrimSpace(string(name))
	out, err := sys.run(ctx, "lvs", "--noheadings", "--separator", "|", "-o", "vg_name,lv_name,segtype", dev)
	if err != nil {
		return "", "", "", fmt.Errorf("find the logical volume of %s: %w", dev, err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(strings.TrimSpace(line), "|")
		if len(f) == 3 && f[0] != "" && f[1] != "" {
			return f[0], f[1], f[2], nil
		}
	}
	return "", "", "", fmt.Errorf("find the logical volume of %s: lvs printed %q", dev, strings.TrimSpace(out))
}

// dmEscape doubles dashes, as device-mapper names vg-lv do.
func dmEscape(s string) string { return strings.ReplaceAll(s, "-", "--") }

// waitForDevice waits for the device node of a new LV (udev makes it).
func (sys *system) waitForDevice(vg, lv string) (string, error) {
	candidates := []string{"/dev/mapper/" + dmEscape(vg) + "-" + dmEscape(lv), "/dev/" + vg + "/" + lv}
	deadline := time.Now().Add(sys.waitDevice)
	for {
		for _, c := range candidates {
			if sys.exists(c) {
				return c, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the snapshot %s/%s was made, but its device %s did not appear", vg, lv, candidates[0])
		}
		sys.sleep(100 * time.Millisecond)
	}
}

func (s *Set) removeLVM(ctx context.Context, sn *snap) error {
	manual := func(err error) error {
		var steps []string
		if sn.mounted {
			steps = append(steps, "umount "+sn.dir)
		}
		if sn.created {
			steps = append(steps, "lvremove "+sn.vg+"/"+sn.name)
		}
		return fmt.Errorf("could not remove the LVM snapshot %s/%s of %s: %w\nremove it by hand: %s\n(floe's snapshots are the LVs named %s* in `lvs`)",
			sn.vg, sn.name, sn.of, err, strings.Join(steps, "; "), Prefix)
	}
	if sn.mounted {
		err := s.sys.retry(5, func() error {
			_, err := s.sys.run(ctx, "umount", sn.dir)
			if err != nil && strings.Contains(err.Error(), "not mounted") {
				return nil
			}
			return err
		})
		if err != nil {
			return manual(err)
		}
		sn.mounted = false
	}
	if sn.dir != "" {
		if err := s.sys.removeDir(sn.dir); err != nil && !os.IsNotExist(err) {
			return manual(err)
		}
	}
	if sn.created {
		err := s.sys.retry(3, func() error {
			_, err := s.sys.run(ctx, "lvremove", "-f", sn.vg+"/"+sn.name)
			return err
		})
		if err != nil {
			return manual(err)
		}
		sn.created = false
	}
	return nil
}
