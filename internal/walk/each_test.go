package walk_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/walk"
)

// failLoader serves trees from a map; an ID it does not hold fails.
type failLoader struct {
	mu    sync.Mutex
	trees map[hash.ID]*snapshot.Tree
	loads map[hash.ID]int
}

func (f *failLoader) LoadTree(_ context.Context, ref hash.Ref) (*snapshot.Tree, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.loads[ref.ID]++
	if t, ok := f.trees[ref.ID]; ok {
		return t, nil
	}
	return nil, errors.New("no such tree")
}

func ref(i int) hash.Ref {
	var r hash.Ref
	r.ID[0], r.ID[1] = byte(i), byte(i>>8)
	return r
}

func dir(subs ...int) *snapshot.Tree {
	t := &snapshot.Tree{}
	for _, s := range subs {
		t.Nodes = append(t.Nodes, &snapshot.Node{Subtree: ref(s)})
	}
	return t
}

// EachTree visits every reachable tree once (shared subtrees, two roots
// naming one tree, more trees than a batch), reports a tree that does not
// load without going below it, and stops at fn's error.
func TestEachTree(t *testing.T) {
	l := &failLoader{trees: map[hash.ID]*snapshot.Tree{}, loads: map[hash.ID]int{}}
	// 1 -> 2, 3; 2 -> 4; 3 -> 4, 5 (5 does not load); 6 is stored but
	// reachable from nothing
	l.trees[ref(1).ID] = dir(2, 3)
	l.trees[ref(2).ID] = dir(4)
	l.trees[ref(3).ID] = dir(4, 5)
	l.trees[ref(4).ID] = dir()
	l.trees[ref(6).ID] = dir()
	// 10 -> 1000 leaves: more than one batch
	var leaves []int
	for i := 11; i < 1011; i++ {
		leaves = append(leaves, i)
		l.trees[ref(i).ID] = dir()
	}
	l.trees[ref(10).ID] = dir(leaves...)

	visited := map[hash.ID]int{}
	var failed []hash.Ref
	err := walk.EachTree(context.Background(), l, []hash.Ref{ref(1), ref(1), ref(10)}, 3, func(r hash.Ref, tr *snapshot.Tree, err error) error {
		visited[r.ID]++
		if err != nil {
			failed = append(failed, r)
		} else if tr == nil {
			t.Errorf("tree %v: nil tree without an error", r.ID[:2])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := 5 + 1 + 1000; len(visited) != want {
		t.Errorf("visited %d trees, want %d", len(visited), want)
	}
	for id, n := range visited {
		if n != 1 || l.loads[id] != 1 {
			t.Errorf("tree %v: visited %d times, loaded %d times", id[:2], n, l.loads[id])
		}
	}
	if len(failed) != 1 || failed[0] != ref(5) {
		t.Errorf("failed trees %v, want only tree 5", failed)
	}
	if visited[ref(6).ID] != 0 {
		t.Error("a tree reachable from no root was visited")
	}

	stop := errors.New("stop")
	calls := 0
	err = walk.EachTree(context.Background(), l, []hash.Ref{ref(10)}, 2, func(hash.Ref, *snapshot.Tree, error) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 3 {
		t.Errorf("EachTree = %v after %d calls, want fn's error after 3", err, calls)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := walk.EachTree(ctx, l, []hash.Ref{ref(1)}, 2, func(hash.Ref, *snapshot.Tree, error) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("EachTree with a cancelled context = %v", err)
	}
}
