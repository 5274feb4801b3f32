//go:build !unix

package slab

// Map: nothing is mapped here; callers make their memory in the heap.
func Map(int) []byte { return nil }

func release([]byte) {}
