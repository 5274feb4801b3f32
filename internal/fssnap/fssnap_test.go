//go:build linux

package fssnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseMountinfo(t *testing.T) {
	in := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue
40 22 253:2 / /srv/my\040data rw,relatime - xfs /dev/mapper/vg0-data rw,attr2
41 22 0:39 /sv /home rw,relatime shared:30 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=256,subvol=/sv
42 22 0:40 / /weird\134name\011x rw - tmpfs tmpfs rw

`
	got, err := ParseMountinfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{ID: 22, Parent: 1, Major: 8, Minor: 1, Root: "/", Point: "/", Options: "rw,relatime", FSType: "ext4", Source: "/dev/sda1", SuperOptions: "rw,errors=remount-ro"},
		{ID: 36, Parent: 35, Major: 98, Minor: 0, Root: "/mnt1", Point: "/mnt2", Options: "rw,noatime", FSType: "ext3", Source: "/dev/root", SuperOptions: "rw,errors=continue"},
		{ID: 40, Parent: 22, Major: 253, Minor: 2, Root: "/", Point: "/srv/my data", Options: "rw,relatime", FSType: "xfs", Source: "/dev/mapper/vg0-data", SuperOptions: "rw,attr2"},
		{ID: 41, Parent: 22, Major: 0, Minor: 39, Root: "/sv", Point: "/home", Options: "rw,relatime", FSType: "btrfs", Source: "/dev/loop0", SuperOptions: "rw,space_cache=v2,subvolid=256,subvol=/sv"},
		{ID: 42, Parent: 22, Major: 0, Minor: 40, Root: "/", Point: "/weird\\name\tx", Options: "rw", FSType: "tmpfs", Source: "tmpfs", SuperOptions: "rw"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", got, want)
	}
	for _, bad := range []string{
		"22 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw", // no separator
		"x 1 8:1 / / rw - ext4 /dev/sda1 rw",
		"22 1 81 / / rw - ext4 /dev/sda1 rw",
		"22 1 8:1 / relative rw - ext4 /dev/sda1 rw",
		"22 1 8:1 / / rw -",
	} {
		if _, err := ParseMountinfo(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	// this machine's own table parses
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		defer f.Close()
		ms, err := ParseMountinfo(f)
		if err != nil || len(ms) == 0 {
			t.Fatalf("/proc/self/mountinfo: %d mounts, %v", len(ms), err)
		}
		if m, ok := FindMount(ms, "/"); !ok || m.Point != "/" {
			t.Fatalf("no mount for /: %+v", m)
		}
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`a\040b`:    "a b",
		`\134`:      `\`,
		`a\012`:     "a\n",
		`trail\04`:  `trail\04`,
		`\999`:      `\999`,
		`plain`:     "plain",
		`\040\040x`: "  x",
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFindMount(t *testing.T) {
	ms := []Mount{
		{ID: 1, Point: "/"},
		{ID: 2, Point: "/srv/data"},
		{ID: 3, Point: "/srv"},
		{ID: 4, Point: "/srv/data"}, // mounted over 2
	}
	for path, want := range map[string]int{
		"/":               1,
		"/etc":            1,
		"/srv":            3,
		"/srv/x":          3,
		"/srv/data":       4,
		"/srv/data/a/b":   4,
		"/srv/data2":      3,
		"/srv/database/x": 3,
	} {
		m, ok := FindMount(ms, path)
		if !ok || m.ID != want {
			t.Errorf("FindMount(%s) = %+v, want mount %d", path, m, want)
		}
	}
	if _, ok := FindMount(nil, "/x"); ok {
		t.Error("found a mount in an empty table")
	}
}

func TestSizeArgs(t *testing.T) {
	for in, want := range map[string]string{
		"":           "--extents 10%ORIGIN",
		"20%":        "--extents 20%ORIGIN",
		"50%FREE":    "--extents 50%FREE",
		"5%vg":       "--extents 5%VG",
		"150%origin": "--extents 150%ORIGIN",
		"2G":         "--size 2G",
		"512m":       "--size 512m",
		"1.5T":       "--size 1.5T",
		"100":        "--size 100",
	} {
		got, err := sizeArgs(in)
		if err != nil || strings.Join(got, " ") != want {
			t.Errorf("sizeArgs(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "0%", "-1G", "2GB", "10%ORIGINS", "ten", "2 G", "%", "0G"} {
		if got, err := sizeArgs(bad); err == nil {
			t.Errorf("sizeArgs(%q) = %v, want an error", bad, got)
		}
	}
}

// fake is a machine for tests: commands are recorded and answered by the
// first matching rule.
type fake struct {
	t       *testing.T
	cmds    []string
	rules   []rule
	stats   map[string][3]uint64 // path: dev, ino, isDir
	globs   map[string][]string
	exists  map[string]bool
	removed []string
	missing map[string]bool // commands not installed
	euid    int
	mounts  []Mount
	sysfs   string
	devs    map[string]uint64 // block devices: path -> number
}

type rule struct {
	prefix string
	out    string
	err    error
	times  int // answer this many times (0: always)
}

func newFake(t *testing.T, mountinfo string) *fake {
	ms, err := ParseMountinfo(strings.NewReader(mountinfo))
	if err != nil {
		t.Fatal(err)
	}
	return &fake{t: t, mounts: ms, stats: map[string][3]uint64{}, globs: map[string][]string{}, exists: map[string]bool{}, missing: map[string]bool{}, sysfs: t.TempDir()}
}

func (f *fake) on(prefix, out string, err error) *fake {
	f.rules = append(f.rules, rule{prefix: prefix, out: out, err: err})
	return f
}

// dm makes a device-mapper device in the fake /sys.
func (f *fake) dm(majmin, name, uuid string) {
	dir := filepath.Join(f.sysfs, "dev", "block", majmin, "dm")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		f.t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "name"), []byte(name+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "uuid"), []byte(uuid+"\n"), 0o644)
}

func (f *fake) system() *system {
	tempN := 0
	return &system{
		run: func(ctx context.Context, name string, args ...string) (string, error) {
			line := strings.Join(append([]string{name}, args...), " ")
			f.cmds = append(f.cmds, line)
			for i := range f.rules {
				r := &f.rules[i]
				if strings.HasPrefix(line, r.prefix) {
					if r.err != nil {
						return r.out, fmt.Errorf("%s: %w", line, r.err)
					}
					return r.out, nil
				}
			}
			return "", nil
		},
		lookPath: func(name string) (string, error) {
			if f.missing[name] {
				return "", errors.New("not found")
			}
			return "/usr/sbin/" + name, nil
		},
		euid:      func() int { return f.euid },
		mountinfo: func() ([]Mount, error) { return f.mounts, nil },
		sysfs:     f.sysfs,
		stat: func(p string) (uint64, uint64, bool, error) {
			st, ok := f.stats[p]
			if !ok {
				return 0, 0, false, &os.PathError{Op: "lstat", Path: p, Err: os.ErrNotExist}
			}
			return st[0], st[1], st[2] == 1, nil
		},
		blockDev: func(p string) (uint64, bool) {
			rdev, ok := f.devs[p]
			return rdev, ok
		},
		resolve: func(p string) (string, bool, error) {
			st, ok := f.stats[p]
			if !ok {
				return p, true, nil // plain directories need no stat entry
			}
			return p, st[2] == 1, nil
		},
		mkdirTemp: func() (string, error) { tempN++; return fmt.Sprintf("/tmp/floe-snap-mnt%d", tempN), nil },
		removeDir: func(p string) error { f.removed = append(f.removed, p); return nil },
		glob:      func(p string) ([]string, error) { return f.globs[p], nil },
		exists:    func(p string) bool { return f.exists[p] },
		random:    func() string { return "abc123" },
		sleep:     func(time.Duration) {},
	}
}

func (f *fake) wantCmds(want ...string) {
	f.t.Helper()
	if !reflect.DeepEqual(f.cmds, want) {
		f.t.Fatalf("commands:\n  %s\nwant:\n  %s", strings.Join(f.cmds, "\n  "), strings.Join(want, "\n  "))
	}
	f.cmds = nil
}

const lvmMounts = `22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 253:2 / /srv rw,relatime - ext4 /dev/mapper/vg0-srv rw
41 22 253:3 / /var/lib/db rw,relatime - xfs /dev/mapper/vg0-db rw
42 22 253:4 / /thin rw,relatime - ext4 /dev/mapper/vg0-thinvol rw
43 22 253:2 /sub /bind rw,relatime - ext4 /dev/mapper/vg0-srv rw
44 22 253:9 / /secret rw,relatime - ext4 /dev/mapper/crypt rw
45 22 0:39 / /btr rw,relatime - btrfs /dev/loop0 rw
`

func lvmFake(t *testing.T) *fake {
	f := newFake(t, lvmMounts)
	f.dm("253:2", "vg0-srv", "LVM-aaaabbbb")
	f.dm("253:3", "vg0-db", "LVM-aaaacccc")
	f.dm("253:4", "vg0-thinvol", "LVM-aaaadddd")
	f.dm("253:9", "crypt", "CRYPT-LUKS2-1234-crypt")
	f.on("lvs --noheadings --separator | -o vg_name,lv_name,segtype /dev/mapper/vg0-srv", "  vg0|srv|linear\n", nil)
	f.on("lvs --noheadings --separator | -o vg_name,lv_name,segtype /dev/mapper/vg0-db", "  vg0|db|striped\n", nil)
	f.on("lvs --noheadings --separator | -o vg_name,lv_name,segtype /dev/mapper/vg0-thinvol", "  vg0|thinvol|thin\n", nil)
	f.on("lvs --noheadings -o lv_name vg0", "  srv\n  db\n  thinvol\n  pool\n", nil)
	f.exists["/dev/mapper/vg0-floe--snap--abc123"] = true
	return f
}

func TestLVMCommands(t *testing.T) {
	ctx := context.Background()
	f := lvmFake(t)
	s, err := Create(ctx, []string{"/srv/www", "/srv", "/bind/x", "/var/lib/db"}, Options{Kind: LVM, sys: f.system()})
	if err != nil {
		t.Fatal(err)
	}
	f.wantCmds(
		"lvs --noheadings --separator | -o vg_name,lv_name,segtype /dev/mapper/vg0-srv",
		"lvs --noheadings -o lv_name vg0",
		"lvcreate --snapshot --name floe-snap-abc123 --extents 10%ORIGIN vg0/srv",
		"mount -t ext4 -o ro,noload /dev/mapper/vg0-floe--snap--abc123 /tmp/floe-snap-mnt1",
		// /srv is known now (the mount point); /bind is the same LV: no
		// second snapshot
		"lvs --noheadings --separator | -o vg_name,lv_name,segtype /dev/mapper/vg0-srv",
		"lvs --noheadings --separator | -o vg_name,lv_name,segtype /dev/mapper/vg0-db",
		"lvcreate --snapshot --name floe-snap-abc123 --extents 10%ORIGIN vg0/db",
		"mount -t xfs -o ro,nouuid /dev/mapper/vg0-floe--snap--abc123 /tmp/floe-snap-mnt2",
	)
	want := map[string]string{
		"/srv/www":    "/tmp/floe-snap-mnt1/www",
		"/srv":        "/tmp/floe-snap-mnt1",
		"/bind/x":     "/tmp/floe-snap-mnt1/sub/x", // the bind mount shows /sub of the file system
		"/bind":       "/tmp/floe-snap-mnt1/sub",
		"/var/lib/db": "/tmp/floe-snap-mnt2",
	}
	if got := s.Sources(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sources %v, want %v", got, want)
	}
	f.on("lvs --noheadings -o lv_attr,snap_percent vg0/floe-snap-abc123", "  swi-a-s--- 12.50\n", nil)
	if err := s.Check(ctx); err != nil {
		t.Fatal(err)
	}
	f.cmds = nil
	if err := s.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	f.wantCmds(
		"umount /tmp/floe-snap-mnt2",
		"lvremove -f vg0/floe-snap-abc123",
		"umount /tmp/floe-snap-mnt1",
		"lvremove -f vg0/floe-snap-abc123",
	)
	if !reflect.DeepEqual(f.removed, []string{"/tmp/floe-snap-mnt2", "/tmp/floe-snap-mnt1"}) {
		t.Errorf("removed mount points %v", f.removed)
	}
	if err := s.Remove(ctx); err != nil || len(f.cmds) != 0 {
		t.Fatalf("a second Remove: %v, commands %v", err, f.cmds)
	}
}

// A logical volume given as an image (backup --image /dev/vg0/db) is
// read from a snapshot of itself, which is not mounted.
func TestLVMImage(t *testing.T) {
	ctx := context.Background()
	f := lvmFake(t)
	f.devs = map[string]uint64{"/dev/vg0/db": 253<<8 | 3, "/dev/vg0/srv": 253<<8 | 2, "/dev/mapper/crypt": 253<<8 | 9}
	s, err := Create(ctx, []string{"/dev/vg0/db", "/srv", "/dev/vg0/srv"}, Options{Kind: LVM, sys: f.system()})
	if err != nil {
		t.Fatal(err)
	}
	f.wantCmds(
		"lvs --noheadings --separator | -o vg_name,lv_name,segtype /dev/mapper/vg0-db",
		"lvs --noheadings -o lv_name vg0",
		"lvcreate --snapshot --name floe-snap-abc123 --extents 10%ORIGIN vg0/db",
		// no mount for the image
		"lvs --noheadings --separator | -o vg_name,lv_name,segtype /dev/mapper/vg0-srv",
		"lvcreate --snapshot --name floe-snap-abc123 --extents 10%ORIGIN vg0/srv",
		"mount -t ext4 -o ro,noload /dev/mapper/vg0-floe--snap--abc123 /tmp/floe-snap-mnt1",
		// the same volume as an image: the same snapshot, read as a device
		"lvs --noheadings --separator | -o vg_name,lv_name,segtype /dev/mapper/vg0-srv",
	)
	want := map[string]string{
		"/dev/vg0/db":  "/dev/mapper/vg0-floe--snap--abc123",
		"/dev/vg0/srv": "/dev/mapper/vg0-floe--snap--abc123",
		"/srv":         "/tmp/floe-snap-mnt1",
	}
	if got := s.Sources(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sources %v, want %v", got, want)
	}
	if d := s.Describe(); len(d) != 2 || !strings.Contains(d[0], "read as the device") || !strings.Contains(d[1], "mounted at") {
		t.Fatalf("describe %q", d)
	}
	if err := s.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	f.wantCmds(
		"umount /tmp/floe-snap-mnt1",
		"lvremove -f vg0/floe-snap-abc123",
		"lvremove -f vg0/floe-snap-abc123",
	)

	// a device that is not a logical volume; a device with btrfs
	f = lvmFake(t)
	f.devs = map[string]uint64{"/dev/mapper/crypt": 253<<8 | 9}
	if _, err := Create(ctx, []string{"/dev/mapper/crypt"}, Options{Kind: LVM, sys: f.system()}); err == nil || !strings.Contains(err.Error(), "not an LVM logical volume") {
		t.Fatalf("a dm-crypt device: %v", err)
	}
	bf := newFake(t, lvmMounts)
	bf.devs = map[string]uint64{"/dev/sdb": 8<<8 | 16}
	if _, err := Create(ctx, []string{"/dev/sdb"}, Options{Kind: Btrfs, sys: bf.system()}); err == nil || !strings.Contains(err.Error(), "use --fs-snapshot lvm") {
		t.Fatalf("a device with btrfs: %v", err)
	}
}

func TestLVMSizeAndThin(t *testing.T) {
	ctx := context.Background()
	f := lvmFake(t)
	s, err := Create(ctx, []string{"/thin", "/srv"}, Options{Kind: LVM, sys: f.system()})
	if err != nil {
		t.Fatal(err)
	}
	if !contains(f.cmds, "lvcreate --snapshot --name floe-snap-abc123 --setactivationskip n vg0/thinvol") {
		t.Errorf("no thin snapshot: %v", f.cmds)
	}
	s.Remove(ctx)

	f = lvmFake(t)
	s, err = Create(ctx, []string{"/thin", "/srv"}, Options{Kind: LVM, Size: "2G", sys: f.system()})
	if err != nil {
		t.Fatal(err)
	}
	if !contains(f.cmds, "lvcreate --snapshot --name floe-snap-abc123 --size 2G vg0/thinvol") ||
		!contains(f.cmds, "lvcreate --snapshot --name floe-snap-abc123 --size 2G vg0/srv") {
		t.Errorf("the size was not used: %v", f.cmds)
	}
	// an overflowed snapshot is reported
	f.on("lvs --noheadings -o lv_attr,snap_percent vg0/floe-snap-abc123", "  swi-I-s--- 100.00\n", nil)
	if err := s.Check(ctx); !errors.Is(err, ErrOverflowed) || !strings.Contains(err.Error(), "overflowed") {
		t.Errorf("Check: %v", err)
	}
	s.Remove(ctx)
}

func TestLVMStaleSnapshotsAreReported(t *testing.T) {
	f := lvmFake(t)
	f.rules = append([]rule{{prefix: "lvs --noheadings -o lv_name vg0", out: "  srv\n  floe-snap-0000aa\n"}}, f.rules...)
	var notes []string
	s, err := Create(context.Background(), []string{"/srv"}, Options{Kind: LVM, sys: f.system(), Warn: func(m string) { notes = append(notes, m) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Remove(context.Background())
	if len(notes) != 1 || !strings.Contains(notes[0], "lvremove vg0/floe-snap-0000aa") {
		t.Fatalf("notes %q", notes)
	}
}

func TestLVMFailuresCleanUp(t *testing.T) {
	ctx := context.Background()

	// the mount fails: the LV made is removed, the error says why
	f := lvmFake(t)
	f.rules = append([]rule{{prefix: "mount ", err: errors.New("exit status 32: wrong fs type")}}, f.rules...)
	_, err := Create(ctx, []string{"/srv"}, Options{Kind: LVM, sys: f.system()})
	if err == nil || !strings.Contains(err.Error(), "mount the snapshot vg0/floe-snap-abc123") || !strings.Contains(err.Error(), "wrong fs type") {
		t.Fatalf("error %v", err)
	}
	if last := f.cmds[len(f.cmds)-1]; last != "lvremove -f vg0/floe-snap-abc123" || contains(f.cmds, "umount /tmp/floe-snap-mnt1") {
		t.Fatalf("commands %v: want lvremove last and no umount", f.cmds)
	}

	// a later path fails: the first snapshot is removed
	f = lvmFake(t)
	_, err = Create(ctx, []string{"/srv", "/"}, Options{Kind: LVM, sys: f.system()})
	if err == nil || !strings.Contains(err.Error(), "path /: it is on /dev/sda1 (ext4, mounted at /), which is not an LVM logical volume") {
		t.Fatalf("error %v", err)
	}
	if n := len(f.cmds); n < 2 || f.cmds[n-2] != "umount /tmp/floe-snap-mnt1" || f.cmds[n-1] != "lvremove -f vg0/floe-snap-abc123" {
		t.Fatalf("commands %v: want the first snapshot removed", f.cmds)
	}

	// lvcreate fails (no room): nothing to remove, a hint
	f = lvmFake(t)
	f.rules = append([]rule{
		{prefix: "lvcreate ", err: errors.New("Volume group \"vg0\" has insufficient free space (0 extents): 25 required.")},
		{prefix: "lvs --noheadings -o lv_name vg0/floe-snap-abc123", err: errors.New("not found")},
	}, f.rules...)
	_, err = Create(ctx, []string{"/srv"}, Options{Kind: LVM, sys: f.system()})
	if !errors.Is(err, ErrNoRoom) || contains(f.cmds, "lvremove -f vg0/floe-snap-abc123") {
		t.Fatalf("error %v, commands %v", err, f.cmds)
	}

	// interrupted between paths: what was made is removed
	f = lvmFake(t)
	cctx, cancel := context.WithCancel(ctx)
	sys := f.system()
	run := sys.run
	sys.run = func(c context.Context, name string, args ...string) (string, error) {
		if name == "mount" {
			cancel()
		}
		return run(c, name, args...)
	}
	_, err = Create(cctx, []string{"/srv", "/var/lib/db"}, Options{Kind: LVM, sys: sys})
	if !errors.Is(err, context.Canceled) || f.cmds[len(f.cmds)-1] != "lvremove -f vg0/floe-snap-abc123" {
		t.Fatalf("error %v, commands %v", err, f.cmds)
	}
}

func TestLVMRemoveFailureSaysHow(t *testing.T) {
	ctx := context.Background()
	f := lvmFake(t)
	s, err := Create(ctx, []string{"/srv"}, Options{Kind: LVM, sys: f.system()})
	if err != nil {
		t.Fatal(err)
	}
	f.rules = append([]rule{{prefix: "lvremove ", err: errors.New("Logical volume vg0/floe-snap-abc123 in use.")}}, f.rules...)
	err = s.Remove(ctx)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"could not remove the LVM snapshot vg0/floe-snap-abc123 of vg0/srv", "in use", "lvremove vg0/floe-snap-abc123", "`lvs`"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "umount") {
		t.Errorf("error %q says to unmount what was unmounted", err)
	}
	if n := strings.Count(strings.Join(f.cmds, "\n"), "lvremove"); n != 3 {
		t.Errorf("lvremove tried %d times, want 3", n)
	}
	// once it works, a second Remove finishes the job
	f.rules = f.rules[1:]
	f.cmds = nil
	if err := s.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	f.wantCmds("lvremove -f vg0/floe-snap-abc123")
}

func TestLVMNotAnLV(t *testing.T) {
	for path, want := range map[string]string{
		"/etc":      "path /etc: it is on /dev/sda1 (ext4, mounted at /), which is not an LVM logical volume",
		"/secret/x": "path /secret/x: it is on /dev/mapper/crypt (ext4, mounted at /secret), a device-mapper device of kind CRYPT, not an LVM logical volume",
		"/btr/x":    "path /btr/x is on btrfs (/dev/loop0, mounted at /btr): it needs a btrfs snapshot",
	} {
		f := lvmFake(t)
		_, err := Create(context.Background(), []string{path}, Options{Kind: LVM, sys: f.system()})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", path, err, want)
		}
		if contains(f.cmds, "lvcreate") {
			t.Errorf("%s: commands %v", path, f.cmds)
		}
	}
}

func TestPreflight(t *testing.T) {
	f := lvmFake(t)
	f.euid = 1000
	err := Preflight(Options{Kind: LVM, sys: f.system()})
	if !errors.Is(err, ErrNeedsRoot) || !strings.Contains(err.Error(), "lvm snapshots need root") {
		t.Errorf("as a user: %v", err)
	}
	f.euid = 0
	f.missing["lvcreate"] = true
	err = Preflight(Options{Kind: LVM, sys: f.system()})
	if err == nil || !strings.Contains(err.Error(), "lvcreate") || !strings.Contains(err.Error(), "Debian package lvm2") {
		t.Errorf("without lvcreate: %v", err)
	}
	f.missing = map[string]bool{"btrfs": true}
	err = Preflight(Options{Kind: Btrfs, sys: f.system()})
	if err == nil || !strings.Contains(err.Error(), "Debian package btrfs-progs") {
		t.Errorf("without btrfs: %v", err)
	}
	if err := Preflight(Options{Kind: "zfs", sys: f.system()}); err == nil || !strings.Contains(err.Error(), "lvm or btrfs") {
		t.Errorf("zfs: %v", err)
	}
	if err := Preflight(Options{Kind: LVM, Size: "lots", sys: f.system()}); err == nil || !strings.Contains(err.Error(), `invalid snapshot size "lots"`) {
		t.Errorf("bad size: %v", err)
	}
	if err := Preflight(Options{Kind: Btrfs, Size: "1G", sys: f.system()}); err == nil {
		t.Errorf("btrfs with a size: no error")
	}
	// Create checks too and runs nothing
	f.euid = 1000
	if _, err := Create(context.Background(), []string{"/srv"}, Options{Kind: LVM, sys: f.system()}); err == nil || len(f.cmds) > 0 {
		t.Errorf("Create as a user: %v, commands %v", err, f.cmds)
	}
}

const btrfsMounts = `22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
45 22 0:39 / /mnt rw,relatime - btrfs /dev/loop0 rw,subvolid=5,subvol=/
46 22 0:39 /sv/deep /deep rw,relatime - btrfs /dev/loop0 rw,subvolid=256,subvol=/sv
47 45 7:1 / /mnt/sv/usb rw,relatime - ext4 /dev/loop1 rw
`

func btrfsFake(t *testing.T) *fake {
	f := newFake(t, btrfsMounts)
	// the top-level subvolume (device 40) holds top/; sv is a subvolume (41)
	f.stats["/mnt"] = [3]uint64{40, 256, 1}
	f.stats["/mnt/top"] = [3]uint64{40, 300, 1}
	f.stats["/mnt/sv"] = [3]uint64{41, 256, 1}
	f.stats["/mnt/sv/dir"] = [3]uint64{41, 257, 1}
	f.stats["/mnt/sv/dir/file"] = [3]uint64{41, 258, 0}
	f.stats["/mnt/sv/usb"] = [3]uint64{50, 2, 1}
	f.stats["/deep"] = [3]uint64{41, 400, 1} // a directory of sv, mounted on its own
	f.stats["/"] = [3]uint64{1, 2, 1}
	f.on("btrfs subvolume show /mnt/sv", "sv\n\tName: \t\t\tsv\n", nil)
	f.on("btrfs subvolume show /mnt", "/\n\tName: \t\t\t<FS_TREE>\n", nil)
	f.on("btrfs subvolume list -o /mnt/sv", "ID 300 gen 1 top level 256 path sv/inner dir\nID 301 gen 1 top level 256 path sv/.floe-snap-0000aa\n", nil)
	f.on("btrfs subvolume list -o /mnt", "ID 256 gen 9 top level 5 path sv\n", nil)
	return f
}

// snapshotCmds drops the commands that only look.
func (f *fake) snapshotCmds() *fake {
	var kept []string
	for _, c := range f.cmds {
		if !strings.HasPrefix(c, "btrfs subvolume show ") && !strings.HasPrefix(c, "btrfs subvolume list ") {
			kept = append(kept, c)
		}
	}
	f.cmds = kept
	return f
}

func TestBtrfsCommands(t *testing.T) {
	ctx := context.Background()
	f := btrfsFake(t)
	f.globs["/mnt/sv/.floe-snap-*"] = []string{"/mnt/sv/.floe-snap-0000aa"}
	var notes []string
	s, err := Create(ctx, []string{"/mnt/sv/dir", "/mnt/sv/dir/file", "/mnt/top"}, Options{Kind: Btrfs, sys: f.system(), Warn: func(m string) { notes = append(notes, m) }})
	if err != nil {
		t.Fatal(err)
	}
	f.wantCmds(
		"btrfs subvolume show /mnt/sv",
		"btrfs subvolume list -o /mnt/sv",
		"btrfs subvolume snapshot -r /mnt/sv /mnt/sv/.floe-snap-abc123",
		"btrfs subvolume show /mnt",
		"btrfs subvolume list -o /mnt",
		"btrfs subvolume snapshot -r /mnt /mnt/.floe-snap-abc123",
	)
	want := map[string]string{
		"/mnt/sv/dir":      "/mnt/sv/.floe-snap-abc123/dir",
		"/mnt/sv/dir/file": "/mnt/sv/.floe-snap-abc123/dir/file",
		"/mnt/top":         "/mnt/.floe-snap-abc123/top",
		"/mnt/sv":          "/mnt/sv/.floe-snap-abc123", // the subvolumes' roots
		"/mnt":             "/mnt/.floe-snap-abc123",
	}
	if got := s.Sources(); !reflect.DeepEqual(got, want) {
		t.Fatalf("sources %v, want %v", got, want)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "btrfs subvolume delete /mnt/sv/.floe-snap-0000aa") {
		t.Errorf("notes %q: want the stale snapshot", notes)
	}
	if err := s.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	f.snapshotCmds().wantCmds(
		"btrfs subvolume delete /mnt/.floe-snap-abc123",
		"btrfs subvolume delete /mnt/sv/.floe-snap-abc123",
	)

	// file systems and subvolumes below a path, not given as paths, are named
	f = btrfsFake(t)
	notes = nil
	s, err = Create(ctx, []string{"/mnt/sv"}, Options{Kind: Btrfs, sys: f.system(), Warn: func(m string) { notes = append(notes, m) }})
	if err != nil {
		t.Fatal(err)
	}
	s.Remove(ctx)
	if len(notes) != 2 || !strings.Contains(notes[0], "/mnt/sv/inner dir is another btrfs subvolume; the btrfs snapshot of /mnt/sv does not hold it") ||
		!strings.Contains(notes[1], "/mnt/sv/usb is another file system (ext4 on /dev/loop1)") {
		t.Errorf("notes %q: want /mnt/sv/inner dir and /mnt/sv/usb", notes)
	}
	f = btrfsFake(t)
	notes = nil
	s, err = Create(ctx, []string{"/mnt", "/mnt/sv"}, Options{Kind: Btrfs, sys: f.system(), Warn: func(m string) { notes = append(notes, m) }})
	if err != nil {
		t.Fatal(err)
	}
	s.Remove(ctx)
	if len(notes) != 2 || !strings.Contains(notes[0], "/mnt/sv/inner dir") || !strings.Contains(notes[1], "/mnt/sv/usb") {
		t.Errorf("notes %q: want /mnt/sv/inner dir and /mnt/sv/usb, not /mnt/sv (given as a path)", notes)
	}
	// a path inside the subvolume sv: all of sv is read from its snapshot
	f = btrfsFake(t)
	notes = nil
	s, err = Create(ctx, []string{"/mnt", "/mnt/sv/dir/file"}, Options{Kind: Btrfs, sys: f.system(), Warn: func(m string) { notes = append(notes, m) }})
	if err != nil {
		t.Fatal(err)
	}
	s.Remove(ctx)
	if src := s.Sources()["/mnt/sv"]; src != "/mnt/sv/.floe-snap-abc123" {
		t.Errorf("/mnt/sv is read from %q", src)
	}
	if len(notes) != 2 || !strings.Contains(notes[0], "/mnt/sv/inner dir") || !strings.Contains(notes[1], "/mnt/sv/usb") {
		t.Errorf("notes %q: want /mnt/sv/inner dir and /mnt/sv/usb", notes)
	}
}

func TestBtrfsErrors(t *testing.T) {
	ctx := context.Background()
	for path, want := range map[string]string{
		"/etc":  "path /etc is on ext4 (/dev/sda1, mounted at /), not on btrfs",
		"/deep": "is a directory inside a subvolume, not a subvolume's root",
	} {
		f := btrfsFake(t)
		_, err := Create(ctx, []string{path}, Options{Kind: Btrfs, sys: f.system()})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", path, err, want)
		}
	}

	// the snapshot fails for the second path: the first is deleted
	f := btrfsFake(t)
	f.on("btrfs subvolume snapshot -r /mnt /", "", errors.New("Permission denied"))
	_, err := Create(ctx, []string{"/mnt/sv/dir", "/mnt/top"}, Options{Kind: Btrfs, sys: f.system()})
	if err == nil || !strings.Contains(err.Error(), "snapshot the btrfs subvolume /mnt (for /mnt/top)") {
		t.Fatalf("error %v", err)
	}
	f.snapshotCmds().wantCmds(
		"btrfs subvolume snapshot -r /mnt/sv /mnt/sv/.floe-snap-abc123",
		"btrfs subvolume snapshot -r /mnt /mnt/.floe-snap-abc123",
		"btrfs subvolume delete /mnt/sv/.floe-snap-abc123",
	)

	// deleting fails: the error says how to do it by hand
	f = btrfsFake(t)
	s, err := Create(ctx, []string{"/mnt/sv"}, Options{Kind: Btrfs, sys: f.system()})
	if err != nil {
		t.Fatal(err)
	}
	f.exists["/mnt/sv/.floe-snap-abc123"] = true
	f.on("btrfs subvolume delete", "", errors.New("Device or resource busy"))
	err = s.Remove(ctx)
	if err == nil || !strings.Contains(err.Error(), "btrfs subvolume delete /mnt/sv/.floe-snap-abc123") || !strings.Contains(err.Error(), "btrfs subvolume list /mnt/sv") {
		t.Fatalf("error %v", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s || strings.HasPrefix(x, s+" ") {
			return true
		}
	}
	return false
}
