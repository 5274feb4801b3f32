package fssnap

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/floe-backup/floe/internal/pathmatch"
)

// Mount is one line of /proc/self/mountinfo (see proc(5)).
type Mount struct {
	ID, Parent   int
	Major, Minor uint32 // the device (for btrfs an anonymous one, not a subvolume's)
	Root         string // the directory of the file system mounted here ("/" for all of it)
	Point        string // the mount point
	Options      string // per-mount options (ro, nosuid, ...)
	FSType       string // ext4, xfs, btrfs, fuse.sshfs, ...
	Source       string // the device, such as /dev/mapper/vg-root, or a name such as tmpfs
	SuperOptions string // per-file-system options
}

// ParseMountinfo parses the format of /proc/self/mountinfo:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// Paths are unescaped (the kernel writes space, tab, newline and backslash
// as \040, \011, \012 and \134).
func ParseMountinfo(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		m, err := parseMountLine(text)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w: %q", line, err, text)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

func parseMountLine(text string) (Mount, error) {
	f := strings.Split(text, " ")
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 7 || sep < 0 || sep+1 >= len(f) {
		return Mount{}, fmt.Errorf("too few fields")
	}
	var m Mount
	var err error
	if m.ID, err = strconv.Atoi(f[0]); err != nil {
		return Mount{}, fmt.Errorf("mount ID: %w", err)
	}
	if m.Parent, err = strconv.Atoi(f[1]); err != nil {
		return Mount{}, fmt.Errorf("parent ID: %w", err)
	}
	maj, min, ok := strings.Cut(f[2], ":")
	if !ok {
		return Mount{}, fmt.Errorf("device %q is not major:minor", f[2])
	}
	major, err1 := strconv.ParseUint(maj, 10, 32)
	minor, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return Mount{}, fmt.Errorf("device %q is not major:minor", f[2])
	}
	m.Major, m.Minor = uint32(major), uint32(minor)
	m.Root = unescape(f[3])
	m.Point = unescape(f[4])
	m.Options = f[5]
	m.FSType = f[sep+1]
	if sep+2 < len(f) {
		m.Source = unescape(f[sep+2])
	}
	if sep+3 < len(f) {
		m.SuperOptions = f[sep+3]
	}
	if !strings.HasPrefix(m.Point, "/") {
		return Mount{}, fmt.Errorf("mount point %q is not absolute", m.Point)
	}
	return m, nil
}

// unescape undoes the kernel's octal escapes (\040 and so on).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) && isOctal(s[i+1:i+4]) {
			n, _ := strconv.ParseUint(s[i+1:i+4], 8, 8)
			b.WriteByte(byte(n))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := 0; i < 3; i++ {
		if s[i] < '0' || s[i] > '7' {
			return false
		}
	}
	return s[0] <= '3' // at most \377
}

// FindMount returns the mount that path (absolute, without symlinks) is on:
// the one with the longest mount point containing it; of several mounted
// at the same point, the last (the one on top).
func FindMount(mounts []Mount, path string) (*Mount, bool) {
	var best *Mount
	for i := range mounts {
		m := &mounts[i]
		if !pathmatch.Within(path, m.Point) {
			continue
		}
		if best == nil || len(m.Point) >= len(best.Point) {
			best = m
		}
	}
	return best, best != nil
}
