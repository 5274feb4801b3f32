package storage

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	hex := strings.Repeat("0123456789abcdef", 4)
	for _, h := range []Handle{{Type: Config}, {Type: Pack, Name: hex}, {Type: Key, Name: hex},
		{Type: Index, Name: hex}, {Type: Snapshot, Name: hex}, {Type: GCMark, Name: hex}} {
		if err := h.Validate(); err != nil {
			t.Errorf("Validate %s: %v", h, err)
		}
	}
	for _, h := range []Handle{{Type: Config, Name: hex}, {Type: Pack}, {Type: Pack, Name: strings.ToUpper(hex)},
		{Type: Pack, Name: hex[:63]}, {Type: Pack, Name: hex + "0"}, {Type: "x", Name: hex}, {Name: hex},
		{Type: Index, Name: "../" + hex[3:]}, {Type: Index, Name: hex[:63] + "\x00"}} {
		if err := h.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("Validate %q: %v, want ErrInvalid", h, err)
		}
	}
	if err := ValidateListType(Config); !errors.Is(err, ErrInvalid) {
		t.Errorf("ValidateListType(Config): %v", err)
	}
	for _, ft := range AllTypes {
		if err := ValidateListType(ft); err != nil {
			t.Errorf("ValidateListType(%s): %v", ft, err)
		}
	}
}

func TestString(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	for h, want := range map[Handle]string{
		{Type: Config}:                   "config",
		{Type: Pack, Name: hex}:          "data/" + hex,
		{Type: Pack, Name: "../x\x00\n"}: `data/"../x\x00\n"`,
		{Type: Config, Name: "x"}:        `config/"x"`,
		{Type: "a/b\x00", Name: "c"}:     `"a/b\x00"/"c"`,
	} {
		if got := h.String(); got != want {
			t.Errorf("String: %s, want %s", got, want)
		}
	}
}

func TestCheckRange(t *testing.T) {
	for _, c := range []struct{ off, n, size, want int64 }{
		{0, 0, 10, 10}, {3, 0, 10, 7}, {10, 0, 10, 0}, {2, 8, 10, 8}, {0, 0, 0, 0},
	} {
		if got, err := CheckRange(c.off, c.n, c.size); err != nil || got != c.want {
			t.Errorf("CheckRange(%d, %d, %d) = %d, %v; want %d", c.off, c.n, c.size, got, err, c.want)
		}
	}
	for _, c := range []struct{ off, n, size int64 }{{11, 0, 10}, {2, 9, 10}, {1, 1<<63 - 1, 10}, {0, 1, 0}} {
		if _, err := CheckRange(c.off, c.n, c.size); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("CheckRange(%d, %d, %d): %v, want io.ErrUnexpectedEOF", c.off, c.n, c.size, err)
		}
	}
	for _, c := range []struct{ off, n int64 }{{-1, 0}, {0, -1}} {
		if _, err := CheckRange(c.off, c.n, 10); !errors.Is(err, ErrInvalid) {
			t.Errorf("CheckRange(%d, %d): %v, want ErrInvalid", c.off, c.n, err)
		}
	}
}

// sizeLiar reports one size from Stat and returns another from Load, as a
// hostile or racing backend could.
type sizeLiar struct {
	Backend
	statSize int64
	loaded   []int64 // the lengths Load was asked for
}

func (s *sizeLiar) Stat(ctx context.Context, h Handle) (FileInfo, error) {
	return FileInfo{Name: h.Name, Size: s.statSize}, nil
}

func (s *sizeLiar) Load(ctx context.Context, h Handle, off, n int64) ([]byte, error) {
	s.loaded = append(s.loaded, n)
	if n == 0 {
		n = 1 << 20 // "to the end" of an object that grew
	}
	return make([]byte, n), nil
}

func TestLoadAll(t *testing.T) {
	ctx := context.Background()
	h := Handle{Type: Key, Name: strings.Repeat("ab", 32)}
	big := &sizeLiar{statSize: 200 << 30}
	_, err := LoadAll(ctx, big, h, 64<<10)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("200 GB key: %v, want ErrTooLarge", err)
	}
	if len(big.loaded) != 0 {
		t.Errorf("Load was called for an object over the limit: %v", big.loaded)
	}
	for _, want := range []string{h.String(), "65536", "a key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	small := &sizeLiar{statSize: 100}
	data, err := LoadAll(ctx, small, h, 64<<10)
	if err != nil || len(data) != 100 || len(small.loaded) != 1 || small.loaded[0] != 100 {
		t.Errorf("100-byte key: %d bytes, %v, loads %v; want exactly 100 bytes asked for", len(data), err, small.loaded)
	}
	empty := &sizeLiar{statSize: 0}
	if data, err := LoadAll(ctx, empty, h, 10); err != nil || len(data) != 0 || len(empty.loaded) != 0 {
		t.Errorf("empty object: %d bytes, %v, loads %v", len(data), err, empty.loaded)
	}
	if _, err := LoadAll(ctx, &sizeLiar{statSize: -1}, h, 10); !errors.Is(err, ErrTooLarge) {
		t.Errorf("negative size: %v", err)
	}
}
