package s3

import (
	"fmt"
	"net/http"
	"testing"
)

func TestParseContentRange(t *testing.T) {
	good := map[string][3]int64{
		"bytes 0-0/1":         {0, 0, 1},
		"bytes 5-9/10":        {5, 9, 10},
		"bytes 100-199/10000": {100, 199, 10000},
	}
	for s, w := range good {
		f, l, tot, ok := parseContentRange(s)
		if !ok || f != w[0] || l != w[1] || tot != w[2] {
			t.Errorf("%q: %d %d %d %v", s, f, l, tot, ok)
		}
	}
	for _, s := range []string{"", "bytes", "bytes */10", "bytes 5-4/10", "bytes 0-9/9", "bytes -1-2/3", "bytes 0-1/*",
		"items 0-1/2", "bytes 0-1", "bytes 1/2", "bytes 0-99999999999999999999/3", "bytes 0 - 1/2"} {
		if f, l, tot, ok := parseContentRange(s); ok {
			t.Errorf("%q accepted: %d %d %d", s, f, l, tot)
		}
	}
}

// FuzzResponseRange: whatever Content-Range a server sends, the answer is
// an error or a range that lies inside the object and starts where asked.
func FuzzResponseRange(f *testing.F) {
	f.Add("bytes 0-9/10", int64(10), int64(0))
	f.Add("bytes 5-9/10", int64(5), int64(5))
	f.Add("", int64(10), int64(3))
	f.Add("bytes 9223372036854775806-9223372036854775806/9223372036854775807", int64(1), int64(9223372036854775806))
	f.Fuzz(func(t *testing.T, cr string, contentLength, start int64) {
		if start < 0 || contentLength < 0 {
			return // never asked: offsets are checked before a GET
		}
		h := http.Header{}
		if cr != "" {
			h.Set("Content-Range", cr)
		}
		n, total, err := responseRange(h, contentLength, start)
		if err != nil {
			return
		}
		if n < 0 || total < 0 || start > total || n > total-start {
			t.Fatalf("Content-Range %q, length %d, start %d: n %d total %d", cr, contentLength, start, n, total)
		}
		if cr != "" {
			if got := fmt.Sprintf("bytes %d-%d/%d", start, start+n-1, total); n > 0 && got != cr {
				f, l, tot, _ := parseContentRange(cr)
				if f != start || l != start+n-1 || tot != total {
					t.Fatalf("%q parsed as %s", cr, got)
				}
			}
		}
	})
}
