package crypto

import (
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/crypto/argon2"
)

// DeriveKey faults argon2's memory in once per page (prefault.go): left to
// itself, argon2 reads each page before writing it, which faults twice per
// page (the zero page, then a copy on write) and flushes the other core's
// TLB on the second fault.
func TestDeriveKeyFaultsOncePerPage(t *testing.T) {
	if raceDetector {
		t.Skip("the race detector faults its shadow memory in as well")
	}
	p := DefaultKDFParams()
	pages := int64(p.MemoryKiB) / 4
	var before, after syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &before); err != nil {
		t.Skip(err)
	}
	k, err := DeriveKey([]byte("pw"), p)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &after); err != nil {
		t.Fatal(err)
	}
	if faults := int64(after.Minflt) - int64(before.Minflt); faults > pages*3/2 {
		t.Errorf("deriving a key with %d KiB of memory (%d pages) took %d page faults, want about one per page", p.MemoryKiB, pages, faults)
	}
	if want := argon2.IDKey([]byte("pw"), p.Salt, p.Time, p.MemoryKiB, p.Threads, KeySize); string(k[:]) != string(want) {
		t.Error("DeriveKey differs from argon2.IDKey")
	}
}

// Where the kernel offers transparent huge pages on request, the prefault
// maps argon2's memory 2 MiB at a time (prefault.go): a fault per 4 KiB
// page cost a command 0.16-0.22 s of CPU on a VM where faults are dear.
// Measured in a fresh process, as a command derives its key: in this one,
// earlier derivations left the heap's pages partly mapped. "recycled":
// the process used and dropped 8 MiB first, at the top of its heap, where
// the prefault's buffer then starts: memory the runtime clears before it
// hands it out, which faulted the whole buffer in 4 KiB pages before the
// advice could apply (2 of 7 backups of the bench image).
func TestDeriveKeyUsesHugePages(t *testing.T) {
	if raceDetector {
		t.Skip("the race detector faults its shadow memory in as well")
	}
	if heap := os.Getenv("FLOE_TEST_DERIVE_IN_CHILD"); heap != "" {
		if heap == "recycled" {
			b := make([]byte, 8<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			runtime.KeepAlive(b)
			b = nil
			runtime.GC()
		}
		deriveAndCheckHugePages(t)
		return
	}
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || !bytes.Contains(mode, []byte("[madvise]")) && !bytes.Contains(mode, []byte("[always]")) {
		t.Skipf("transparent huge pages not offered on request here (%q, %v)", mode, err)
	}
	for _, heap := range []string{"fresh", "recycled"} {
		t.Run(heap, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestDeriveKeyUsesHugePages$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), "FLOE_TEST_DERIVE_IN_CHILD="+heap)
			out, err := cmd.CombinedOutput()
			switch {
			case err != nil:
				t.Errorf("in a fresh process: %v\n%s", err, out)
			case bytes.Contains(out, []byte("--- SKIP")):
				t.Skipf("in a fresh process:\n%s", out)
			case !bytes.Contains(out, []byte("--- PASS")):
				t.Errorf("in a fresh process, no PASS:\n%s", out)
			}
		})
	}
}

func deriveAndCheckHugePages(t *testing.T) {
	p := DefaultKDFParams()
	pages := int64(p.MemoryKiB) / 4
	fallbacksBefore := thpFallbacks(t)
	advisedBefore := advisedMappings(t)
	var before, after syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &before); err != nil {
		t.Skip(err)
	}
	if _, err := DeriveKey([]byte("pw"), p); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &after); err != nil {
		t.Fatal(err)
	}
	// the advice is withdrawn once the pages are mapped: left on the heap,
	// a later fault there could compact memory
	if n := advisedMappings(t); n > advisedBefore {
		t.Errorf("%d mappings advised for huge pages after deriving a key, %d before", n, advisedBefore)
	}
	if thpFallbacks(t) != fallbacksBefore {
		t.Skip("the kernel had no huge page free for some faults (thp_fault_fallback rose)")
	}
	if faults := int64(after.Minflt) - int64(before.Minflt); faults > pages/4 {
		t.Errorf("deriving a key with %d KiB of memory (%d pages) took %d page faults, want far fewer than one per page (huge pages)", p.MemoryKiB, pages, faults)
	}
}

// advisedMappings counts this process's mappings advised MADV_HUGEPAGE
// ("hg" among their VmFlags in /proc/self/smaps).
func advisedMappings(t *testing.T) int {
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skip(err)
	}
	n := 0
	for _, line := range strings.Split(string(smaps), "\n") {
		if strings.HasPrefix(line, "VmFlags:") && slices.Contains(strings.Fields(line), "hg") {
			n++
		}
	}
	return n
}

func thpFallbacks(t *testing.T) string {
	vm, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		t.Skip(err)
	}
	for _, line := range strings.Split(string(vm), "\n") {
		if strings.HasPrefix(line, "thp_fault_fallback ") {
			return line
		}
	}
	t.Skip("no thp_fault_fallback in /proc/vmstat")
	return ""
}
