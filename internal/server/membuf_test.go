package server

import "testing"

// The budget bounds what uploads held in memory take together; a buffer
// given back is counted off and reused.
func TestMemBudget(t *testing.T) {
	m := newMemBudget(3 * memClass)
	a := m.get(memClass + 1) // two classes
	if len(a) != memClass+1 || cap(a) != 2*memClass {
		t.Fatalf("got len %d cap %d", len(a), cap(a))
	}
	if b := m.get(memClass + 1); b != nil {
		t.Fatal("a buffer beyond the budget")
	}
	if b := m.get(memUploadMax + 1); b != nil {
		t.Fatal("a buffer above memUploadMax")
	}
	c := m.get(10)
	if len(c) != 10 || m.used.Load() != 3*memClass {
		t.Fatalf("small buffer: len %d, used %d", len(c), m.used.Load())
	}
	m.put(a)
	m.put(c)
	if m.used.Load() != 0 {
		t.Fatalf("used %d after every buffer came back", m.used.Load())
	}
	if d := m.get(2 * memClass); len(d) != 2*memClass {
		t.Fatalf("after put: len %d", len(d))
	}
	var none *memBudget
	if none.get(1) != nil {
		t.Fatal("a nil budget (UploadMemory < 0) hands out buffers")
	}
}
