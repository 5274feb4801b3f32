package slab

import (
	"sync"
	"testing"
)

func TestGetPutReuses(t *testing.T) {
	const size = 3<<20 + 17 // not a whole number of pages
	b := Get(size)
	if len(b) != 0 || cap(b) != size {
		t.Fatalf("Get(%d): len %d cap %d", size, len(b), cap(b))
	}
	b = append(b, "chunk"...)
	Put(b, size)
	c := Get(size)
	if &c[:1][0] != &b[0] {
		t.Fatal("a buffer put back was not lent again")
	}
	if string(c[:5]) != "chunk" {
		t.Fatalf("kept bytes changed: %q", c[:5])
	}
	Put(c, size)
	if n := Lent(); n != 0 {
		t.Fatalf("%d buffers out after all were given back", n)
	}
}

func TestForeignSlicesLeftAlone(t *testing.T) {
	const size = 1 << 20
	heap := make([]byte, 0, size)
	Put(heap, 0) // a heap buffer of the right size: not the slab's
	b := Get(size)
	if len(b) > 0 || cap(b) != size {
		t.Fatalf("Get: len %d cap %d", len(b), cap(b))
	}
	if cap(b) > 0 && &b[:1][0] == &heap[:1][0] {
		t.Fatal("a heap buffer was taken in and lent out")
	}
	// A slice that starts inside a slab buffer is not one of its
	// buffers: giving it back would lend out memory still in use.
	b = b[:size]
	if _, ok := Shrink(b[4096:], 0); ok {
		t.Fatal("Shrink took a slice starting inside a buffer")
	}
	Put(b[4096:], 0)
	if c := Get(size); &c[:1][0] == &b[4096] {
		t.Fatal("a slice of a buffer was lent out")
	} else {
		Put(c, size)
	}
	Put(b, size)
}

func TestShrinkAndTrimGivePagesBack(t *testing.T) {
	const size = 4 << 20
	b := Get(size)
	if _, ok := Shrink(b, size); !ok {
		t.Skip("no mapping here: buffers come from the heap")
	}
	b = b[:size]
	for i := range b {
		b[i] = 0xff
	}
	keep := 1<<20 + 1 // rounded up to a page
	if _, ok := Shrink(b, keep); !ok {
		t.Fatal("Shrink: not a slab buffer")
	}
	if b[keep] != 0xff || b[keep+pageSize-2] != 0xff {
		t.Fatal("Shrink gave back a page it was asked to keep")
	}
	if end := roundUp(keep); b[end] != 0 || b[size-1] != 0 {
		t.Fatalf("pages after %d bytes still hold data: %x %x", keep, b[end], b[size-1])
	}
	Put(b, size)
	Trim()
	if b[0] != 0 {
		t.Fatal("Trim left a free buffer's pages")
	}
	c := Get(size)
	if &c[:1][0] != &b[0] {
		t.Fatal("a trimmed buffer was not lent again")
	}
	Put(c, size)
}

func TestConcurrentUse(t *testing.T) {
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				size := (1 + (g+i)%3) << 20
				b := Get(size)[:size]
				b[0], b[size-1] = byte(g), byte(i)
				if b[0] != byte(g) || b[size-1] != byte(i) {
					t.Error("a buffer lent to two goroutines at once")
					return
				}
				Put(b, 1<<20)
			}
		})
	}
	wg.Wait()
}
