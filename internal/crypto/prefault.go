package crypto

import (
	"runtime"
	"runtime/metrics"
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
// place argon2's memory elsewhere, only this pass is lost. Not when the
// heap is large (a long-running agent): the collection would cost more
// than it saves.
const prefaultMaxLive = 64 << 20

var liveSample = []metrics.Sample{{Name: "/gc/heap/live:bytes"}}

func prefaultArgon2(memoryKiB uint32) {
	s := make([]metrics.Sample, len(liveSample))
	copy(s, liveSample)
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 && s[0].Value.Uint64() > prefaultMaxLive {
		return
	}
	b := make([]byte, int(memoryKiB)*1024)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	runtime.KeepAlive(b)
	runtime.GC()
}
