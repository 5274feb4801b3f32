package transfer

import (
	"testing"

	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
)

// slowRemote stands for an object store: it asks for more connections.
type slowRemote struct{ storage.Backend }

func (slowRemote) Connections() int { return 16 }

func TestConnectionsHintRaisesTheDefault(t *testing.T) {
	local, remote := mem.New(), slowRemote{mem.New()}
	for _, c := range []struct {
		opts Options
		bes  []storage.Backend
		want int
	}{
		{Options{}, []storage.Backend{local, local}, DefaultConnections},
		{Options{}, []storage.Backend{local, remote}, 16},
		{Options{Connections: 2}, []storage.Backend{local, remote}, 2}, // --connections wins
	} {
		if got := c.opts.withConnections(c.bes...).connections(); got != c.want {
			t.Errorf("%+v on %T: %d connections, want %d", c.opts, c.bes[1], got, c.want)
		}
	}
}
