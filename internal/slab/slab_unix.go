//go:build unix

package slab

import "golang.org/x/sys/unix"

// Map maps n bytes of anonymous memory outside the Go heap, advised for
// transparent huge pages (where THP is "madvise", Debian's default;
// elsewhere the advice changes nothing). The pages become resident when
// first written, and the collector neither scans nor counts them. It
// returns nil if the system refuses. The memory is never unmapped: Get
// maps its buffers with it, and the storage spools carve their chunks
// from one such arena.
//
// Why huge pages: on the bench VM a fresh 4 KiB page costs a fault of
// about 8 us (more where the host took the memory back). A backup of
// the large set with the slab in 4 KiB pages spent as much CPU as before
// it on goroot and smallstored (its fresh pages faulted one by one where
// heap buffers reused memory already mapped), in huge pages 5% less on
// goroot and 15% less on the large set. The spools' 64 MiB arena in 4
// KiB pages cost a backup through floe serve 16,000 faults more than a
// local one (docs/PERFORMANCE.md, "The spools' arena in huge pages").
// The advice stays, unlike argon2's prefault's (internal/crypto): a
// fault in advised memory may wait for the kernel to compact memory when
// no huge page is free, but this memory is faulted in once per process,
// a few dozen faults at most.
func Map(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil || len(b) != n {
		return nil
	}
	_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	return b
}

// release gives b's whole pages back to the kernel. b is page-aligned at
// its start (the caller rounds); the advice fails only for a range that
// is not mapped, which a buffer of this package always is, and a failure
// only keeps the pages resident.
func release(b []byte) {
	_ = unix.Madvise(b, unix.MADV_DONTNEED)
}
