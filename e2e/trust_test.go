package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/testutil"
)

// A host with write access to the storage (all a write-only key needs)
// stores a forged copy of every data blob (garbage under the blob's ID,
// listed by an unsigned index file) and a backdated, unsigned gc mark
// naming every pack. Restore stays byte-exact, check --read-data names the
// forged pack and says its index file is unsigned, prune keeps the genuine
// copies and removes the forged pack, and the mark deletes nothing.
func TestForgedCopiesAndMarks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.ManyFiles(t, src, 20, 30000, 7)
	m := testutil.Manifest(t, src)
	b := decodeJSON[backupOut](t, e.ok("backup", "--json", src))

	// the attack, on the files of the local repository
	var body []byte
	var blobs []packfile.Blob
	var packs []string
	filepath.WalkDir(filepath.Join(e.repo, "data"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		packs = append(packs, `"`+d.Name()+`"`)
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		bl, err := packfile.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range bl {
			if x.Type == packfile.Data {
				blobs = append(blobs, packfile.Blob{Type: x.Type, ID: x.ID, Offset: uint32(len(body)), Length: x.Length})
				body = append(body, bytes.Repeat([]byte{0x5a}, int(x.Length))...)
			}
		}
		return nil
	})
	pack := packfile.AppendHeader(body, [packfile.UniqueLen]byte{1}, blobs)
	pid := hash.Sum(pack).String()
	writeObject(t, filepath.Join(e.repo, "data", pid[:2], pid), pack)
	idx, err := packfile.EncodeIndex(&packfile.Index{Packs: []packfile.Pack{{ID: hash.Sum(pack), Blobs: blobs}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	writeObject(t, filepath.Join(e.repo, "index", hash.Sum(idx).String()), idx)
	mark := append([]byte(`{"time":"2001-01-01T00:00:00Z","packs":[`+strings.Join(packs, ",")+`]}`), make([]byte, 64)...)
	writeObject(t, filepath.Join(e.repo, "gc", hash.Sum(mark).String()), mark)

	e.restoreAndCompare("restore with forged copies", b.Snapshot, src, m, true)
	r := e.floe("check", "--read-data")
	expectFail(t, r)
	out := r.stdout + r.stderr
	if !strings.Contains(out, pid[:8]) || !strings.Contains(out, "unsigned") || !strings.Contains(out, "not signed by a full key") {
		t.Fatalf("check does not name the forged pack, its unsigned index file and the unsigned mark: %s", r)
	}
	e.ok("prune", "--grace", "0")
	e.ok("prune", "--grace", "0")
	if _, err := os.Stat(filepath.Join(e.repo, "data", pid[:2], pid)); !os.IsNotExist(err) {
		t.Fatalf("the forged pack is still there: %v", err)
	}
	for _, p := range packs {
		name := strings.Trim(p, `"`)
		if _, err := os.Stat(filepath.Join(e.repo, "data", name[:2], name)); err != nil {
			t.Fatalf("a genuine pack was deleted: %v", err)
		}
	}
	os.Remove(filepath.Join(e.repo, "gc", hash.Sum(mark).String()))
	e.ok("check", "--read-data")
	e.restoreAndCompare("restore after prune", b.Snapshot, src, m, true)
}

func writeObject(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
