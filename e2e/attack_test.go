//go:build linux

package e2e

// Attacks on the client by whoever controls the storage or holds a
// write-only key: oversized objects, costly key parameters, hostile trees
// and nodes, undecodable snapshot records. Resource tests run floe under a
// memory limit (runOpts.memLimitMiB): the attack must end in a clear error,
// never in Go's "out of memory" (which run reports as a crash).

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/crypto"
	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/location"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/snapshot"
	"github.com/floe-backup/floe/internal/storage"
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

// saveBlob stores plain as a blob of type typ and makes it durable.
func saveBlob(t *testing.T, r *repo.Repository, typ repo.BlobType, plain []byte) hash.Ref {
	t.Helper()
	ctx := context.Background()
	w := r.StartWriting()
	id, _, _, err := w.SaveBlob(ctx, typ, r.BlobKey(plain), plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	return id
}

// saveRawTree stores plain as a tree blob and a snapshot whose root it is,
// and returns the snapshot's ID.
func saveRawTree(t *testing.T, r *repo.Repository, plain []byte) string {
	t.Helper()
	ctx := context.Background()
	id := saveBlob(t, r, repo.TreeBlob, plain)
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

// A 200 GB object under keys/, snapshots/ or index/, or as the config, must
// not be read into memory: floe skips the key, reports the snapshot record
// and the index file, and refuses the config, naming the object and the
// limit.
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

	// a huge index file is reported as one that cannot be loaded, naming
	// its limit
	sparseObject(t, filepath.Join(e.repo, "index", strings.Repeat("0", 64)))
	r = e.limited("check")
	expectFail(t, r)
	if out := r.stdout + r.stderr; !strings.Contains(out, "index/"+strings.Repeat("0", 64)) || !strings.Contains(out, "limit of 268435456 bytes") {
		t.Errorf("check: want the huge index file reported with its limit: %s", r)
	}
	os.Remove(filepath.Join(e.repo, "index", strings.Repeat("0", 64)))

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
	data := []byte("a few bytes of content")
	id := saveBlob(t, r, repo.DataBlob, data)
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
	w := r.StartWriting()
	id, _, _, err := w.SaveBlob(ctx, repo.DataBlob, r.BlobKey(data), data)
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
		tid, _, _, err := w.SaveBlob(ctx, repo.TreeBlob, r.BlobKey(plain), plain)
		if err != nil {
			t.Fatal(err)
		}
		nodes = []*snapshot.Node{
			{Name: "d", Type: snapshot.TypeDir, Mode: 0o755, ModTime: now, Subtree: tid},
			{Name: "e", Type: snapshot.TypeFile, Mode: 0o644, ModTime: now, Size: uint64(len(data)), Content: []hash.Ref{id}, ChunkSizes: sizes},
		}
	}
	if err := w.Finish(ctx); err != nil {
		t.Fatal(err)
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

// The write-only key attacker suite (docs/SECURITY.md; it replaces
// TestForgedCopiesAndMarks, whose forged copies are (b) and forged mark (d)). Each attack runs
// with nothing but a write-only key (and the write access to the storage
// that every backup host has); honest hosts back up before and after it,
// with write-only keys of their own, partly the same content (so that
// they deduplicate against what the attacker touched); every attack ends
// with every honest snapshot restoring byte-exact, and where the attack
// is only detectable, with check naming it and repair restoring order.

// trustFixture is a repository with an honest host's and an attacker's
// write-only keys and the honest snapshots made so far.
type trustFixture struct {
	e         *floeEnv
	honest    string // the honest hosts' write-only key file
	evil      string // the attacker's write-only key file
	shared    []byte // content every honest backup holds (the attacker can guess it)
	snapshots []honestSnapshot
}

type honestSnapshot struct {
	id, src  string
	manifest map[string]string
}

func newTrustFixture(t *testing.T) *trustFixture {
	e := newEnv(t)
	e.init()
	f := &trustFixture{e: e, honest: e.path("web.key"), evil: e.path("evil.key")}
	for _, k := range []string{f.honest, f.evil} {
		e.ok("key", "add", "--write-only", "--new-key-file", k)
		registerKeyFile(t, k)
	}
	f.shared = make([]byte, 200<<10)
	for i := range f.shared {
		f.shared[i] = byte(i*31 + i>>11)
	}
	return f
}

// backup makes an honest backup of host with the shared content and a
// file of its own, with the honest write-only key.
func (f *trustFixture) backup(host string) result {
	f.e.t.Helper()
	n := len(f.snapshots)
	src := f.e.mkdir(fmt.Sprintf("src-%s-%d", host, n))
	testutil.WriteFile(f.e.t, filepath.Join(src, "shared"), f.shared)
	testutil.WriteRandom(f.e.t, filepath.Join(src, "own"), 150<<10, uint64(100+n))
	r := f.e.run("-r", f.e.repo, "--key-file", f.honest, "backup", "--json", "--host", host, src)
	expectCode(f.e.t, r, 0)
	f.snapshots = append(f.snapshots, honestSnapshot{id: decodeJSON[backupOut](f.e.t, r).Snapshot, src: src, manifest: testutil.Manifest(f.e.t, src)})
	return r
}

// verifyAll restores every honest snapshot with the full key (--verify)
// and compares it byte for byte.
func (f *trustFixture) verifyAll(what string) {
	f.e.t.Helper()
	for _, s := range f.snapshots {
		f.e.restoreAndCompare(what, s.id, s.src, s.manifest, true)
	}
}

// attacker opens the repository in process with the attacker's key.
func (f *trustFixture) attacker() *repo.Repository {
	f.e.t.Helper()
	be, err := location.Open(f.e.repo)
	if err != nil {
		f.e.t.Fatal(err)
	}
	kf, err := repo.ReadKeyFile(f.evil)
	if err != nil {
		f.e.t.Fatal(err)
	}
	r, err := repo.Open(context.Background(), be, repo.Credential{KeyFile: kf}, repo.OpenOptions{})
	if err != nil {
		f.e.t.Fatal(err)
	}
	f.e.t.Cleanup(func() { r.Close() })
	if !r.WriteOnly() {
		f.e.t.Fatal("the attacker's key is not write-only")
	}
	if err := r.LoadIndex(context.Background()); err != nil {
		f.e.t.Fatal(err)
	}
	return r
}

// forgePack stores, as the attacker, a pack of garbage under the given
// blob IDs and an unsigned index file that lists it (what a write-only
// key writes); it returns the pack's ID.
func forgePack(t *testing.T, wo *repo.Repository, blobs []packfile.Blob) hash.ID {
	t.Helper()
	ctx := context.Background()
	var body []byte
	var listed []packfile.Blob
	for _, b := range blobs {
		listed = append(listed, packfile.Blob{Type: b.Type, ID: b.ID, Offset: uint32(len(body)), Length: b.Length})
		body = append(body, bytes.Repeat([]byte{0x5a}, int(b.Length))...)
	}
	pack := packfile.AppendHeader(body, [packfile.UniqueLen]byte{0xe1}, listed)
	pid := hash.Sum(pack)
	if err := wo.Backend().Save(ctx, storage.Handle{Type: storage.Pack, Name: pid.String()}, pack); err != nil {
		t.Fatal(err)
	}
	if _, err := wo.SaveIndexFile(ctx, &repo.IndexFile{Packs: []repo.PackInfo{{ID: pid, Blobs: listed}}}); err != nil {
		t.Fatal(err)
	}
	return pid
}

// checkRepairCheck: check --read-data names the forgery (exiting code:
// 13 for damage, 0 for what it only warns about), repair shows its plan
// and acts only with --yes, then check --read-data finds nothing.
func (f *trustFixture) checkRepairCheck(code int, names ...string) {
	f.e.t.Helper()
	r := f.e.floe("check", "--read-data")
	expectCode(f.e.t, r, code)
	for _, n := range names {
		if !strings.Contains(r.stdout+r.stderr, n) {
			f.e.t.Fatalf("check does not name %s: %s", n, r)
		}
	}
	before := treeState(f.e.t, f.e.repo)
	r = f.e.floe("repair")
	expectCode(f.e.t, r, 2)
	if !strings.Contains(r.stdout, "repair plan") {
		f.e.t.Fatalf("repair without --yes shows no plan: %s", r)
	}
	if treeState(f.e.t, f.e.repo) != before {
		f.e.t.Fatal("repair without --yes changed the repository")
	}
	f.e.ok("repair", "--yes")
	// what is left is at most the forged pack, which no index lists
	// any more (prune removes it)
	r = f.e.ok("check", "--read-data")
	for _, line := range strings.Split(r.stdout+r.stderr, "\n") {
		for _, n := range names {
			if strings.Contains(line, n) && !strings.Contains(line, "is unreferenced") {
				f.e.t.Fatalf("check after repair still reports %s: %s", n, r)
			}
		}
	}
}

func TestAttackWriteOnlyKey(t *testing.T) {
	t.Parallel()
	// (a) key management with the write-only key: refused (exit 12), and
	// the last full key cannot be removed.
	t.Run("keys", func(t *testing.T) {
		t.Parallel()
		f := newTrustFixture(t)
		f.backup("web1")
		full := fullKeyID(t, f.e)
		keysBefore, _ := os.ReadDir(filepath.Join(f.e.repo, "keys"))
		for _, args := range [][]string{
			{"key", "remove", full},
			{"key", "add", "--new-key-file", f.e.path("stolen-full.key")},
			{"key", "add", "--write-only", "--new-key-file", f.e.path("another.key")},
		} {
			r := f.e.run(append([]string{"-r", f.e.repo, "--key-file", f.evil}, args...)...)
			if r.code != 12 || !strings.Contains(r.stderr, "full key") {
				t.Errorf("write-only floe %s: want exit 12 saying a full key is needed: %s", strings.Join(args, " "), r)
			}
		}
		// the full key cannot remove the last full key (itself)
		r := f.e.floe("key", "remove", full)
		expectFail(t, r)
		if keysAfter, _ := os.ReadDir(filepath.Join(f.e.repo, "keys")); len(keysAfter) != len(keysBefore) {
			t.Fatalf("%d keys after the attack, were %d", len(keysAfter), len(keysBefore))
		}
		f.backup("web2")
		f.verifyAll("after key attacks")
	})

	// (b) a forged copy under the ID of every existing data blob
	t.Run("forged-blob", func(t *testing.T) {
		t.Parallel()
		f := newTrustFixture(t)
		f.backup("web1")
		wo := f.attacker()
		var blobs []packfile.Blob
		wo.Index().Each(func(h repo.BlobHandle, loc repo.Location) {
			if h.Type == repo.DataBlob {
				blobs = append(blobs, packfile.Blob{Type: h.Type, ID: h.ID, Length: loc.Length})
			}
		})
		pid := forgePack(t, wo, blobs)
		f.backup("web2") // deduplicates the shared content: verifies the copy it relies on
		f.verifyAll("with forged copies")
		f.checkRepairCheck(13, pid.Short(), "unsigned")
		f.backup("web1")
		f.verifyAll("after repair")
		f.e.ok("prune", "--grace", "0")
		f.e.ok("prune", "--grace", "0")
		if _, err := os.Stat(filepath.Join(f.e.repo, "data", pid.String()[:2], pid.String())); !os.IsNotExist(err) {
			t.Errorf("prune left the forged pack: %v", err)
		}
		f.verifyAll("after prune")
	})

	// (c) dedup poisoning: the attacker guesses content honest hosts will
	// back up and stores garbage under its ID first
	t.Run("dedup-poisoning", func(t *testing.T) {
		t.Parallel()
		f := newTrustFixture(t)
		wo := f.attacker()
		ref := wo.RefOf(repo.DataBlob, f.shared)
		// the stored length of the guessed blob is what the attacker
		// would get by sealing it itself
		sealedLen := packfile.MinBlobLength
		if _, _, n, err := wo.StartWriting().SaveBlob(context.Background(), repo.DataBlob, wo.BlobKey(f.shared), f.shared); err == nil {
			sealedLen = n
		}
		// (what it stored honestly is not indexed: its Writer never
		// finishes; only the forgery is)
		pid := forgePack(t, wo, []packfile.Blob{{Type: repo.DataBlob, ID: ref.ID, Length: uint32(sealedLen)}})
		if r := f.backup("web1"); !strings.Contains(r.stderr, pid.Short()) {
			t.Errorf("the honest backup did not meet (and report) the poisoned entry: %s", r)
		}
		f.backup("web2")
		f.verifyAll("after dedup poisoning")
		f.checkRepairCheck(13, pid.Short())
		f.backup("web3")
		f.verifyAll("after repair")
	})

	// (d) a forged, backdated gc mark naming every pack, then prune
	t.Run("forged-gc-mark", func(t *testing.T) {
		t.Parallel()
		f := newTrustFixture(t)
		f.backup("web1")
		var packs []string
		filepath.WalkDir(filepath.Join(f.e.repo, "data"), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && !strings.HasPrefix(d.Name(), ".") {
				packs = append(packs, `"`+d.Name()+`"`)
			}
			return nil
		})
		mark := append([]byte(`{"time":"2001-01-01T00:00:00Z","packs":[`+strings.Join(packs, ",")+`]}`), make([]byte, 64)...)
		markID := hash.Sum(mark)
		if err := f.attacker().Backend().Save(context.Background(), storage.Handle{Type: storage.GCMark, Name: markID.String()}, mark); err != nil {
			t.Fatal(err)
		}
		f.backup("web2")
		f.e.ok("prune", "--grace", "0")
		f.e.ok("prune", "--grace", "0")
		for _, p := range packs {
			name := strings.Trim(p, `"`)
			if _, err := os.Stat(filepath.Join(f.e.repo, "data", name[:2], name)); err != nil {
				t.Fatalf("prune deleted a pack the forged mark named: %v", err)
			}
		}
		f.verifyAll("after the forged mark and prune")
		f.checkRepairCheck(0, markID.Short(), "not signed by a full key")
		if _, err := os.Stat(filepath.Join(f.e.repo, "gc", markID.String())); !os.IsNotExist(err) {
			t.Errorf("repair left the forged mark: %v", err)
		}
		f.backup("web1")
		f.verifyAll("after repair")
	})

	// (e) an unsigned index file that supersedes every other
	t.Run("unsigned-supersede", func(t *testing.T) {
		t.Parallel()
		f := newTrustFixture(t)
		f.backup("web1")
		wo := f.attacker()
		all, err := wo.ListIDs(context.Background(), storage.Index)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := wo.SaveIndexFile(context.Background(), &repo.IndexFile{Supersedes: all, Packs: []repo.PackInfo{}}); err != nil {
			t.Fatal(err)
		}
		f.backup("web2")
		f.verifyAll("after an unsigned supersede")
		f.e.ok("check", "--read-data")
		f.e.ok("prune", "--grace", "0")
		f.e.ok("prune", "--grace", "0")
		f.backup("web1")
		f.verifyAll("after prune")
		f.e.ok("check", "--read-data")
	})

	// (f) an undecodable snapshot record, sealed by the write-only key
	t.Run("undecodable-snapshot", func(t *testing.T) {
		t.Parallel()
		f := newTrustFixture(t)
		f.backup("web1")
		f.backup("web1")
		bad, err := f.attacker().SaveSnapshotRecord(context.Background(), []byte(`{"version": 2, "tree": "not a ref"}`))
		if err != nil {
			t.Fatal(err)
		}
		f.backup("web2")
		r := f.e.ok("forget", "--keep-last", "1", "--group-by", "host")
		if !strings.Contains(r.stderr, bad.Short()) {
			t.Errorf("forget does not report the undecodable record: %s", r)
		}
		f.snapshots = f.snapshots[1:] // forgotten
		r = f.e.ok("prune", "--grace", "0")
		if !strings.Contains(r.stderr, bad.Short()) {
			t.Errorf("prune does not report the undecodable record: %s", r)
		}
		f.e.ok("prune", "--grace", "0")
		f.verifyAll("after forget and prune")
		r = f.e.floe("check")
		expectCode(t, r, 13)
		f.e.ok("repair", "--yes")
		if _, err := os.Stat(filepath.Join(f.e.repo, "snapshots", bad.String())); !os.IsNotExist(err) {
			t.Errorf("repair left the undecodable record: %v", err)
		}
		f.e.ok("check", "--read-data")
		f.backup("web3")
		f.verifyAll("after repair")
	})
}

// The same attacks through `floe serve` with a backup token: removing the
// full key is refused by the client (exit 12) and, sent by hand, by the
// server (403); a pack with forged blobs and an index entry pointing at
// the wrong bytes are refused by the server's verification (422); honest
// hosts back up before and after, and every snapshot restores byte-exact.
func TestAttackThroughServer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	webTok := s.token("fleet", "web", "backup")
	evilTok := s.token("fleet", "evil", "backup")
	webKey, evilKey := s.writeOnlyKey(admin, "web.key"), s.writeOnlyKey(admin, "evil.key")
	type snap struct {
		id, src  string
		manifest map[string]string
	}
	var snaps []snap
	shared := bytes.Repeat([]byte("shared content of the fleet "), 8000)
	backup := func(host string) {
		t.Helper()
		src := e.mkdir(fmt.Sprintf("src-%s-%d", host, len(snaps)))
		testutil.WriteFile(t, filepath.Join(src, "shared"), shared)
		testutil.WriteRandom(t, filepath.Join(src, "own"), 100<<10, uint64(200+len(snaps)))
		r := s.remote("fleet", webTok, "--key-file", webKey, "backup", "--json", "--host", host, src)
		expectCode(t, r, 0)
		snaps = append(snaps, snap{decodeJSON[backupOut](t, r).Snapshot, src, testutil.Manifest(t, src)})
	}
	backup("web1")

	keysDir := filepath.Join(s.root, "fleet", "keys")
	keysBefore, _ := os.ReadDir(keysDir)
	var list struct {
		Keys []struct {
			ID        string `json:"id"`
			WriteOnly bool   `json:"write_only"`
		} `json:"keys"`
	}
	full := ""
	if err := json.Unmarshal([]byte(s.remote("fleet", admin, "--password-file", e.pwFile, "key", "list", "--json").stdout), &list); err != nil {
		t.Fatal(err)
	}
	for _, k := range list.Keys {
		if !k.WriteOnly {
			full = k.ID
		}
	}
	if full == "" {
		t.Fatal("no full key listed")
	}
	r := s.remote("fleet", evilTok, "--key-file", evilKey, "key", "remove", full)
	expectCode(t, r, 12)
	// by hand: the server refuses whatever the client is
	evil := readToken(t, evilTok)
	do := func(method, path string, body []byte) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+s.addr+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+evil)
		resp, err := rawClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, k := range keysBefore {
		if code, body := do("DELETE", "/fleet/keys/"+k.Name(), nil); code != http.StatusForbidden {
			t.Errorf("DELETE of key %s with a backup token: %d %s", k.Name()[:8], code, body)
		}
	}
	// forged copies of every data blob, and an index entry that names a
	// genuine blob at the wrong offset of its genuine pack
	var forged []packfile.Blob
	var body []byte
	var genuinePack hash.ID
	var genuine packfile.Blob
	filepath.WalkDir(filepath.Join(s.root, "fleet", "data"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		data, _ := os.ReadFile(p)
		blobs, err := packfile.Parse(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blobs {
			if b.Type == packfile.Data {
				forged = append(forged, packfile.Blob{Type: b.Type, ID: b.ID, Offset: uint32(len(body)), Length: b.Length})
				body = append(body, bytes.Repeat([]byte{0x5a}, int(b.Length))...)
				genuinePack, genuine = hash.Sum(data), b
			}
		}
		return nil
	})
	pack := packfile.AppendHeader(body, [packfile.UniqueLen]byte{0xe2}, forged)
	if code, msg := do("PUT", "/fleet/data/"+hash.Sum(pack).String(), pack); code != http.StatusUnprocessableEntity || !strings.Contains(msg, "do not hash to their IDs") {
		t.Errorf("forged pack: %d %s, want 422", code, msg)
	}
	wrong := genuine
	wrong.Offset, wrong.Length = genuine.Offset+1, genuine.Length-1
	idx, _ := packfile.EncodeIndex(&packfile.Index{Packs: []packfile.Pack{{ID: genuinePack, Blobs: []packfile.Blob{wrong}}}}, nil)
	if code, msg := do("PUT", "/fleet/index/"+hash.Sum(idx).String(), idx); code != http.StatusUnprocessableEntity || !strings.Contains(msg, "does not hash to its ID") {
		t.Errorf("forged index entry: %d %s, want 422", code, msg)
	}
	if keysAfter, _ := os.ReadDir(keysDir); len(keysAfter) != len(keysBefore) {
		t.Fatalf("%d keys after the attack, were %d", len(keysAfter), len(keysBefore))
	}
	refused := 0
	for _, l := range s.auditLines() {
		if l["token"] != nil && l["host"] == "evil" && l["result"] == "refused" {
			refused++
		}
	}
	if refused != len(keysBefore)+2 {
		t.Errorf("%d refusals of the attacker's token in the audit log, want %d", refused, len(keysBefore)+2)
	}

	backup("web2")
	for _, sn := range snaps {
		dst := e.path("restore-" + sn.id[:8])
		expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "restore", "--verify", sn.id+":"+sn.src, "--target", dst), 0)
		testutil.DiffManifest(t, sn.manifest, dst)
	}
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data"), 0)
}

// What the storage sees: no file content, file name, directory name or
// host name appears in any object of the repository (docs/SECURITY.md
// "A hostile storage provider").
func TestStorageSeesNoPlaintext(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src", "secret-directory-name")
	content := bytes.Repeat([]byte("the secret content of a file, "), 2000)
	testutil.WriteFile(t, filepath.Join(src, "secret-file-name.txt"), content)
	e.backup("--host", "secret-host-name", src)
	needles := [][]byte{[]byte("secret-directory-name"), []byte("secret-file-name"), []byte("secret-host-name"), content[:30]}
	filepath.WalkDir(e.repo, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range needles {
			if bytes.Contains(data, n) {
				t.Errorf("%s holds %q in plain text", p, n)
			}
		}
		return nil
	})
}
