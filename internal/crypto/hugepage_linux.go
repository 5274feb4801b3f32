package crypto

import (
	"os"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

const hugePage = 2 << 20

// thpOnRequest tells whether the kernel gives transparent huge pages only
// to memory advised for them (THP "madvise", Debian's default). Where it
// gives them to all memory ("always") the advice is not needed; where it
// gives none ("never") it does nothing.
var thpOnRequest = sync.OnceValue(func() bool {
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	return err == nil && strings.Contains(string(mode), "[madvise]")
})

// adviseHugePages asks the kernel to back the 2 MiB-aligned interior of b
// with transparent huge pages, where THP is "madvise" (see prefault.go),
// and returns a function that withdraws the advice. It must be withdrawn
// once b is faulted in: the advice outlives b in the heap, and at THP
// defrag "madvise" (the default) a later fault in advised memory that
// finds no huge page free compacts memory first, the stalls the Go runtime
// stopped risking for its heap (golang/go#61718). Pages already mapped
// stay huge.
func adviseHugePages(b []byte) (withdraw func()) {
	if len(b) < 2*hugePage || !thpOnRequest() {
		return func() {}
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := int((start+hugePage-1)&^(hugePage-1) - start)
	hi := lo + (len(b)-lo)&^(hugePage-1)
	if hi <= lo {
		return func() {}
	}
	if unix.Madvise(b[lo:hi], unix.MADV_HUGEPAGE) != nil {
		return func() {}
	}
	return func() { _ = unix.Madvise(b[lo:hi], unix.MADV_NOHUGEPAGE) }
}
