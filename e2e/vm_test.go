//go:build linux

package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// A small VM for tests that need kernel features this machine's kernel
// lacks (device-mapper for LVM): Debian's kernel under qemu's software
// emulation (TCG, no /dev/kvm needed), booted with an initramfs made here
// of busybox and the kernel modules the tests need. The guest's init
// mounts the host's root file system, shared read-only over virtio-9p,
// puts fresh tmpfs on /tmp, /run and /var/tmp, chroots into it and runs a
// script from a second, writable share; so the guest runs the host's own
// lvm2, e2fsprogs and test binaries, and hands its output back through
// that share. scripts/test.sh installs qemu-system-x86 and busybox-static
// and unpacks the kernel package (not installed on the host) into a cache
// directory named by FLOE_E2E_VM_KERNEL.

// vmKernelEnv names a directory holding an unpacked Debian kernel package
// (dpkg-deb -x linux-image-*-amd64.deb DIR): DIR/boot/vmlinuz-VERSION and
// DIR/lib/modules/VERSION.
const vmKernelEnv = "FLOE_E2E_VM_KERNEL"

// vmShareTag and vmHostRootTag are the 9p mount tags of the writable
// share and of the host's root file system; vmShareDir is where the share
// is mounted inside the chroot.
const (
	vmHostRootTag = "hostroot"
	vmShareTag    = "floevm"
	vmShareDir    = "/tmp/floe-vm"
)

// vmInit is the guest's /init, run by busybox. It loads the modules listed
// in /modules in that order (dependencies first), mounts the shares and
// chroots into the host's root to run the share's run.sh. LVM gets a
// writable copy of the host's /etc/lvm (it writes metadata backups there)
// with udev switched off: no udev runs in the guest, so LVM makes the
// /dev/VG/LV nodes itself instead of waiting for udev to.
var vmInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do
	insmod /lib/modules/$m.ko || echo "floe-vm: insmod $m failed"
done
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose ` + vmHostRootTag + ` /newroot || echo "floe-vm: mounting the host's root failed"
for d in tmp run var/tmp; do mount -t tmpfs tmpfs /newroot/$d; done
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mkdir /newroot` + vmShareDir + `
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ` + vmShareTag + ` /newroot` + vmShareDir + ` || echo "floe-vm: mounting the share failed"
if [ -d /newroot/etc/lvm ]; then
	mkdir /lvm-etc
	cp -a /newroot/etc/lvm/. /lvm-etc/
	printf 'activation {\n\tudev_sync = 0\n\tudev_rules = 0\n}\n' >> /lvm-etc/lvmlocal.conf
	mount --bind /lvm-etc /newroot/etc/lvm
fi
chroot /newroot /bin/sh ` + vmShareDir + `/run.sh
echo "floe-vm: run.sh exited with $?"
sync
reboot -f
`

// vmKernel is a kernel to boot and the directory of its modules.
type vmKernel struct {
	vmlinuz, modules string
}

// findVMKernel looks in dir (see vmKernelEnv) for one kernel and its
// modules.
func findVMKernel(dir string) (vmKernel, error) {
	images, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(images) == 0 {
		return vmKernel{}, fmt.Errorf("no boot/vmlinuz-* in %s", dir)
	}
	sort.Strings(images)
	vmlinuz := images[len(images)-1]
	version := strings.TrimPrefix(filepath.Base(vmlinuz), "vmlinuz-")
	modules := filepath.Join(dir, "lib", "modules", version)
	if _, err := os.Stat(modules); err != nil {
		return vmKernel{}, fmt.Errorf("the modules of %s: %w", vmlinuz, err)
	}
	return vmKernel{vmlinuz: vmlinuz, modules: modules}, nil
}

// modName is a module's name as the kernel and modinfo's depends= spell
// it: dashes and underscores are the same.
func modName(s string) string {
	s = strings.TrimSuffix(s, filepath.Ext(s)) // .xz, .zst, .gz or .ko
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// resolveModules returns the named modules with everything they depend
// on, dependencies first, each as its uncompressed bytes. Dependencies are
// read from each module's .modinfo section (Debian's kernel package ships
// no modules.dep: depmod makes it when the package is installed).
func (k vmKernel) resolveModules(names []string) (order []string, data map[string][]byte, err error) {
	files := map[string]string{}
	err = filepath.WalkDir(k.modules, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.Contains(d.Name(), ".ko") {
			files[modName(d.Name())] = p
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	// modules built into the kernel need no loading
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(k.modules, "modules.builtin")); err == nil {
		for _, line := range strings.Fields(string(b)) {
			builtin[modName(filepath.Base(line))] = true
		}
	}
	data = map[string][]byte{}
	visiting := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		name = modName(name)
		if _, done := data[name]; done || builtin[name] {
			return nil
		}
		if visiting[name] {
			return fmt.Errorf("module %s depends on itself", name)
		}
		visiting[name] = true
		p, ok := files[name]
		if !ok {
			return fmt.Errorf("no module %s under %s (built into the kernel? then leave it out)", name, k.modules)
		}
		b, err := readModule(p)
		if err != nil {
			return err
		}
		deps, err := moduleDepends(b)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		data[name] = b
		order = append(order, name)
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, nil, err
		}
	}
	return order, data, nil
}

// readModule reads a .ko file, decompressing .ko.xz and .ko.zst (newer
// Debian kernels) with the xz or zstd command: busybox's insmod in the
// guest loads plain ELF files.
func readModule(p string) ([]byte, error) {
	var tool string
	switch {
	case strings.HasSuffix(p, ".ko"):
		return os.ReadFile(p)
	case strings.HasSuffix(p, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(p, ".ko.zst"):
		tool = "zstd"
	default:
		return nil, fmt.Errorf("%s: unknown module compression", p)
	}
	out, err := exec.Command(tool, "-dc", p).Output()
	if err != nil {
		return nil, fmt.Errorf("decompressing %s with %s (Debian package %s): %w", p, tool, map[string]string{"xz": "xz-utils", "zstd": "zstd"}[tool], err)
	}
	return out, nil
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, err
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// staticELF reports whether the file at p is a statically linked
// executable (no program interpreter): the initramfs has no libraries.
func staticELF(p string) (bool, error) {
	f, err := elf.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// cpioWriter writes a gzip-compressed cpio archive in the "newc" format,
// the one the kernel unpacks as an initramfs.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(data)
	for b.Len()%4 != 0 { // each entry starts on a multiple of 4
		b.WriteByte(0)
	}
	_, c.err = c.w.Write(b.Bytes())
}

func (c *cpioWriter) dir(name string)                      { c.entry(name, 0o040755, 0, 0, nil) }
func (c *cpioWriter) file(name string, m uint32, b []byte) { c.entry(name, 0o100000|m, 0, 0, b) }
func (c *cpioWriter) chardev(name string, major, minor int) {
	c.entry(name, 0o020600, major, minor, nil)
}
func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.err
}

// buildInitramfs writes the guest's initramfs to dst: a static busybox,
// the kernel modules given with their dependencies, and vmInit.
func buildInitramfs(dst, busybox string, k vmKernel, modules []string) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	order, mods, err := k.resolveModules(modules)
	if err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	c := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "dev", "proc", "sys", "lib", "lib/modules"} {
		c.dir(d)
	}
	c.chardev("dev/console", 5, 1)
	c.file("bin/busybox", 0o755, bb)
	c.file("init", 0o755, []byte(vmInit))
	c.file("modules", 0o644, []byte(strings.Join(order, "\n")+"\n"))
	for _, m := range order {
		c.file("lib/modules/"+m+".ko", 0o644, mods[m])
	}
	if err := c.close(); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	return f.Close()
}

// vmRun is one boot of the VM.
type vmRun struct {
	qemu, initrd string
	kernel       vmKernel
	share        string // the host directory shared writable as vmShareDir
	memory       string // qemu -m
	cpus         int
}

// run boots the VM, which runs share/run.sh and powers off, and returns
// the serial console's output. It kills qemu when ctx ends.
func (v vmRun) run(ctx context.Context) (console string, err error) {
	args := []string{
		"-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-nic", "none",
		"-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
		"-m", v.memory, "-smp", fmt.Sprint(v.cpus),
		"-kernel", v.kernel.vmlinuz, "-initrd", v.initrd,
		// quiet: the kernel's log goes to the console only from errors on
		"-append", "console=ttyS0 panic=-1 quiet loglevel=3",
		// the host's root, read-only; multidevs=remap because /proc, /sys
		// and other mounts lie under it (without it inode numbers of
		// different file systems collide in the guest)
		"-virtfs", "local,path=/,mount_tag=" + vmHostRootTag + ",security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + v.share + ",mount_tag=" + vmShareTag + ",security_model=none",
		// entropy for the guest's getrandom (Go's crypto/rand)
		"-device", "virtio-rng-pci",
	}
	cmd := exec.CommandContext(ctx, v.qemu, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		return out.String(), fmt.Errorf("the VM did not finish in time: %w", ctx.Err())
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w", v.qemu, err)
	}
	return out.String(), nil
}
