package walk_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/floe-backup/floe/internal/pathmatch"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
	wt "github.com/floe-backup/floe/internal/walk/walktest"
)

func TestFindRemembersSharedDirectories(t *testing.T) {
	trees := wt.New()
	root1, etc, _ := sample(trees)
	// the second snapshot has the same /etc and another /srv
	srv := trees.Add(wt.File("hosts", 1, wt.ID("s")))
	root2 := trees.Add(wt.Dir("etc", etc), wt.Dir("srv", srv))
	sel := []*snapshot.Record{
		{ID: wt.ID("s1").ID, Snapshot: &snapshot.Snapshot{Tree: root1}},
		{ID: wt.ID("s2").ID, Snapshot: &snapshot.Snapshot{Tree: root2}},
	}
	m, err := pathmatch.New([]string{"hosts", "sshd_config"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	n, err := walk.Find(context.Background(), trees, m, sel, func(sn *snapshot.Record, p string, _ *snapshot.Node) error {
		got = append(got, fmt.Sprintf("%s:%s", sn.ID.Short(), p))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s1, s2 := sel[0].ID.Short(), sel[1].ID.Short()
	want := []string{s1 + ":/etc/hosts", s1 + ":/etc/ssh/sshd_config", s2 + ":/etc/hosts", s2 + ":/etc/ssh/sshd_config", s2 + ":/srv/hosts"}
	if n != len(want) || !slices.Equal(got, want) {
		t.Fatalf("%d matches %q\nwant %q", n, got, want)
	}
	if l := trees.Loads(etc); l != 1 {
		t.Errorf("the shared /etc was loaded %d times, want once", l)
	}
}
