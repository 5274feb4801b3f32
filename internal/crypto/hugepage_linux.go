package crypto

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

const hugePage = 2 << 20

// adviseHugePages asks the kernel to back the 2 MiB-aligned interior of b
// with transparent huge pages (where THP is "madvise", as on Debian; a
// no-op where it is "never", and harmless where the kernel refuses: the
// pages are then faulted in one by one as before). See prefault.go.
func adviseHugePages(b []byte) {
	if len(b) < 2*hugePage {
		return
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := int((start+hugePage-1)&^(hugePage-1) - start)
	hi := lo + (len(b)-lo)&^(hugePage-1)
	if hi <= lo {
		return
	}
	_ = unix.Madvise(b[lo:hi], unix.MADV_HUGEPAGE)
}
