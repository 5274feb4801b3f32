package cache

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/snapshot"
)

func rec(id byte, host string, paths []string, at time.Time) *snapshot.Record {
	return &snapshot.Record{ID: hash.ID{id}, Snapshot: &snapshot.Snapshot{Time: at, Hostname: host, Paths: paths, Tree: hash.Ref{ID: hash.ID{id, 1}}}}
}

func TestTreesAndLatest(t *testing.T) {
	c, err := Open(t.TempDir(), hash.ID{9}.String())
	if err != nil {
		t.Fatal(err)
	}
	tree := &snapshot.Tree{Nodes: []*snapshot.Node{{Name: "a", Type: snapshot.TypeFile, Mode: 0o644}}}
	plain, _ := snapshot.EncodeTree(tree)
	now := time.Now()
	for i := byte(1); i <= 4; i++ {
		w, err := c.NewTreeWriter()
		if err != nil {
			t.Fatal(err)
		}
		w.Add(hash.ID{i, 1}, plain)
		if err := w.Commit(rec(i, "web1", []string{"/etc"}, now.Add(time.Duration(i)*time.Minute))); err != nil {
			t.Fatal(err)
		}
	}
	latest := c.Latest("web1", []string{"/etc"})
	if latest == nil || latest.ID != (hash.ID{4}) {
		t.Fatalf("Latest = %v", latest)
	}
	if c.Latest("web2", []string{"/etc"}) != nil || c.Latest("web1", []string{"/home"}) != nil {
		t.Fatal("Latest matched another host or path set")
	}
	got, err := c.Trees(hash.ID{4}).LoadTree(context.Background(), hash.Ref{ID: hash.ID{4, 1}})
	if err != nil || len(got.Nodes) != 1 || got.Nodes[0].Name != "a" {
		t.Fatalf("cached tree: %v", err)
	}
	// only the newest keepPerSeries snapshots are kept
	if n := len(c.Snapshots()); n != keepPerSeries {
		t.Fatalf("%d snapshots cached, want %d", n, keepPerSeries)
	}
}

func FuzzDecodeTrees(f *testing.F) {
	var b bytes.Buffer
	b.Write(make([]byte, 32))
	b.Write([]byte{3, 'a', 'b', 'c'})
	f.Add(b.Bytes())
	f.Add([]byte{})
	f.Add(append(make([]byte, 32), 0xff, 0xff, 0xff, 0xff, 0x0f))
	f.Fuzz(func(t *testing.T, data []byte) {
		DecodeTrees(bufio.NewReader(bytes.NewReader(data)))
	})
}

// A cached tree may be as large as the format allows (the writer caches
// every tree a backup stores): one above 64 MiB used to make the whole
// file unreadable, so the snapshot's cache was lost at every backup.
func TestDecodeTreesLarge(t *testing.T) {
	big := bytes.Repeat([]byte{7}, 64<<20+1)
	var b bytes.Buffer
	b.Write(make([]byte, 32))
	b.Write(binary.AppendUvarint(nil, uint64(len(big))))
	b.Write(big)
	m, err := DecodeTrees(bufio.NewReader(&b))
	if err != nil || len(m) != 1 || !bytes.Equal(m[hash.ID{}], big) {
		t.Fatalf("a tree of %d bytes: %d trees, %v", len(big), len(m), err)
	}
	// over the format's limit: refused
	b.Reset()
	b.Write(make([]byte, 32))
	b.Write(binary.AppendUvarint(nil, snapshot.MaxTreeSize+1))
	if _, err := DecodeTrees(bufio.NewReader(&b)); err == nil {
		t.Fatal("a tree over the format's limit was read")
	}
}

// A length that claims more than the file holds costs what the file
// holds, not what the length says.
func TestDecodeTreesClaimedLength(t *testing.T) {
	var b bytes.Buffer
	b.Write(make([]byte, 32))
	b.Write(binary.AppendUvarint(nil, snapshot.MaxTreeSize))
	b.Write([]byte("short"))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := DecodeTrees(bufio.NewReader(&b))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut-off tree: %v", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Fatalf("a cut-off tree claiming %d bytes allocated %d", snapshot.MaxTreeSize, got)
	}
}
