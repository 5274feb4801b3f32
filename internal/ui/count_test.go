package ui

import "testing"

func TestCount(t *testing.T) {
	for _, c := range []struct {
		got, want string
	}{
		{Count(0, "snapshot"), "0 snapshots"},
		{Count(1, "snapshot"), "1 snapshot"},
		{Count(uint64(2), "error"), "2 errors"},
		{Count(int64(1), "directory", "directories"), "1 directory"},
		{Count(3, "directory", "directories"), "3 directories"},
		{Count(-1, "byte"), "-1 bytes"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
