package storage

import "testing"

// remote stands for a backend with slow round trips.
type remote struct {
	Backend
	conns int
}

func (r remote) Connections() int { return r.conns }

type wrapper struct{ Backend }

func (w wrapper) Unwrap() Backend { return w.Backend }

func TestAsFindsThroughWrappers(t *testing.T) {
	r := remote{conns: 16}
	for _, be := range []Backend{r, wrapper{r}, wrapper{wrapper{r}}} {
		h, ok := As[ConnectionsHint](be)
		if !ok || h.Connections() != 16 {
			t.Errorf("As(%T) = %v, %v; want the remote's hint", be, h, ok)
		}
	}
	if _, ok := As[StreamSaver](wrapper{r}); ok {
		t.Error("As found a capability nobody in the chain has")
	}
	if _, ok := As[ConnectionsHint](nil); ok {
		t.Error("As(nil) found something")
	}
}

func TestConnections(t *testing.T) {
	for _, c := range []struct {
		def  int
		bes  []Backend
		want int
	}{
		{4, nil, 4},
		{4, []Backend{wrapper{}}, 4},
		{4, []Backend{wrapper{remote{conns: 16}}}, 16},
		{4, []Backend{remote{conns: 2}}, 4}, // a hint only raises the default
		{4, []Backend{remote{conns: 8}, wrapper{remote{conns: 32}}}, 32},
	} {
		if got := Connections(c.def, c.bes...); got != c.want {
			t.Errorf("Connections(%d, %v) = %d, want %d", c.def, c.bes, got, c.want)
		}
	}
}
