//go:build unix

package storage

import "syscall"

// spoolArena maps n bytes of anonymous memory for the spools' chunks:
// pages become resident when first written, and the collector neither
// scans them nor counts them. nil if the system refuses (the chunks are
// then made in the heap).
func spoolArena(n int) []byte {
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil
	}
	return b
}
