package directio

import (
	"runtime"
	"testing"
)

// Overlapping SpareProcs calls add up, and GOMAXPROCS is what it was once
// the last is released, whatever the order of release.
func TestSpareProcs(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	base := runtime.GOMAXPROCS(0)
	a := SpareProcs(2)
	if got := runtime.GOMAXPROCS(0); got != base+2 {
		t.Fatalf("one call: GOMAXPROCS %d, want %d", got, base+2)
	}
	b := SpareProcs(1)
	if got := runtime.GOMAXPROCS(0); got != base+3 {
		t.Fatalf("two calls: GOMAXPROCS %d, want %d", got, base+3)
	}
	a()
	a() // a second release is a no-op
	if got := runtime.GOMAXPROCS(0); got != base+1 {
		t.Fatalf("first released: GOMAXPROCS %d, want %d", got, base+1)
	}
	b()
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Fatalf("both released: GOMAXPROCS %d, want %d", got, base)
	}

	t.Setenv("GOMAXPROCS", "1")
	c := SpareProcs(2)
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Errorf("with GOMAXPROCS set by the operator: %d, want it left at %d", got, base)
	}
	c()
}
