//go:build linux

package fssnap

import (
	"fmt"
	"strings"
	"testing"
)

// kernelEscape escapes a path as the kernel writes it in mountinfo
// (fs/proc_namespace.c: mangle escapes space, tab, newline and backslash).
func kernelEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, "\\%03o", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzParseMountinfo: whatever the table holds, parsing neither panics
// nor returns a mount point that is not absolute; and a mount point of
// any name (a directory a user named with spaces, backslashes, newlines
// or octal look-alikes such as "\040") written as the kernel escapes it
// parses back to that name, so that a snapshot is never taken of the
// wrong file system.
func FuzzParseMountinfo(f *testing.F) {
	f.Add([]byte("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n40 22 253:2 / /srv/my\\040data rw - xfs /dev/mapper/vg0-data rw\n"), "/srv/my data")
	f.Add([]byte("42 22 0:40 / /weird\\134name\\011x rw - tmpfs tmpfs rw"), `/a\040b`)
	f.Add([]byte("22 1 8:1 / / rw -\n"), "/x\\\n\t y")
	f.Fuzz(func(t *testing.T, data []byte, point string) {
		if ms, err := ParseMountinfo(strings.NewReader(string(data))); err == nil {
			for _, m := range ms {
				if !strings.HasPrefix(m.Point, "/") {
					t.Fatalf("mount point %q accepted", m.Point)
				}
			}
		}
		if !strings.HasPrefix(point, "/") || strings.ContainsRune(point, 0) {
			return // no such mount point
		}
		line := "36 35 98:0 / " + kernelEscape(point) + " rw,noatime shared:7 - btrfs " + kernelEscape("/dev/"+point[1:]) + " rw,subvol=/\n"
		ms, err := ParseMountinfo(strings.NewReader(line))
		if err != nil || len(ms) != 1 {
			t.Fatalf("%q: %+v, %v", line, ms, err)
		}
		if ms[0].Point != point || ms[0].Source != "/dev/"+point[1:] || ms[0].FSType != "btrfs" {
			t.Fatalf("%q parsed as %+v", line, ms[0])
		}
	})
}
