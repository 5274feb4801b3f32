package snapshot

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

func TestTagsMeanOneThing(t *testing.T) {
	if got := ParseTags([]string{"a,b", " c ,", "a", ""}); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("ParseTags = %q", got)
	}
	lists := ParseTagLists([]string{"a,b", "c"})
	f := Filter{Tags: lists}
	for _, c := range []struct {
		tags []string
		want bool
	}{{[]string{"a", "b"}, true}, {[]string{"a"}, false}, {[]string{"b", "c"}, true}, {nil, false}, {[]string{"b", "x", "a"}, true}} {
		if got := f.Match(&Snapshot{Tags: c.tags}); got != c.want {
			t.Errorf("--tag a,b --tag c on %q = %v, want %v", c.tags, got, c.want)
		}
	}
	none := Filter{Tags: ParseTagLists([]string{""})}
	if !none.Match(&Snapshot{}) || none.Match(&Snapshot{Tags: []string{"a"}}) {
		t.Error(`--tag "" should select snapshots without tags`)
	}
	for _, c := range []struct {
		change TagChange
		want   []string
		diff   bool
	}{
		{TagChange{Add: []string{"c", "a"}}, []string{"a", "b", "c"}, true},
		{TagChange{Remove: []string{"a"}}, []string{"b"}, true},
		{TagChange{Set: []string{"x"}, SetGiven: true}, []string{"x"}, true},
		{TagChange{SetGiven: true}, []string{}, true},
		{TagChange{Add: []string{"a"}}, []string{"a", "b"}, false},
	} {
		got, diff := c.change.Apply([]string{"a", "b"})
		if !slices.Equal(got, c.want) || diff != c.diff {
			t.Errorf("%+v: %q %v, want %q %v", c.change, got, diff, c.want, c.diff)
		}
	}
}

func TestRetagAndLatest(t *testing.T) {
	ctx := context.Background()
	r, _ := testutil.NewRepo(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var recs []*Record
	for i, s := range []struct{ host, path string }{{"a", "/etc"}, {"a", "/etc"}, {"a", "/srv"}, {"b", "/etc"}, {"a", "/etc"}} {
		sn := &Snapshot{Version: 2, Time: base.Add(time.Duration(i) * time.Hour), Hostname: s.host, Paths: []string{s.path},
			Tags: []string{"daily"}, Tree: testRef(byte(i + 1))}
		id, err := Save(ctx, r, sn)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &Record{ID: id, Snapshot: sn})
	}
	var ids []string
	for _, s := range Latest(recs, 1) {
		ids = append(ids, s.Hostname+s.Paths[0]+s.Time.Format("15"))
	}
	if want := []string{"a/srv02", "b/etc03", "a/etc04"}; !slices.Equal(ids, want) {
		t.Errorf("Latest(1) = %q, want %q", ids, want)
	}
	if got := Latest(recs, 2); len(got) != 4 {
		t.Errorf("Latest(2) keeps %d, want 4", len(got))
	}

	old := recs[0]
	id, changed, err := Retag(ctx, r, old, TagChange{Add: []string{"keep"}})
	if err != nil || !changed || id == old.ID {
		t.Fatalf("Retag: %v %v %v", id, changed, err)
	}
	if _, err := Load(ctx, r, old.ID); err == nil {
		t.Error("the old record is still there")
	}
	got, err := Load(ctx, r, id)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Tags, []string{"daily", "keep"}) || got.Original != old.ID || got.Tree != old.Tree || !got.Time.Equal(old.Time) {
		t.Errorf("retagged record: tags %q original %v tree %v", got.Tags, got.Original, got.Tree)
	}
	// again: the original stays the first record's
	id2, _, err := Retag(ctx, r, got, TagChange{Remove: []string{"daily"}})
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := Load(ctx, r, id2); again == nil || again.Original != old.ID || !slices.Equal(again.Tags, []string{"keep"}) {
		t.Errorf("second retag: %+v", again)
	}
	if same, changed, err := Retag(ctx, r, recs[1], TagChange{Add: []string{"daily"}}); err != nil || changed || same != recs[1].ID {
		t.Errorf("no change: %v %v %v", same, changed, err)
	}
}
