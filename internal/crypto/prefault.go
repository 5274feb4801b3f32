package crypto

import (
	"math"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"unsafe"
)

// Why DeriveKey touches argon2's memory first.
//
// argon2.IDKey allocates its working memory (46 MiB for floe's keys) and
// reads each block before it writes it. Memory fresh from the kernel is
// mapped to the shared zero page by that read, and copied on the write
// that follows: two page faults per page, and the second one replaces a
// mapping, which flushes the TLB of every core the process runs on. With
// the two lanes on two cores, each of those ~11,800 flushes interrupts the
// other core; in a VM an interrupt between cores is a trip through the
// hypervisor. Measured on the 2-core bench VM (Firecracker, Linux 6.18,
// idle second core), one derivation of floe's default parameters: 180-217
// ms of CPU and 0.10-0.12 s, against 49-53 ms and 0.041-0.049 s with this
// prefault (6 runs each, perf stat); on a busy machine, where the lanes
// seldom run at once, 70-95 ms against 50-57. Every command that opens a
// repository with a passphrase pays it: it was a fifth of the CPU time of
// bench's smallstored backup of copy 2 (0.55-0.6 CPU-s).
//
// prefaultArgon2 writes one byte per page of a buffer of that size (one
// fault per page, no flush: nothing was mapped), drops it and collects it,
// so that argon2's allocation of the same size reuses those pages, already
// mapped (the runtime zeroes them, at memory speed). Should the runtime
// place argon2's memory elsewhere, only this pass is lost. The pages are
// split among up to lanes goroutines, as argon2 splits its work: faults
// on pages not mapped yet need no flush, and each half has page tables of
// its own (with two, on the bench VM: 15 ms instead of 21 at best of 20 runs,
// when both cores were free; the same when they were not).
//
// Where THP is "madvise", the buffer is first advised for transparent
// huge pages: one fault then maps 2 MiB, 23 faults instead of 11,800. On
// the next bench VM (AMD, Linux 6.18), where a 4 KiB fault on fresh
// memory cost about 8 us, the prefault took 0.16-0.22 s of every
// command's CPU, a tenth of a large restore; touching 46 MiB this way
// took 3-27 ms instead of 165-180 (a test program, 5 runs each). The
// advice is withdrawn once the pages are mapped (hugepage_linux.go says
// why); they stay huge when the buffer is collected, so argon2's
// allocation gets them.
//
// Not when the heap is large (a long-running agent): the collection would
// cost more than it saves.
const prefaultMaxLive = 64 << 20

func prefaultArgon2(memoryKiB uint32, lanes int) {
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(live)
	if live[0].Value.Kind() == metrics.KindUint64 && live[0].Value.Uint64() > prefaultMaxLive {
		return
	}
	const page = 4096
	size := uint64(memoryKiB) * 1024
	if size > math.MaxInt/2 {
		return // a 32-bit address space: argon2 cannot have it either
	}
	b := uncleared(int(size))
	withdraw := adviseHugePages(b)
	parts := max(1, min(lanes, runtime.GOMAXPROCS(0)))
	per := (len(b)/parts + page - 1) &^ (page - 1)
	var wg sync.WaitGroup
	for lo := 0; lo < len(b); lo += per {
		part := b[lo:min(lo+per, len(b))]
		wg.Go(func() {
			for i := 0; i < len(part); i += page {
				part[i] = 1
			}
		})
	}
	wg.Wait()
	withdraw()
	runtime.KeepAlive(b)
	runtime.GC()
}

// uncleared returns n bytes of the heap that the runtime has not cleared.
//
// Why: make clears memory that the heap used before (fresh memory from the
// kernel is known to be zero), and a buffer of argon2's size that starts
// in memory freed at the top of the heap is cleared whole, the fresh part
// included: every page faulted in 4 KiB before adviseHugePages could ask
// for huge pages (9,900 faults instead of about 600, TestDeriveKeyUsesHugePages
// "recycled"; 2 of 7 backups of bench/images.sh's image). The prefault only
// needs the pages touched, not zeroed, and argon2's own make clears them.
// strings.Builder.Grow is the standard library's one way to allocate
// without clearing; the bytes are only ever written, never read.
func uncleared(n int) []byte {
	var sb strings.Builder
	sb.Grow(n)
	sb.WriteByte(0)
	s := sb.String()
	return unsafe.Slice(unsafe.StringData(s), sb.Cap())[:n:n]
}
