package check

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/storage/mem"
	"github.com/floe-backup/floe/internal/testutil"
)

// A write-only host forges a copy of a blob (garbage under its ID, in a
// pack of its own, listed by an unsigned index file) and an unsigned gc
// mark. check --read-data names the forged pack and the index file, says
// it is unsigned, does not call the snapshots damaged (the genuine copy
// serves), and reports the mark.
func TestForgedCopyAndMarkReported(t *testing.T) {
	ctx := context.Background()
	be := mem.New()
	f := newFixture(t, be)
	wo := testutil.WriteOnly(t, open(t, be))
	_, loc := f.packOf(t, repo.DataBlob, f.blobs["hosts"])
	id := f.blobs["hosts"].ID
	blobs := []packfile.Blob{{Type: repo.DataBlob, ID: id, Length: loc.Length}}
	pack := packfile.AppendHeader(bytes.Repeat([]byte{1}, int(loc.Length)), [packfile.UniqueLen]byte{3}, blobs)
	pid := hash.Sum(pack)
	be.Set(storage.Handle{Type: storage.Pack, Name: pid.String()}, pack)
	idx, err := wo.SaveIndexFile(ctx, &repo.IndexFile{Packs: []repo.PackInfo{{ID: pid, Blobs: blobs}}})
	if err != nil {
		t.Fatal(err)
	}
	mark := append([]byte(`{"time":"2001-01-01T00:00:00Z","packs":["`+loc.Pack.String()+`"]}`), make([]byte, 64)...)
	be.Set(storage.Handle{Type: storage.GCMark, Name: hash.Sum(mark).String()}, mark)

	res := run(t, be, Options{ReadData: true})
	var named, markSeen bool
	for _, p := range res.Problems {
		if p.Severity == Error && strings.Contains(p.Message, pid.Short()) && strings.Contains(p.Message, idx.Short()) && strings.Contains(p.Message, "unsigned") {
			named = true
		}
		if p.Kind == KindGCMark && p.Severity == Warning && strings.Contains(p.Message, "not signed") {
			markSeen = true
		}
	}
	if !named || !markSeen {
		t.Fatalf("forged copy named: %v, mark reported: %v; problems: %v", named, markSeen, res.Problems)
	}
	if len(res.Affected) > 0 {
		t.Fatalf("snapshots reported damaged though the genuine copy serves: %v", res.Affected)
	}
}
