package snapshot

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func fullSnapshot() *Snapshot {
	return &Snapshot{
		Version:  2,
		Time:     time.Date(2026, 11, 21, 20, 30, 0, 123456789, time.UTC),
		Hostname: "web1", Username: "root", UID: 0, GID: 4294967295,
		Paths:          []string{"/etc", "/srv/\xff\xfename", "b64:literal", "/ünï"},
		Tags:           []string{"daily", "b64:not-a-path"},
		Tree:           testRef(7),
		Parent:         testID(8),
		ProgramVersion: "floe 0.1.0",
		Summary: Summary{FilesNew: 1, FilesChanged: 2, FilesUnchanged: 3, Dirs: 4, Errors: 5,
			TotalBytes: 1 << 62, DataAdded: 7, DataAddedStored: 8, DurationSeconds: 12.345},
		Consistency: Consistency{Checked: true, Frozen: true,
			ChangedDuringRead: []string{"/var/lib/db/x", longName(0xff)}, ChangedCount: 10},
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	minimal := &Snapshot{Version: 2, Tree: testRef(1)}
	zone := fullSnapshot()
	zone.Time = time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))
	tests := []struct {
		name string
		in   *Snapshot
		want *Snapshot
	}{
		{"full", fullSnapshot(), fullSnapshot()},
		{"minimal", minimal, minimal},
		{"version 0 written as 1", &Snapshot{Tree: testRef(1)}, minimal},
		{"empty lists become nil", &Snapshot{Version: 2, Tree: testRef(1), Paths: []string{}, Tags: []string{}}, minimal},
		{"time in UTC", zone, func() *Snapshot { s := fullSnapshot(); s.Time = zone.Time.UTC(); return s }()},
		{"empty path", &Snapshot{Version: 2, Tree: testRef(1), Paths: []string{""}}, &Snapshot{Version: 2, Tree: testRef(1), Paths: []string{""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := MarshalSnapshot(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := UnmarshalSnapshot(data)
			if err != nil {
				t.Fatalf("%v\n%s", err, data)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("round trip differs:\n got %+v\nwant %+v\n%s", got, tt.want, data)
			}
		})
	}
}

func TestSnapshotJSONShape(t *testing.T) {
	data, err := MarshalSnapshot(fullSnapshot())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	paths := m["paths"].([]any)
	if paths[0] != "/etc" || paths[1] != "b64:L3Nydi///m5hbWU=" || paths[2] != "b64:YjY0OmxpdGVyYWw=" || paths[3] != "/ünï" {
		t.Errorf("paths = %q", paths)
	}
	if tags := m["tags"].([]any); tags[1] != "b64:not-a-path" {
		t.Errorf("tags are escaped: %q", tags)
	}
	if m["time"] != "2026-11-21T20:30:00.123456789Z" || m["tree"] != testID(7).String()+testID(107).String() || m["parent"] != testID(8).String() {
		t.Errorf("time, tree, parent = %v %v %v", m["time"], m["tree"], m["parent"])
	}
	for _, k := range []string{"version", "hostname", "username", "uid", "gid", "program_version"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q", k)
		}
	}
	if m["summary"].(map[string]any)["data_added_stored"] != 8.0 {
		t.Errorf("summary = %v", m["summary"])
	}
	if c := m["consistency"].(map[string]any); c["changed_count"] != 10.0 || c["checked"] != true {
		t.Errorf("consistency = %v", c)
	}

	data, err = MarshalSnapshot(&Snapshot{Tree: testRef(1)})
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	if strings.Contains(s, "parent") || !strings.Contains(s, `"paths":[]`) || !strings.Contains(s, `"changed_during_read":[]`) {
		t.Errorf("minimal snapshot JSON: %s", s)
	}

	// encoding/json uses the same format.
	viaJSON, err := json.Marshal(fullSnapshot())
	if err != nil {
		t.Fatal(err)
	}
	var back Snapshot
	if err := json.Unmarshal(viaJSON, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, fullSnapshot()) {
		t.Errorf("encoding/json round trip: %+v", back)
	}
}

// The example of docs/FORMAT.md, with its placeholders filled in.
const formatExample = `{
  "version": 2,
  "time": "2026-11-21T20:30:00.123456789Z",
  "hostname": "web1", "username": "root", "uid": 0, "gid": 0,
  "paths": ["/etc"], "tags": ["daily"],
  "tree": "07070707070707070707070707070707070707070707070707070707070707070808080808080808080808080808080808080808080808080808080808080808",
  "parent": "",
  "program_version": "floe 0.1.0",
  "summary": { "files_new": 0, "files_changed": 0, "files_unchanged": 0, "dirs": 0,
               "errors": 0, "total_bytes": 0, "data_added": 0, "data_added_stored": 0,
               "duration_seconds": 0 },
  "consistency": { "checked": true, "frozen": false, "changed_during_read": ["/var/lib/db/x"],
                   "changed_count": 1 },
  "future_field": {"ignored": true}
}`

func TestUnmarshalFormatExample(t *testing.T) {
	s, err := UnmarshalSnapshot([]byte(formatExample))
	if err != nil {
		t.Fatal(err)
	}
	if s.Hostname != "web1" || !s.Parent.IsNull() || s.Tree.ID[0] != 7 || s.Paths[0] != "/etc" ||
		s.Consistency.ChangedDuringRead[0] != "/var/lib/db/x" || s.Time.Nanosecond() != 123456789 {
		t.Fatalf("parsed %+v", s)
	}
	if _, err := UnmarshalSnapshot([]byte(strings.Replace(formatExample, `"parent": ""`, `"parent": null`, 1))); err != nil {
		t.Fatalf("null parent: %v", err)
	}
}

func TestSnapshotRejects(t *testing.T) {
	tree := `"tree":"` + testID(1).String() + testID(101).String() + `"`
	tests := []struct {
		name, json, want string
	}{
		{"not json", `{`, "unexpected end"},
		{"array", `[]`, "cannot unmarshal"},
		{"no version", `{` + tree + `}`, "version 0"},
		{"version 3", `{"version":3,` + tree + `}`, "version 3"},
		{"no tree", `{"version":2}`, "no tree"},
		{"null tree", `{"version":2,"tree":null}`, "no tree"},
		{"zero tree", `{"version":2,"tree":"` + strings.Repeat("0", 128) + `"}`, "no tree"},
		{"short tree", `{"version":2,"tree":"abcd"}`, "invalid blob reference"},
		{"bad parent", `{"version":2,` + tree + `,"parent":"xyz"}`, "parent"},
		{"bad b64 path", `{"version":2,` + tree + `,"paths":["b64:!!"]}`, "base64"},
		{"bad b64 changed", `{"version":2,` + tree + `,"consistency":{"changed_during_read":["b64:YQ"]}}`, "base64"},
		{"bad time", `{"version":2,` + tree + `,"time":"yesterday"}`, "time"},
		{"time range", `{"version":2,` + tree + `,"time":"0000-01-01T00:00:00+01:00"}`, "out of range"},
		{"uid range", `{"version":2,` + tree + `,"uid":-1}`, "uid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := UnmarshalSnapshot([]byte(tt.json))
			if err == nil || !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("snapshot %+v, err = %v, want ErrInvalidSnapshot containing %q", s, err, tt.want)
			}
		})
	}
}

func TestMarshalSnapshotRejects(t *testing.T) {
	tests := []struct {
		name string
		s    *Snapshot
		want string
	}{
		{"nil", nil, "nil"},
		{"version", &Snapshot{Version: 3, Tree: testRef(1)}, "version 3"},
		{"no tree", &Snapshot{Version: 2}, "no tree"},
		{"hostname", &Snapshot{Tree: testRef(1), Hostname: "\xff"}, "hostname"},
		{"tag", &Snapshot{Tree: testRef(1), Tags: []string{"\xff"}}, "tag"},
		{"year", &Snapshot{Tree: testRef(1), Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, "year"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := MarshalSnapshot(tt.s)
			if err == nil || !errors.Is(err, ErrInvalidSnapshot) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrInvalidSnapshot containing %q", err, tt.want)
			}
		})
	}
}

func TestNameEscape(t *testing.T) {
	for _, name := range []string{"", "plain", "/ünï/\u2028", "b64:", "b64:abc", "\xff", "a\x00b", longName(0x80), "B64:upper"} {
		enc := EncodeName(name)
		dec, err := DecodeName(enc)
		if err != nil || dec != name {
			t.Errorf("DecodeName(EncodeName(%q)) = %q, %v", name, dec, err)
		}
	}
	if EncodeName("plain") != "plain" {
		t.Error("valid UTF-8 name was escaped")
	}
}

func FuzzUnmarshalSnapshot(f *testing.F) {
	f.Add([]byte(formatExample))
	for _, s := range []*Snapshot{fullSnapshot(), {Tree: testRef(1)}} {
		data, err := MarshalSnapshot(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := UnmarshalSnapshot(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidSnapshot) {
				t.Fatalf("error does not wrap ErrInvalidSnapshot: %v", err)
			}
			return
		}
		enc, err := MarshalSnapshot(s)
		if err != nil {
			t.Fatalf("decoded snapshot does not encode: %v", err)
		}
		again, err := UnmarshalSnapshot(enc)
		if err != nil {
			t.Fatalf("re-encoded snapshot does not decode: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(s, again) {
			t.Fatalf("round trip differs:\n%+v\n%+v", s, again)
		}
	})
}
