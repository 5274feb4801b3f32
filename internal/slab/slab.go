// Package slab lends out large byte buffers of a few fixed sizes, mapped
// outside the Go heap, and takes them back for reuse.
//
// Why: a backup's chunk and seal buffers are megabytes each, and the
// pipeline needs a handful of them at a time. Made with make and dropped,
// they were 400 MB of allocations in a backup of bench's large set (2
// GiB): the chunker grew each buffer a quarter at a time (a copy of what
// it held at every step), and the collector's scavenger gave the freed
// memory back to the kernel, so the next buffers were faulted in again,
// page by page (25,000-32,000 faults; about 8 us each on the bench VM).
// A buffer mapped here has its full size from the start, its pages are
// faulted in once, and the collector neither scans nor counts it (in the
// heap, tens of MiB held would also move the collector's goal).
//
// The cost is bookkeeping the heap would do: a buffer must be given back
// (Put) exactly once, with nothing else holding it, and an idle process
// should give its pages back (Trim).
package slab

import (
	"os"
	"sync"
)

// pageSize is the granularity of the pages given back.
var pageSize = os.Getpagesize()

var (
	mu     sync.Mutex
	free   = map[int][][]byte{} // free buffers by size, length 0
	mapped = map[*byte]int{}    // the first byte of every buffer mapped here, and its size
)

// Get returns a buffer of length 0 and capacity size: a free one of that
// size, or one newly mapped. Where the system refuses the mapping it comes
// from the heap, and Put leaves it to the collector.
func Get(size int) []byte {
	mu.Lock()
	if l := free[size]; len(l) > 0 {
		b := l[len(l)-1]
		free[size] = l[:len(l)-1]
		mu.Unlock()
		return b
	}
	mu.Unlock()
	b := Map(size)
	if b == nil {
		return make([]byte, 0, size)
	}
	mu.Lock()
	mapped[&b[0]] = size
	mu.Unlock()
	return b[:0:size]
}

// Put takes back b, a buffer Get returned (its length does not matter; a
// slice of another start or capacity, or a buffer from the heap, is left
// to the collector), to be lent again. No one may use b afterwards. As
// with Shrink, only its first keep bytes stay resident.
func Put(b []byte, keep int) {
	b, ok := Shrink(b, keep)
	if !ok {
		return
	}
	mu.Lock()
	free[cap(b)] = append(free[cap(b)], b)
	mu.Unlock()
}

// Shrink gives the pages of b after its first keep bytes back to the
// kernel (they read as zeros afterwards), so that a buffer once filled to
// its size does not hold all of that while it waits to be reused. It
// returns b with length 0, and whether b is a buffer Get mapped (anything
// else is left alone: the pages of the heap are not this package's).
func Shrink(b []byte, keep int) ([]byte, bool) {
	if cap(b) == 0 {
		return b, false
	}
	b = b[:cap(b)]
	mu.Lock()
	size, ok := mapped[&b[0]]
	mu.Unlock()
	if !ok || size != len(b) {
		return b[:0], false
	}
	if lo := roundUp(keep); lo < len(b) {
		release(b[lo:])
	}
	return b[:0], true
}

// Trim gives the pages of every free buffer back to the kernel: a
// long-running process (the agent) calls it after a job, so that what a
// backup used is not held until the next one. The buffers stay mapped,
// for the next Get.
func Trim() {
	mu.Lock()
	defer mu.Unlock()
	for _, l := range free {
		for _, b := range l {
			release(b[:cap(b)])
		}
	}
}

// Lent returns how many buffers mapped here are out: lent and not given
// back. Between jobs it should be 0; more means a buffer was lost, and its
// pages with it.
func Lent() int {
	mu.Lock()
	defer mu.Unlock()
	n := len(mapped)
	for _, l := range free {
		n -= len(l)
	}
	return n
}

func roundUp(n int) int {
	return max(0, (n+pageSize-1)&^(pageSize-1))
}
