package walk_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
	wt "github.com/floe-backup/floe/internal/walk/walktest"
)

// sample builds:
//
//	/etc/            /etc/hosts  /etc/ssh/  /etc/ssh/sshd_config
//	/home/           /home/a\xff (a non-UTF-8 name)
//	/vmlinuz -> boot/vmlinuz
func sample(t *wt.Trees) (root, etc, ssh hash.Ref) {
	ssh = t.Add(wt.File("sshd_config", 10, wt.ID("c")))
	etc = t.Add(wt.File("hosts", 5, wt.ID("h")), wt.Dir("ssh", ssh))
	home := t.Add(wt.File("a\xff", 0))
	root = t.Add(wt.Dir("etc", etc), wt.Dir("home", home), wt.Symlink("vmlinuz", "boot/vmlinuz"))
	return root, etc, ssh
}

func TestWalkOrderAndPaths(t *testing.T) {
	trees := wt.New()
	root, _, _ := sample(trees)
	var got []string
	err := walk.Walk(context.Background(), trees, "/", root, func(p string, n *snapshot.Node) error {
		got = append(got, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/etc", "/etc/hosts", "/etc/ssh", "/etc/ssh/sshd_config", "/home", "/home/a\xff", "/vmlinuz"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
}

func TestWalkSubdirAndSkip(t *testing.T) {
	trees := wt.New()
	root, etc, _ := sample(trees)
	var got []string
	err := walk.Walk(context.Background(), trees, "/etc", etc, func(p string, n *snapshot.Node) error {
		got = append(got, p)
		if n.Type == snapshot.TypeDir {
			return walk.SkipDir
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/etc/hosts", "/etc/ssh"}; !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	// SkipDir for a file is ignored
	n := 0
	err = walk.Walk(context.Background(), trees, "/", root, func(p string, nd *snapshot.Node) error {
		n++
		if nd.Type != snapshot.TypeDir {
			return walk.SkipDir
		}
		return nil
	})
	if err != nil || n != 7 {
		t.Fatalf("n=%d err=%v", n, err)
	}
}

func TestVisitLeave(t *testing.T) {
	trees := wt.New()
	root, _, _ := sample(trees)
	var events []string
	err := walk.Visit(context.Background(), trees, "/", root, walk.Visitor{
		Node: func(p string, n *snapshot.Node) error {
			events = append(events, "> "+p)
			if p == "/home" {
				return walk.SkipDir
			}
			return nil
		},
		Leave: func(p string, n *snapshot.Node) error {
			events = append(events, "< "+p)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"> /etc", "> /etc/hosts", "> /etc/ssh", "> /etc/ssh/sshd_config", "< /etc/ssh", "< /etc",
		"> /home", "> /vmlinuz"}
	if !slices.Equal(events, want) {
		t.Fatalf("got %q\nwant %q", events, want)
	}
}

func TestWalkErrors(t *testing.T) {
	trees := wt.New()
	root, _, ssh := sample(trees)
	stop := errors.New("stop")
	err := walk.Walk(context.Background(), trees, "/", root, func(p string, n *snapshot.Node) error {
		if p == "/etc/hosts" {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Fatalf("got %v, want the callback's error", err)
	}
	boom := errors.New("boom")
	trees.Fail[ssh] = boom
	err = walk.Walk(context.Background(), trees, "/", root, func(string, *snapshot.Node) error { return nil })
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "/etc/ssh") {
		t.Fatalf("got %v, want boom naming /etc/ssh", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := walk.Walk(ctx, trees, "/", root, func(string, *snapshot.Node) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled walk: %v", err)
	}
}

func TestResolve(t *testing.T) {
	trees := wt.New()
	root, etc, _ := sample(trees)
	ctx := context.Background()
	for _, tc := range []struct {
		in, path, name string
		err            error
	}{
		{"", "/", "/", nil},
		{"/", "/", "/", nil},
		{"etc", "/etc", "etc", nil},
		{"/etc//ssh/", "/etc/ssh", "ssh", nil},
		{"/etc/ssh/../hosts", "/etc/hosts", "hosts", nil},
		{"/../../etc", "/etc", "etc", nil},
		{"/home/a\xff", "/home/a\xff", "a\xff", nil},
		{"/etc/nope", "", "", walk.ErrNotFound},
		{"/etc/hosts/x", "", "", walk.ErrNotDir},
	} {
		p, n, err := walk.Resolve(ctx, trees, root, tc.in)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("Resolve(%q): err %v, want %v", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || p != tc.path || n.Name != tc.name {
			t.Errorf("Resolve(%q) = %q, %v, %v; want %q, %q", tc.in, p, n, err, tc.path, tc.name)
		}
	}
	_, n, _ := walk.Resolve(ctx, trees, root, "/etc")
	if n.Subtree != etc || n.Type != snapshot.TypeDir {
		t.Fatalf("/etc resolved to %+v", n)
	}
	_, n, _ = walk.Resolve(ctx, trees, root, "/")
	if n.Subtree != root {
		t.Fatal("root does not resolve to the root tree")
	}
}

func TestCache(t *testing.T) {
	trees := wt.New()
	root, etc, ssh := sample(trees)
	c := walk.NewCache(trees, 0)
	for i := 0; i < 3; i++ {
		if err := walk.Walk(context.Background(), c, "/", root, func(string, *snapshot.Node) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []hash.Ref{root, etc, ssh} {
		if n := trees.Loads(id); n != 1 {
			t.Errorf("tree %s loaded %d times through the cache", id.Short(), n)
		}
	}
	// a cache for 4 nodes holds the root (3 nodes + 1) only until the next
	small := walk.NewCache(trees, 4)
	small.LoadTree(context.Background(), root)
	small.LoadTree(context.Background(), etc)
	small.LoadTree(context.Background(), root)
	if n := trees.Loads(root); n != 3 {
		t.Errorf("root loaded %d times in all, want 3 (evicted)", n)
	}
}

func TestJoinClean(t *testing.T) {
	if walk.Join("/", "etc") != "/etc" || walk.Join("/etc", "x") != "/etc/x" {
		t.Fatal("Join")
	}
	if walk.Clean("") != "/" || walk.Clean("a/b/") != "/a/b" {
		t.Fatal("Clean")
	}
}
