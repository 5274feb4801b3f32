package directio

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// CachedPages counts the pages of the file at path that are in the page
// cache (mincore), out of all its pages: what tests of direct I/O check,
// since skipping the cache is its point.
func CachedPages(path string) (in, total int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	if fi.Size() == 0 {
		return 0, 0, nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, 0, fmt.Errorf("mmap %s: %w", path, err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return 0, 0, fmt.Errorf("mincore %s: %w", path, e)
	}
	for _, v := range vec {
		in += int(v & 1)
	}
	return in, len(vec), nil
}
