package directio

import "testing"

func TestBuffer(t *testing.T) {
	for _, n := range []int{1, Align - 1, Align, 3 * Align, 1 << 20} {
		b := Buffer(n)
		if len(b) != n || cap(b) != n || !Aligned(b) {
			t.Errorf("Buffer(%d): len %d cap %d aligned %v", n, len(b), cap(b), Aligned(b))
		}
	}
	if Aligned(make([]byte, 0)) {
		t.Error("an empty slice has no address to be aligned")
	}
	if b := Buffer(2 * Align); Aligned(b[1:]) {
		t.Error("b[1:] of an aligned buffer reported aligned")
	}
}

func TestRoundUp(t *testing.T) {
	for _, c := range []struct{ in, want int }{{0, 0}, {1, Align}, {Align, Align}, {Align + 1, 2 * Align}} {
		if got := RoundUp(c.in); got != c.want {
			t.Errorf("RoundUp(%d) = %d, want %d", c.in, got, c.want)
		}
	}
}
