// Package directio holds what every user of O_DIRECT needs: the alignment
// and buffers that start on it. Image backups read devices this way and
// the local backend writes and reads a server's packs this way, each to
// skip a copy through the page cache (docs/PERFORMANCE.md says why).
package directio

import "unsafe"

// Align is the alignment of direct transfers: buffer address, file offset
// and length (the page size; any logical block size of common disks, 512
// or 4096 bytes, divides it).
const Align = 4096

// Buffer returns n bytes starting at a multiple of Align.
func Buffer(n int) []byte {
	b := make([]byte, n+Align)
	skip := int(-uintptr(unsafe.Pointer(unsafe.SliceData(b))) & (Align - 1))
	return b[skip : skip+n : skip+n]
}

// Aligned reports whether b starts at a multiple of Align.
func Aligned(b []byte) bool {
	return cap(b) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(b)))%Align == 0
}

// RoundUp returns n rounded up to a multiple of Align.
func RoundUp(n int) int { return (n + Align - 1) &^ (Align - 1) }
