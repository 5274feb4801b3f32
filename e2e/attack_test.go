//go:build linux

package e2e

// Attacks on the client by whoever controls the storage or holds a
// write-only key: oversized objects, costly key parameters, hostile trees
// and nodes, undecodable snapshot records. Resource tests run floe under a
// memory limit (runOpts.memLimitMiB): the attack must end in a clear error,
// never in Go's "out of memory" (which run reports as a crash).

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/testutil"
)

// attackMemMiB is the heap limit of the resource tests: far below what the
// attacks would allocate (GBs), comfortably above what the commands need.
const attackMemMiB = 256

// limited runs floe on the test's repository under the memory limit.
func (e *floeEnv) limited(args ...string) result {
	e.t.Helper()
	return e.runWith(runOpts{memLimitMiB: attackMemMiB}, append(e.repoArgs(), args...)...)
}

// openInProcess opens the test's repository in the test process, to craft
// objects that floe itself never writes.
func (e *floeEnv) openInProcess() *repo.Repository {
	e.t.Helper()
	be, err := location.Open(e.repo)
	if err != nil {
		e.t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), be, repo.Credential{Password: []byte(e.password)}, repo.OpenOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { r.Close() })
	if err := r.LoadIndex(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	return r
}

// saveRawTree stores plain as a tree blob and a snapshot whose root it is,
// and returns the snapshot's ID.
func saveRawTree(t *testing.T, r *repo.Repository, plain []byte) string {
	t.Helper()
	ctx := context.Background()
	id, _, _, err := r.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(plain), plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	sid, err := snapshot.Save(ctx, r, &snapshot.Snapshot{Time: time.Now(), Hostname: "crafted", Paths: []string{"/crafted"}, Tree: id})
	if err != nil {
		t.Fatal(err)
	}
	return sid.String()
}

// saveTree stores nodes as a tree and a snapshot of it.
func saveTree(t *testing.T, r *repo.Repository, nodes ...*snapshot.Node) string {
	t.Helper()
	plain, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
	if err != nil {
		t.Fatal(err)
	}
	return saveRawTree(t, r, plain)
}

// sparseObject makes a 200 GB sparse file: it costs the storage nothing.
func sparseObject(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(200 << 30); err != nil {
		t.Fatal(err)
	}
}

// A 200 GB object under keys/ or snapshots/, or as the config, must not be
// read into memory: floe skips the key, reports the snapshot record, and
// refuses the config, naming the object and the limit.
func TestAttackHugeObjects(t *testing.T) {
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	os.WriteFile(filepath.Join(src, "f"), []byte("hello"), 0o644)
	e.backup(src)

	// 00... sorts before the real key, so it is tried first
	sparseObject(t, filepath.Join(e.repo, "keys", strings.Repeat("0", 64)))
	r := e.limited("snapshots")
	expectCode(t, r, 0)

	sparseObject(t, filepath.Join(e.repo, "snapshots", strings.Repeat("0", 64)))
	r = e.limited("snapshots")
	if !strings.Contains(r.stderr, "snapshots/"+strings.Repeat("0", 64)) || !strings.Contains(r.stderr, "limit of 67108864 bytes") {
		t.Errorf("want the huge snapshot record reported with its limit: %s", r)
	}

	cfg := filepath.Join(e.repo, "config")
	os.Chmod(cfg, 0o600)
	if err := os.Truncate(cfg, 200<<30); err != nil {
		t.Fatal(err)
	}
	r = e.limited("snapshots")
	expectFail(t, r)
	if !strings.Contains(r.stderr, "config") || !strings.Contains(r.stderr, "limit of 65536 bytes") {
		t.Errorf("want an error naming the config and its limit: %s", r)
	}
}

// A key record that asks for argon2 at 4 GiB would make every open of the
// repository spend that (1 GiB x 20 passes costs 29 s); it is skipped with a
// warning and the next key opens the repository.
func TestAttackCostlyKDF(t *testing.T) {
	e := newEnv(t)
	e.init()
	var real string
	entries, _ := os.ReadDir(filepath.Join(e.repo, "keys"))
	for _, de := range entries {
		real = de.Name()
	}
	// a record that sorts before the real key, so it is tried first
	var name string
	for i := 0; ; i++ {
		rec := repo.KeyRecord{Version: 2, Created: time.Unix(int64(i), 0).UTC(), KDF: "argon2id",
			Argon2: &crypto.KDFParams{Time: 1, MemoryKiB: 4 << 20, Threads: 4, Salt: make([]byte, 16)},
			Sealed: make([]byte, 100)}
		b, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		name = hash.Sum(b).String()
		if name < real {
			if err := os.WriteFile(filepath.Join(e.repo, "keys", name), b, 0o600); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	r := e.limited("snapshots")
	expectCode(t, r, 0)
	if !strings.Contains(r.stderr, "warning: key "+name[:8]+" skipped") || !strings.Contains(r.stderr, "argon2") {
		t.Errorf("want a warning that key %s was skipped: %s", name[:8], r)
	}
	r = e.limited("check")
	expectCode(t, r, 13)
	if !strings.Contains(r.stdout+r.stderr, "key "+name[:8]+": argon2 parameters cost more") {
		t.Errorf("check does not report the costly key: %s", r)
	}
}

// rawTree encodes n minimal file entries by hand: EncodeTree refuses more
// than snapshot.MaxTreeNodes.
func rawTree(n int) []byte {
	buf := append([]byte("FLTR"), snapshot.TreeVersion)
	buf = binary.AppendUvarint(buf, uint64(n))
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("%08d", i)
		buf = append(buf, 1, byte(len(name))) // name
		buf = append(buf, name...)
		buf = append(buf, 2, 1, byte(snapshot.TypeFile), 0) // type, end
	}
	return buf
}

// A tree of a million entries would cost hundreds of MB to decode in ls,
// check and prune: they refuse it with a clear error instead.
func TestAttackHugeTree(t *testing.T) {
	e := newEnv(t)
	e.init()
	r := e.openInProcess()
	sid := saveRawTree(t, r, rawTree(1_000_000))
	for _, args := range [][]string{{"ls", sid}, {"check"}, {"prune"}} {
		res := e.limited(args...)
		expectFail(t, res)
		if !strings.Contains(res.stderr+res.stdout, "at most 524288") {
			t.Errorf("want the tree limit named: %s", res)
		}
	}
}

// badSnapshotRecords stores two snapshot records that do not decode: one
// sealed to the data key but holding no snapshot (what a write-only key can
// upload), one not even sealed (damage). It returns their IDs.
func (e *floeEnv) badSnapshotRecords() (sealed, junk string) {
	e.t.Helper()
	r := e.openInProcess()
	id, err := r.SaveSnapshotRecord(context.Background(), []byte(`{"not": "a snapshot"}`))
	if err != nil {
		e.t.Fatal(err)
	}
	data := []byte("damaged snapshot record")
	junk = hash.Sum(data).String()
	if err := os.WriteFile(filepath.Join(e.repo, "snapshots", junk), data, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return id.String(), junk
}

// One undecodable snapshot record must not block prune and forget: they
// skip and report it; forget removes it by ID; repair removes every one
// after showing its plan, and only with --yes.
func TestAttackUndecodableSnapshot(t *testing.T) {
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "a"), 300<<10, 1)
	first, _ := e.backup(src)
	testutil.WriteRandom(t, filepath.Join(src, "a"), 300<<10, 2)
	e.backup(src)
	sealed, junk := e.badSnapshotRecords()

	e.ok("forget", first.Snapshot)
	r := e.ok("prune", "--grace", "0")
	if !strings.Contains(r.stderr, "do not decode") || !strings.Contains(r.stderr, sealed[:8]) || !strings.Contains(r.stderr, junk[:8]) {
		t.Errorf("prune does not report the undecodable records: %s", r)
	}
	if !strings.Contains(r.stdout, "mark: marked") {
		t.Errorf("prune did not mark the forgotten snapshot's data: %s", r)
	}

	r = e.ok("forget", junk)
	if len(e.snapshots()) != 1 {
		t.Fatalf("want the one good snapshot left: %s", r)
	}
	if _, err := os.Stat(filepath.Join(e.repo, "snapshots", junk)); !os.IsNotExist(err) {
		t.Fatalf("forget %s did not remove the record: %v", junk[:8], err)
	}

	r = e.floe("repair")
	expectCode(t, r, 2) // not confirmed: standard input is not a terminal
	if !strings.Contains(r.stdout, "remove snapshot record "+sealed[:8]) || !strings.Contains(r.stderr, "--yes") {
		t.Errorf("repair without --yes must show its plan and ask for --yes: %s", r)
	}
	if _, err := os.Stat(filepath.Join(e.repo, "snapshots", sealed)); err != nil {
		t.Fatalf("repair without --yes removed the record: %v", err)
	}
	r = e.ok("repair", "--dry-run")
	if _, err := os.Stat(filepath.Join(e.repo, "snapshots", sealed)); err != nil {
		t.Fatalf("repair --dry-run removed the record: %v", err)
	}
	r = e.ok("repair", "--yes")
	if !strings.Contains(r.stdout, "repaired: 1 of 1") {
		t.Errorf("repair --yes: %s", r)
	}
	r = e.ok("snapshots")
	if r.stderr != "" {
		t.Errorf("warnings after repair: %s", r)
	}
	e.ok("check")
	r = e.ok("repair", "--yes")
	if !strings.Contains(r.stdout, "nothing to repair") {
		t.Errorf("second repair: %s", r)
	}
}

// A prune whose gc mark cannot be written fails, and does not claim to
// have marked anything.
func TestAttackPruneMarkFails(t *testing.T) {
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "a"), 300<<10, 1)
	first, _ := e.backup(src)
	testutil.WriteRandom(t, filepath.Join(src, "a"), 300<<10, 2)
	e.backup(src)
	e.ok("forget", first.Snapshot)
	gc := filepath.Join(e.repo, "gc")
	// root ignores permissions, not the immutable attribute
	if out, err := exec.Command("chattr", "+i", gc).CombinedOutput(); err != nil {
		t.Skipf("cannot make %s immutable: %v %s", gc, err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", gc).Run() })
	r := e.floe("prune")
	expectFail(t, r)
	if strings.Contains(r.stdout, "mark: marked") || strings.Contains(r.stdout, "deletes them") {
		t.Errorf("prune claims to have marked packs although the mark was not written: %s", r)
	}
	if !strings.Contains(r.stderr, "gc mark") {
		t.Errorf("want the failed gc mark named: %s", r)
	}
	r = e.floe("forget", "--keep-last", "1", "--prune")
	expectFail(t, r)
}

// A file node whose size disagrees with its content (4 GiB claimed for a
// few bytes, sparse, so that restore would hash 4 GiB of zeros): restore
// refuses that file with a clear error and restores the rest (exit 3);
// check --read-data, which decrypts every blob, reports it. (The tree's
// chunk sizes add up to its size, so only the blob's plaintext can tell:
// plain check cannot.)
func TestAttackFileSizeMismatch(t *testing.T) {
	e := newEnv(t)
	e.init()
	r := e.openInProcess()
	ctx := context.Background()
	data := []byte("a few bytes of content")
	id, _, _, err := r.SaveBlob(ctx, repo.DataBlob, r.BlobKey(data), data)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	file := func(name string, size uint32, sparse bool) *snapshot.Node {
		return &snapshot.Node{Name: name, Type: snapshot.TypeFile, Mode: 0o644, ModTime: now, Size: uint64(size), Sparse: sparse,
			Content: []hash.Ref{id}, ChunkSizes: []uint32{size}}
	}
	sid := saveTree(t, r,
		file("good", uint32(len(data)), false),
		file("liar", 4<<30-1, true),
		file("short", 3, false),
		// an error about a hostile name stays on one line
		file("x\nFORGED line", 3, false),
	)
	target := e.path("target")
	res := e.limited("restore", sid, "--target", target)
	expectCode(t, res, 3)
	for _, name := range []string{"liar", "short"} {
		if !strings.Contains(res.stderr, name) || !strings.Contains(res.stderr, "disagrees with its content") {
			t.Errorf("want %s refused with a clear error: %s", name, res)
		}
		if _, err := os.Lstat(filepath.Join(target, name)); !os.IsNotExist(err) {
			t.Errorf("%s was restored: %v", name, err)
		}
	}
	if got, err := os.ReadFile(filepath.Join(target, "good")); err != nil || string(got) != string(data) {
		t.Errorf("good: %q, %v", got, err)
	}
	for _, line := range strings.Split(res.stderr, "\n") {
		if strings.HasPrefix(line, "FORGED") {
			t.Errorf("a file name forged a line of the errors: %s", res)
		}
	}
	res = e.limited("check", "--read-data")
	expectCode(t, res, 13)
	if !strings.Contains(res.stdout+res.stderr, "liar: data blob "+id.Short()+" holds 22 bytes, the tree says 4294967295") {
		t.Errorf("check does not report the size mismatch: %s", res)
	}
}

// deepTree stores a snapshot of a chain of depth directories "d" with a
// file at the bottom, and returns its ID.
func deepTree(t *testing.T, r *repo.Repository, depth int) string {
	t.Helper()
	ctx := context.Background()
	data := []byte("at the bottom")
	id, _, _, err := r.SaveBlob(ctx, repo.DataBlob, r.BlobKey(data), data)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sizes := []uint32{uint32(len(data))}
	nodes := []*snapshot.Node{{Name: "f", Type: snapshot.TypeFile, Mode: 0o644, ModTime: now, Size: uint64(len(data)), Content: []hash.Ref{id}, ChunkSizes: sizes}}
	for i := 0; i < depth; i++ {
		plain, err := snapshot.EncodeTree(&snapshot.Tree{Nodes: nodes})
		if err != nil {
			t.Fatal(err)
		}
		tid, _, _, err := r.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(plain), plain)
		if err != nil {
			t.Fatal(err)
		}
		nodes = []*snapshot.Node{
			{Name: "d", Type: snapshot.TypeDir, Mode: 0o755, ModTime: now, Subtree: tid},
			{Name: "e", Type: snapshot.TypeFile, Mode: 0o644, ModTime: now, Size: uint64(len(data)), Content: []hash.Ref{id}, ChunkSizes: sizes},
		}
	}
	return saveTree(t, r, nodes...)
}

// Restore time is linear in the depth of directories: a chain of 5,000
// used to take minutes (every directory was reached from the target again).
func TestDeepRestore(t *testing.T) {
	depth := 5000
	if s := os.Getenv("FLOE_DEEP"); s != "" {
		fmt.Sscan(s, &depth)
	}
	e := newEnv(t)
	e.init()
	sid := deepTree(t, e.openInProcess(), depth)
	target := e.path("target")
	res := e.limited(append([]string{"restore", sid, "--target", target}, strings.Fields(os.Getenv("FLOE_DEEP_ARGS"))...)...)
	expectCode(t, res, 0)
	t.Logf("restore of depth %d: %v wall, %v CPU", depth, res.wall, res.cpu)
	// again over it: every entry exists now (resume, --delete)
	res = e.limited("restore", sid, "--target", target, "--delete")
	expectCode(t, res, 0)
	t.Logf("restore of depth %d over itself: %v wall, %v CPU", depth, res.wall, res.cpu)
	// walk down with openat: the path is longer than PATH_MAX
	dir, err := os.OpenRoot(target)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < depth; i++ {
		if _, err := dir.Stat("e"); err != nil {
			t.Fatalf("depth %d: %v", i, err)
		}
		sub, err := dir.OpenRoot("d")
		if err != nil {
			t.Fatalf("depth %d: %v", i, err)
		}
		dir.Close()
		dir = sub
	}
	got, err := fs.ReadFile(dir.FS(), "f")
	dir.Close()
	if err != nil || string(got) != "at the bottom" {
		t.Fatalf("bottom file: %q, %v", got, err)
	}
}

// Host-supplied strings (host names, tags, paths) are escaped in every
// text output: a newline in one must not forge a line.
func TestAttackHostileStringsEscaped(t *testing.T) {
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	evil := filepath.Join(src, "x\nFORGED path")
	if err := os.Mkdir(evil, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(evil, "f"), []byte("data"), 0o644)
	e.backup("--host", "web1\nFORGED host", "--tag", "t\nFORGED tag", evil)
	e.backup("--host", "web1\nFORGED host", "--tag", "t\nFORGED tag", evil)
	for _, args := range [][]string{
		{"snapshots"},
		{"find", "f"},
		{"ls", "latest"},
		{"forget", "--keep-last", "1", "--dry-run"},
		{"forget", "--keep-last", "1", "--dry-run", "--group-by", "host,tags"},
		{"key", "list"},
	} {
		r := e.ok(args...)
		for _, line := range strings.Split(r.stdout+r.stderr, "\n") {
			if strings.HasPrefix(line, "FORGED") {
				t.Errorf("floe %s: a host-supplied newline forged the line %q:\n%s", strings.Join(args, " "), line, r)
			}
		}
		if !strings.Contains(r.stdout, `\nFORGED`) && args[0] != "key" {
			t.Errorf("floe %s: want the escaped string in the output:\n%s", strings.Join(args, " "), r)
		}
	}
}

// restore of a path through a symlink fails, like ls and dump: symlinks in
// a snapshot path are not followed.
func TestRestoreThroughSymlinkFails(t *testing.T) {
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	os.Mkdir(filepath.Join(src, "d"), 0o755)
	os.WriteFile(filepath.Join(src, "d", "x"), []byte("x"), 0o644)
	if err := os.Symlink("d", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	e.backup(src)
	p := "latest:" + src + "/link/x"
	for _, args := range [][]string{{"ls", p}, {"dump", p}, {"restore", p, "--target", e.path("t")}} {
		r := e.floe(args...)
		expectFail(t, r)
		if !strings.Contains(r.stderr, "not a directory") {
			t.Errorf("want a \"not a directory\" error: %s", r)
		}
	}
	if entries, _ := os.ReadDir(e.path("t")); len(entries) > 0 {
		t.Errorf("restore through a symlink restored %d entries", len(entries))
	}
}

// Wrong usage exits 2 everywhere, as README.md documents.
func TestUsageExitCodes(t *testing.T) {
	e := newEnv(t)
	e.init()
	for _, args := range [][]string{
		{"bogus"},
		{"snapshots", "--bogus"},
		{"snapshots", "extra"},
		{"restore"},
		{"restore", "a", "b"},
		{"restore", "latest", "--target", e.path("t"), "--overwrite", "bogus"},
		{"restore", "latest", "--target", e.path("t"), "--include", "["},
		{"forget", "--keep-daily", "abc"},
		{"prune", "--grace", "abc"},
		{"prune", "extra"},
		{"check", "--read-data-subset", "200%"},
		{"init", "extra"},
		{"key", "bogus"},
		{"key", "list", "extra"},
		{"mount"},
		{"repair", "extra"},
		{"repair", "--yes", "--dry-run"},
		{"ls"},
		{"diff", "a"},
		{"backup", "--fs-snapshot", "lvm", "--fs-snapshot-size", "bogus", e.dir},
	} {
		r := e.floe(args...)
		if r.code != 2 {
			t.Errorf("want exit 2: %s", r)
		}
	}
}
