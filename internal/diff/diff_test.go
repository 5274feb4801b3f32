package diff_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/diff"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
	wt "github.com/floe-backup/floe/internal/walk/walktest"
)

func clone(n *snapshot.Node) *snapshot.Node {
	c := *n
	c.Content = slices.Clone(n.Content)
	c.Xattrs = slices.Clone(n.Xattrs)
	return &c
}

func TestCompare(t *testing.T) {
	base := wt.File("f", 10, wt.ID("a"))
	base.Xattrs = []snapshot.Xattr{{Name: "user.x", Value: []byte("1")}}
	link := wt.Symlink("l", "target")
	dev := &snapshot.Node{Name: "d", Type: snapshot.TypeCharDev, Mode: 0o600, Rdev: 0x0501}
	for _, tc := range []struct {
		name string
		old  *snapshot.Node
		edit func(n *snapshot.Node)
		want diff.Attr
	}{
		{"same", base, func(n *snapshot.Node) {}, 0},
		{"content", base, func(n *snapshot.Node) { n.Content = []hash.Ref{wt.ID("b")} }, diff.AttrContent},
		{"content and size", base, func(n *snapshot.Node) {
			n.Content = []hash.Ref{wt.ID("a"), wt.ID("b")}
			n.ChunkSizes = []uint32{10, 10}
			n.Size = 20
		},
			diff.AttrContent | diff.AttrSize},
		{"mode", base, func(n *snapshot.Node) { n.Mode = 0o600 }, diff.AttrMode},
		{"setuid", base, func(n *snapshot.Node) { n.Mode |= 0o4000 }, diff.AttrMode},
		{"uid", base, func(n *snapshot.Node) { n.UID = 0 }, diff.AttrOwner},
		{"gid", base, func(n *snapshot.Node) { n.GID = 0 }, diff.AttrOwner},
		{"user name", base, func(n *snapshot.Node) { n.User = "bob" }, diff.AttrNames},
		{"mtime ns", base, func(n *snapshot.Node) { n.ModTime = n.ModTime.Add(time.Nanosecond) }, diff.AttrMtime},
		{"ctime", base, func(n *snapshot.Node) { n.ChangeTime = wt.Time }, diff.AttrCtime},
		{"atime", base, func(n *snapshot.Node) { n.AccessTime = wt.Time }, diff.AttrAtime},
		{"inode", base, func(n *snapshot.Node) { n.Inode = 7 }, diff.AttrInode},
		{"links", base, func(n *snapshot.Node) { n.Links = 2 }, diff.AttrLinks},
		{"xattr value", base, func(n *snapshot.Node) { n.Xattrs[0].Value = []byte("2") }, diff.AttrXattrs},
		{"xattr added", base, func(n *snapshot.Node) {
			n.Xattrs = append(n.Xattrs, snapshot.Xattr{Name: "user.y"})
		}, diff.AttrXattrs},
		{"xattr removed", base, func(n *snapshot.Node) { n.Xattrs = nil }, diff.AttrXattrs},
		{"type", base, func(n *snapshot.Node) { n.Type = snapshot.TypeDir; n.Content = nil; n.Size = 0 }, diff.AttrType},
		{"link target", link, func(n *snapshot.Node) { n.LinkTarget = "other" }, diff.AttrTarget},
		{"rdev", dev, func(n *snapshot.Node) { n.Rdev = 0x0502 }, diff.AttrRdev},
		{"block vs char", dev, func(n *snapshot.Node) { n.Type = snapshot.TypeBlockDev }, diff.AttrType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := clone(tc.old)
			tc.edit(n)
			if got := diff.Compare(tc.old, n); got != tc.want {
				t.Fatalf("Compare = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestAttrNames(t *testing.T) {
	if s := (diff.AttrContent | diff.AttrMode | diff.AttrMtime).String(); s != "content,mode,mtime" {
		t.Fatalf("String = %q", s)
	}
	a, ok := diff.ParseAttr("default,ctime")
	if !ok || a != diff.DefaultAttrs|diff.AttrCtime {
		t.Fatalf("ParseAttr = %s %v", a, ok)
	}
	if a, ok := diff.ParseAttr("all"); !ok || a != diff.AllAttrs || len(a.Names()) != 14 {
		t.Fatalf("all = %s", a)
	}
	if _, ok := diff.ParseAttr("content,bogus"); ok {
		t.Fatal("ParseAttr accepted bogus")
	}
}

type line struct {
	kind diff.Kind
	path string
	what string
}

func (l line) String() string { return fmt.Sprintf("%s %s %s", l.kind, l.path, l.what) }

func run(t *testing.T, trees *wt.Trees, old, new hash.Ref, opts diff.Options) ([]string, diff.Summary) {
	t.Helper()
	var got []string
	sum, err := diff.Trees(context.Background(), trees, "/", old, new, opts, func(c diff.Change) error {
		got = append(got, line{c.Kind, c.Path, c.What.String()}.String())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got, sum
}

func TestTrees(t *testing.T) {
	trees := wt.New()
	// unchanged subtree, shared by both: must not be loaded
	shared := trees.Add(wt.File("big", 1000, wt.ID("big")))
	oldSub := trees.Add(wt.File("x", 1, wt.ID("x")))
	newSub := trees.Add(wt.File("y", 2, wt.ID("y")), wt.File("z", 3, wt.ID("z")))
	oldNode := wt.File("changed", 10, wt.ID("c1"))
	newNode := clone(oldNode)
	newNode.Content, newNode.ChunkSizes, newNode.Size, newNode.Mode = []hash.Ref{wt.ID("c2")}, []uint32{12}, 12, 0o600
	old := trees.Add(
		wt.Dir("gone", oldSub),
		wt.Dir("same", shared),
		oldNode,
		wt.File("removed", 7, wt.ID("r")),
		wt.File("typechange", 4, wt.ID("t")),
		wt.Symlink("link", "a"),
	)
	tc := wt.Dir("typechange", newSub)
	new := trees.Add(
		wt.File("added", 5, wt.ID("a")),
		wt.Dir("new", newSub),
		wt.Dir("same", shared),
		newNode,
		tc,
		wt.Symlink("link", "b"),
	)
	got, sum := run(t, trees, old, new, diff.Options{})
	want := []string{
		"+ /added ",
		"M /changed content,size,mode",
		"- /gone ",
		"- /gone/x ",
		"M /link target",
		"+ /new ",
		"+ /new/y ",
		"+ /new/z ",
		"- /removed ",
		"M /typechange type,mode,owner",
		"+ /typechange/y ",
		"+ /typechange/z ",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
	if trees.Loads(shared) != 0 {
		t.Fatal("the shared subtree was loaded")
	}
	wantSum := diff.Summary{Added: 6, Removed: 3, Modified: 3,
		BytesAdded: 5 + 2 + 3 + 12 + 2 + 3, BytesRemoved: 1 + 10 + 7 + 4, TreesSkipped: 1}
	if sum != wantSum {
		t.Fatalf("summary %+v, want %+v", sum, wantSum)
	}

	// identical roots: nothing at all, nothing loaded
	got, sum = run(t, trees, old, old, diff.Options{})
	if len(got) != 0 || sum.TreesSkipped != 1 || trees.Loads(old) != 1 {
		t.Fatalf("identical: %q %+v", got, sum)
	}

	// only the selected attributes count
	got, _ = run(t, trees, old, new, diff.Options{Attrs: diff.AttrMode})
	for _, l := range got {
		if l[0] == 'M' && l != "M /changed mode" && l != "M /typechange mode" {
			t.Fatalf("with Attrs=mode: %q", got)
		}
	}
}

func TestNodesAndErrors(t *testing.T) {
	trees := wt.New()
	sub := trees.Add(wt.File("f", 1))
	a := wt.Dir("etc", sub)
	b := clone(a)
	b.Mode = 0o700
	var got []string
	sum, err := diff.Nodes(context.Background(), trees, "/etc", a, b, diff.Options{}, func(c diff.Change) error {
		got = append(got, line{c.Kind, c.Path, c.What.String()}.String())
		return nil
	})
	if err != nil || !slices.Equal(got, []string{"M /etc mode"}) || sum.TreesSkipped != 1 {
		t.Fatalf("%q %+v %v", got, sum, err)
	}

	stop := errors.New("stop")
	other := trees.Add(wt.File("g", 1))
	_, err = diff.Trees(context.Background(), trees, "/", sub, other, diff.Options{}, func(diff.Change) error { return stop })
	if err != stop {
		t.Fatalf("callback error: %v", err)
	}
	boom := errors.New("boom")
	trees.Fail[other] = boom
	_, err = diff.Trees(context.Background(), trees, "/x", sub, other, diff.Options{}, func(diff.Change) error { return nil })
	if !errors.Is(err, boom) {
		t.Fatalf("load error: %v", err)
	}
}
