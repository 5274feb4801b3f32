package backup

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/floe-backup/floe/internal/pathmatch"
)

// ListKind says how a list of paths to back up is read (restic's
// --files-from, --files-from-verbatim and --files-from-raw).
type ListKind int

const (
	// ListPatterns: one pattern per line; surrounding white space is
	// trimmed, empty lines and lines starting with "#" are ignored, and
	// each pattern is expanded (pathmatch.Glob).
	ListPatterns ListKind = iota
	// ListVerbatim: one path per line, used as it is (find -print); only
	// empty lines are ignored.
	ListVerbatim
	// ListRaw: paths ended by NUL bytes (find -print0), for names with
	// new lines; empty entries are ignored.
	ListRaw
)

// FileList is a file listing paths to back up.
type FileList struct {
	Path string // "-": Job.ListInput
	Kind ListKind
}

// ReadList reads a list of paths of the given kind. warnings name
// patterns that matched nothing.
func ReadList(r io.Reader, kind ListKind) (paths, warnings []string, err error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, nil, err
	}
	if kind == ListRaw {
		for _, p := range bytes.Split(b, []byte{0}) {
			if len(p) > 0 {
				paths = append(paths, string(p))
			}
		}
		return paths, nil, nil
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if kind == ListVerbatim {
			if line != "" {
				paths = append(paths, line)
			}
			continue
		}
		line = strings.TrimSpace(strings.TrimPrefix(line, "\uFEFF"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		found, err := pathmatch.Glob(line)
		if err != nil {
			return nil, nil, err
		}
		if len(found) == 0 {
			warnings = append(warnings, fmt.Sprintf("pattern %q matches no file", line))
		}
		paths = append(paths, found...)
	}
	return paths, warnings, sc.Err()
}

// ParseSize reads a size as restic does: bytes, or a number followed by
// k, m, g or t (either case) for KiB, MiB, GiB or TiB.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	shift := 0
	if t != "" {
		switch t[len(t)-1] {
		case 'k', 'K':
			shift = 10
		case 'm', 'M':
			shift = 20
		case 'g', 'G':
			shift = 30
		case 't', 'T':
			shift = 40
		}
		if shift > 0 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("size %q: want a number of bytes, or one followed by k, m, g or t (KiB, MiB, GiB, TiB)", s)
	}
	return n << shift, nil
}
