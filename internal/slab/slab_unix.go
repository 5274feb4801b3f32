//go:build unix

package slab

import "golang.org/x/sys/unix"

// Map maps n bytes of anonymous memory outside the Go heap, in the
// system's usual pages: they become resident when first written, and the
// collector neither scans nor counts them. It returns nil if the system
// refuses. The memory is never unmapped: the storage spools carve their
// chunks from one such arena, and Get maps its buffers with it.
func Map(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil || len(b) != n {
		return nil
	}
	return b
}

// mapAnon maps a buffer for Get (Map), advised for transparent huge pages
// (where THP is "madvise", Debian's default; elsewhere the advice changes
// nothing): on the bench VM a backup of the large set with the slab in 4
// KiB pages spent as much CPU as before it on goroot and smallstored (its
// fresh pages faulted one by one where heap buffers reused memory already
// mapped), in huge pages 5% less on goroot and 15% less on the large set.
// The advice stays, unlike argon2's prefault's (internal/crypto): a fault
// in advised memory may wait for the kernel to compact memory when no
// huge page is free, but a slab buffer is faulted in once per process, a
// few dozen faults at most.
func mapAnon(n int) []byte {
	b := Map(n)
	if b != nil {
		_ = unix.Madvise(b, unix.MADV_HUGEPAGE)
	}
	return b
}

// release gives b's whole pages back to the kernel. b is page-aligned at
// its start (the caller rounds); the advice fails only for a range that
// is not mapped, which a buffer of this package always is, and a failure
// only keeps the pages resident.
func release(b []byte) {
	_ = unix.Madvise(b, unix.MADV_DONTNEED)
}
