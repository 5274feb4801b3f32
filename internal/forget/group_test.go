package forget

import (
	"fmt"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

func rec(name, host string, paths, tags []string) *snapshot.Record {
	return &snapshot.Record{ID: hash.Sum([]byte(name)), Snapshot: &snapshot.Snapshot{
		Time: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), Hostname: host, Paths: paths, Tags: tags}}
}

func TestGroup(t *testing.T) {
	all := []*snapshot.Record{
		rec("1", "web1", []string{"/etc", "/home"}, []string{"daily"}),
		rec("2", "web1", []string{"/home", "/etc"}, nil), // same paths as a set
		rec("3", "web1", []string{"/srv"}, []string{"daily"}),
		rec("4", "web2", []string{"/etc", "/home"}, []string{"daily", "x"}),
		rec("5", "web2", []string{"/etc", "/home"}, []string{"x", "daily"}),
	}
	names := map[*snapshot.Record]string{}
	for i, r := range all {
		names[r] = fmt.Sprint(i + 1)
	}
	show := func(g map[GroupKey][]*snapshot.Record) string {
		s := ""
		for _, k := range SortedKeys(g) {
			s += fmt.Sprintf("%s%v%v:", k.Host, k.Paths(), k.Tags())
			for _, r := range g[k] {
				s += names[r]
			}
			s += " "
		}
		return s
	}
	tests := map[string]string{
		"host,paths": "web1[/etc /home][]:12 web1[/srv][]:3 web2[/etc /home][]:45 ",
		"":           "[][]:12345 ",
		"host":       "web1[][]:123 web2[][]:45 ",
		"paths":      "[/etc /home][]:1245 [/srv][]:3 ",
		"tags":       "[][]:2 [][daily]:13 [][daily x]:45 ",
		"host,tags":  "web1[][]:2 web1[][daily]:13 web2[][daily x]:45 ",
		"host, paths,tags": "web1[/etc /home][]:2 web1[/etc /home][daily]:1 web1[/srv][daily]:3 " +
			"web2[/etc /home][daily x]:45 ",
	}
	for by, want := range tests {
		g, err := Group(all, by)
		if err != nil {
			t.Fatalf("%q: %v", by, err)
		}
		if got := show(g); got != want {
			t.Errorf("group by %q:\n got %s\nwant %s", by, got, want)
		}
	}
	if _, err := Group(all, "host,time"); err == nil {
		t.Error("unknown group-by field accepted")
	}
	if DefaultGroupBy != "host,paths" {
		t.Error("default group-by changed")
	}
}
