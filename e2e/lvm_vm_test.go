//go:build linux

package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// vmLVMTests are the tests that need device-mapper; TestLVMInVM runs them
// in a VM where this machine's kernel has none. Each must pass there: a
// skip inside the VM is a failure.
var vmLVMTests = []string{"TestFsSnapshotLVM", "TestImageFsSnapshotLVM"}

// vmModules are the kernel modules the guest loads (with what they depend
// on): virtio-pci and 9p for the shares, virtio-rng for entropy, loop,
// device-mapper with snapshots, and ext4 with the crc32c it asks for at
// mount time (a soft dependency, not in depends=).
var vmModules = []string{
	"virtio_pci", "virtio_rng", "9pnet_virtio", "9p",
	"loop", "dm_mod", "dm_snapshot", "crc32c_generic", "ext4",
}

// requireLVMVM is set by scripts/test.sh, which installs what the VM
// needs: there (and under CI=true) a missing piece fails TestLVMInVM
// instead of skipping it.
const requireLVMVM = "FLOE_REQUIRE_LVM_VM"

// vmGuestEnv is set inside the VM.
const vmGuestEnv = "FLOE_E2E_IN_VM"

func lvmVMUnavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(requireLVMVM) == "1" || os.Getenv("CI") == "true" {
		t.Fatalf("%s (%s=1 or CI=true: scripts/test.sh installs what the VM needs)", msg, requireLVMVM)
	}
	t.Skipf("%s; scripts/test.sh installs what the VM needs", msg)
}

// TestLVMInVM runs the LVM snapshot tests (vmLVMTests) for real where this
// machine's kernel has no device-mapper, as on the development machines
// and CI: inside a VM under qemu's software emulation, booting Debian's
// kernel with the host's root file system shared read-only (see
// vm_test.go). The e2e test binary and the floe under test are built here
// and run in the guest as root; the test passes only if every one of
// vmLVMTests ran and passed there.
func TestLVMInVM(t *testing.T) {
	// beside the other tests: the VM is a few minutes of waiting on
	// emulated CPUs
	t.Parallel()
	if os.Getenv(vmGuestEnv) != "" {
		t.Skip("inside the VM already")
	}
	if _, err := os.Stat("/dev/mapper/control"); err == nil {
		t.Skipf("this kernel has device-mapper: %s run directly", strings.Join(vmLVMTests, " and "))
	}
	if runtime.GOARCH != "amd64" {
		t.Skipf("the VM runs the host's amd64 binaries under qemu-system-x86_64; this is %s", runtime.GOARCH)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		lvmVMUnavailable(t, "no qemu-system-x86_64 (Debian package qemu-system-x86, installed with --no-install-recommends)")
	}
	busybox := "/bin/busybox"
	if static, err := staticELF(busybox); err != nil || !static {
		lvmVMUnavailable(t, "no statically linked %s for the VM's initramfs (Debian package busybox-static): %v", busybox, err)
	}
	for _, tool := range []string{"lvcreate", "mkfs.ext4", "losetup"} {
		if !haveTool(tool) {
			lvmVMUnavailable(t, "no %s on this machine, whose files the VM runs (Debian packages lvm2, e2fsprogs, mount)", tool)
		}
	}
	kdir := os.Getenv(vmKernelEnv)
	if kdir == "" {
		// where scripts/test.sh unpacks it, for a go test run after it
		kdir = defaultVMKernelDir()
	}
	if kdir == "" {
		lvmVMUnavailable(t, "no kernel for the VM: %s is not set and ~/.cache/floe-test-vm holds none; it names a directory into which a Debian kernel package was unpacked (apt-get download linux-image-6.1.0-NN-amd64; dpkg-deb -x linux-image-*.deb DIR), as scripts/test.sh does", vmKernelEnv)
	}
	kernel, err := findVMKernel(kdir)
	if err != nil {
		lvmVMUnavailable(t, "%s=%s: %v", vmKernelEnv, kdir, err)
	}

	// how long the VM may take: TCG runs the guest several times slower
	// than the machine; the inner tests get a timeout of their own a little
	// shorter, so that a hang shows their goroutines instead of nothing
	timeout := 15 * time.Minute
	if d, ok := t.Deadline(); ok {
		if left := time.Until(d) - 30*time.Second; left < timeout {
			timeout = left
		}
	}
	if timeout < 3*time.Minute {
		t.Fatalf("only %v left before the test binary's deadline: too little for the VM", timeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	start := time.Now()
	share := t.TempDir()
	testBin := filepath.Join(share, "e2e.test")
	args := []string{"test", "-c", "-o", testBin}
	if raceDetector {
		args = append(args, "-race")
	}
	build := exec.CommandContext(ctx, "go", append(args, ".")...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go test -c ./e2e: %v\n%s", err, out)
	}
	guestFloe := filepath.Join(share, "floe")
	if err := copyFile(floeBin, guestFloe, 0o755); err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	runPattern := "^(" + strings.Join(vmLVMTests, "|") + ")$"
	inner := timeout - 90*time.Second // boot and power-off
	run := strings.Join([]string{
		"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"export HOME=/tmp TMPDIR=/tmp LC_ALL=C " + vmGuestEnv + "=1",
		// the binaries run from the guest's tmpfs: the share is read
		// through 9p on every exec (5 s for floe's 38 MB each time, under
		// TCG), which the tests run floe dozens of times
		"mkdir -p /run/floe-vm && cp " + vmShareDir + "/floe " + vmShareDir + "/e2e.test /run/floe-vm/ || exit 1",
		"export " + floeBinEnv + "=/run/floe-vm/floe",
		"cd " + shellQuote(wd) + " || exit 1",
		"/run/floe-vm/e2e.test -test.run " + shellQuote(runPattern) +
			" -test.v -test.count=1 -test.timeout=" + inner.Round(time.Second).String() +
			" >" + vmShareDir + "/test.log 2>&1",
		"echo $? >" + vmShareDir + "/exit-code",
		"",
	}, "\n")
	if err := os.WriteFile(filepath.Join(share, "run.sh"), []byte(run), 0o644); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(share, "initrd.gz")
	if err := buildInitramfs(initrd, busybox, kernel, vmModules); err != nil {
		t.Fatalf("building the VM's initramfs: %v", err)
	}
	built := time.Now()

	vm := vmRun{qemu: qemu, initrd: initrd, kernel: kernel, share: share, memory: "3G", cpus: 2}
	console, vmErr := vm.run(ctx)
	t.Logf("%s in a VM (%s): built in %v, the VM ran %v", strings.Join(vmLVMTests, ", "),
		filepath.Base(kernel.vmlinuz), built.Sub(start).Round(time.Second), time.Since(built).Round(time.Second))

	log, _ := os.ReadFile(filepath.Join(share, "test.log"))
	code, codeErr := os.ReadFile(filepath.Join(share, "exit-code"))
	problems := vmTestProblems(string(log), vmLVMTests)
	if vmErr != nil {
		problems = append([]string{vmErr.Error()}, problems...)
	}
	if codeErr != nil {
		problems = append(problems, "the tests in the VM left no exit code: they did not finish")
	} else if c := strings.TrimSpace(string(code)); c != "0" {
		problems = append(problems, "the tests in the VM exited with "+c)
	}
	if len(problems) > 0 {
		t.Errorf("the LVM tests in the VM:\n%s\nconsole:\n%s\ntest output:\n%s",
			strings.Join(problems, "\n"), prefixLines("console| ", console), prefixLines("vm| ", string(log)))
		return
	}
	// the inner results, prefixed so that go test's own output parsers
	// (test2json) do not take them for this binary's results
	for _, line := range strings.Split(string(log), "\n") {
		if strings.HasPrefix(line, "--- ") || strings.HasPrefix(line, "    ") && strings.Contains(line, ".go:") {
			t.Log("vm| " + line)
		}
	}
}

var vmResultLine = regexp.MustCompile(`(?m)^--- (PASS|FAIL|SKIP): (\S+)`)

// vmTestProblems reads the inner go test -v output: every one of want must
// have passed, none may have failed or skipped.
func vmTestProblems(log string, want []string) []string {
	var problems []string
	passed := map[string]bool{}
	for _, m := range vmResultLine.FindAllStringSubmatch(log, -1) {
		switch m[1] {
		case "PASS":
			passed[m[2]] = true
		default:
			problems = append(problems, fmt.Sprintf("%s %s in the VM", m[2], strings.ToLower(m[1])))
		}
	}
	for _, name := range want {
		if !passed[name] {
			problems = append(problems, name+" did not pass in the VM")
		}
	}
	return problems
}

func TestVMTestProblems(t *testing.T) {
	want := []string{"TestA", "TestB"}
	for _, c := range []struct {
		log  string
		nbad int
	}{
		{"=== RUN   TestA\n--- PASS: TestA (1.00s)\n--- PASS: TestB (2.00s)\nPASS\n", 0},
		{"--- PASS: TestA (1.00s)\n--- SKIP: TestB (0.00s)\n    x.go:1: no dm\n", 2},
		{"--- PASS: TestA (1.00s)\n--- FAIL: TestB (0.00s)\n", 2},
		{"--- PASS: TestA (1.00s)\n    --- PASS: TestB (0.00s)\n", 1}, // a subtest named so is not TestB
		{"", 2},
	} {
		if got := vmTestProblems(c.log, want); len(got) != c.nbad {
			t.Errorf("%q: %d problems %q, want %d", c.log, len(got), got, c.nbad)
		}
	}
}

// defaultVMKernelDir returns the kernel scripts/test.sh unpacked into
// ${XDG_CACHE_HOME:-~/.cache}/floe-test-vm, or "".
func defaultVMKernelDir() string {
	cache, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	dirs, _ := filepath.Glob(filepath.Join(cache, "floe-test-vm", "linux-image-*"))
	for _, d := range dirs {
		if strings.HasSuffix(d, ".part") {
			continue
		}
		if _, err := findVMKernel(d); err == nil {
			return d
		}
	}
	return ""
}

func haveTool(name string) bool {
	if _, err := exec.LookPath(name); err == nil {
		return true
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s to %s: %w", src, dst, err)
	}
	return out.Close()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func prefixLines(prefix, s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n")
}
