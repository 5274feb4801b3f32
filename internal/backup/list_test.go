package backup

import (
	"bytes"
	"slices"
	"testing"
)

func TestReadListAndParseSize(t *testing.T) {
	paths, _, err := ReadList(bytes.NewReader([]byte("/a b \n\n# c\n")), ListVerbatim)
	if err != nil || !slices.Equal(paths, []string{"/a b ", "# c"}) {
		t.Errorf("verbatim: %q %v", paths, err)
	}
	paths, _, err = ReadList(bytes.NewReader([]byte("/x\ny\x00\x00/z")), ListRaw)
	if err != nil || !slices.Equal(paths, []string{"/x\ny", "/z"}) {
		t.Errorf("raw: %q %v", paths, err)
	}
	paths, warnings, err := ReadList(bytes.NewReader([]byte("\uFEFF  /etc/hostname  \n# comment\n/nonexistent-floe-*\n")), ListPatterns)
	if err != nil || !slices.Equal(paths, []string{"/etc/hostname"}) || len(warnings) != 1 {
		t.Errorf("patterns: %q %q %v", paths, warnings, err)
	}
	for s, want := range map[string]uint64{"2048": 2048, "1k": 1024, "10K": 10240, "20m": 20 << 20, "3G": 3 << 30, "2t": 2 << 40} {
		if got, err := ParseSize(s); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "k", "1.5M", "-1", "1X", "99999999999999999999", "16777216T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

// FuzzReadList: lists of paths are input; any bytes give paths or an error.
func FuzzReadList(f *testing.F) {
	f.Add([]byte("/a\n/b c\n"), true)
	f.Add([]byte("/a\x00/b\nc\x00"), false)
	f.Fuzz(func(t *testing.T, data []byte, verbatim bool) {
		kind := ListRaw
		if verbatim {
			kind = ListVerbatim
		}
		paths, _, err := ReadList(bytes.NewReader(data), kind)
		if err != nil {
			return
		}
		for _, p := range paths {
			if p == "" {
				t.Fatalf("empty path from %q", data)
			}
		}
	})
}
