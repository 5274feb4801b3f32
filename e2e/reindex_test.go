package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage"
	"github.com/floe-backup/floe/internal/testutil"
)

// Rebuilding the index from the packs (`floe repair`): an index file that
// is damaged or lost leaves packs whose every byte is intact; repair
// verifies them and indexes them again, and leaves packs that do not
// verify (damaged, or a write-only host's garbage) to prune.

// reindexRepo is a damagedRepo with a manifest of each source.
type reindexRepo struct {
	*damagedRepo
	manA, manB map[string]string
}

func newReindexRepo(t *testing.T) *reindexRepo {
	d := newDamagedRepo(t)
	return &reindexRepo{damagedRepo: d, manA: testutil.Manifest(t, d.srcA), manB: testutil.Manifest(t, d.srcB)}
}

// restoresBoth restores both snapshots (--verify) and compares them byte
// for byte with their sources.
func (d *reindexRepo) restoresBoth(what string) {
	d.e.t.Helper()
	d.e.restoreAndCompare(what, d.snapA, d.srcA, d.manA, true)
	d.e.restoreAndCompare(what, d.snapB, d.srcB, d.manB, true)
}

// repairPlan is `floe repair --dry-run --json`.
type repairPlan struct {
	Plan struct {
		Actions []struct {
			Kind  string `json:"kind"`
			ID    string `json:"id"`
			Blobs int    `json:"blobs"`
			Bytes int64  `json:"bytes"`
		} `json:"actions"`
		Left []struct {
			Kind   string `json:"kind"`
			ID     string `json:"id"`
			Reason string `json:"reason"`
		} `json:"left"`
	} `json:"plan"`
	Applied bool `json:"applied"`
}

func (p repairPlan) ids(kind string) []string {
	var out []string
	for _, a := range p.Plan.Actions {
		if a.Kind == kind {
			out = append(out, a.ID)
		}
	}
	return out
}

// baseNames returns the names (IDs) of objects (paths).
func baseNames(paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, filepath.Base(p))
	}
	return out
}

// (a) A damaged index file: check fails and names the fix, repair
// --dry-run shows what it would index and remove and changes nothing,
// repair --yes rebuilds, check --read-data passes, both snapshots restore
// byte-exact, and prune keeps everything they need.
func TestRepairRebuildsDamagedIndex(t *testing.T) {
	t.Parallel()
	d := newReindexRepo(t)
	damaged := d.first["index"]
	for _, p := range damaged {
		flip(t, p)
	}
	r := d.e.floe("check")
	expectCode(t, r, 13)
	if !strings.Contains(r.stdout+r.stderr, "do not prune") || !strings.Contains(r.stdout+r.stderr, "`floe repair` rebuilds the index") {
		t.Errorf("check does not lead to repair: %s", r)
	}
	r = d.e.floe("prune", "--dry-run")
	expectFail(t, r)
	if !strings.Contains(r.stderr, "floe repair") {
		t.Errorf("prune's refusal does not lead to repair: %s", r)
	}

	before := treeState(t, d.e.repo)
	r = d.e.ok("repair", "--dry-run")
	for _, want := range []string{"index 2 packs that no readable index file lists", "remove damaged index file " + filepath.Base(damaged[0])[:8], "dry run: nothing was changed"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("repair --dry-run does not say %q: %s", want, r)
		}
	}
	plan := decodeJSON[repairPlan](t, d.e.ok("repair", "--dry-run", "--json"))
	if got, want := strings.Join(plan.ids("index-pack"), " "), strings.Join(baseNames(d.first["data"]), " "); got != want {
		t.Errorf("--json indexes packs %s, want the first backup's %s", got, want)
	}
	for _, a := range plan.Plan.Actions {
		if a.Kind == "index-pack" && (a.Blobs == 0 || a.Bytes == 0) {
			t.Errorf("--json action %+v does not say what it indexes", a)
		}
	}
	if got := plan.ids("remove-damaged-index"); len(got) != 1 || got[0] != filepath.Base(damaged[0]) {
		t.Errorf("--json removes %v, want %s", got, filepath.Base(damaged[0]))
	}
	// no terminal, no --yes: the plan, and nothing done
	r = d.e.floe("repair")
	expectCode(t, r, 2)
	if treeState(t, d.e.repo) != before {
		t.Fatal("repair without --yes, or with --dry-run, changed the repository")
	}

	r = d.e.ok("repair", "--yes")
	if !strings.Contains(r.stdout, "repaired: 3 of 3") {
		t.Errorf("repair --yes: %s", r)
	}
	if _, err := os.Stat(damaged[0]); !os.IsNotExist(err) {
		t.Errorf("the damaged index file is still there: %v", err)
	}
	r = d.e.ok("check", "--read-data")
	if !strings.Contains(r.stdout+r.stderr, "no problems found") {
		t.Errorf("check --read-data after repair: %s", r)
	}
	d.restoresBoth("after repair")
	if r := d.e.ok("repair", "--yes"); !strings.Contains(r.stdout, "nothing to repair") {
		t.Errorf("second repair: %s", r)
	}
	// prune deletes nothing the snapshots need (twice: mark, then sweep)
	d.e.ok("prune", "--grace", "0")
	d.e.ok("prune", "--grace", "0")
	d.e.ok("check", "--read-data")
	d.restoresBoth("after prune")
}

// (b) An index file deleted by mistake: the snapshot's blobs are in no
// index file; repair indexes their packs again, and backups deduplicate
// against them.
func TestRepairRebuildsDeletedIndex(t *testing.T) {
	t.Parallel()
	d := newReindexRepo(t)
	for _, p := range d.first["index"] {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	r := d.e.floe("check")
	expectCode(t, r, 13)
	if !strings.Contains(r.stdout+r.stderr, "`floe repair` rebuilds the index") {
		t.Errorf("check does not lead to repair: %s", r)
	}
	r = d.e.ok("repair", "--yes")
	if !strings.Contains(r.stdout, "index 2 packs that no readable index file lists") {
		t.Errorf("repair --yes: %s", r)
	}
	d.e.ok("check", "--read-data")
	d.restoresBoth("after repair")
	// a copy of the first backup's file is deduplicated against the
	// rebuilt entries: only its tree is new
	cp := d.e.mkdir("copy")
	data, err := os.ReadFile(filepath.Join(d.srcA, "fa"))
	if err != nil {
		t.Fatal(err)
	}
	testutil.WriteFile(t, filepath.Join(cp, "fa"), data)
	out, _ := d.e.backup(cp)
	if out.Summary.DataAddedStored > 64<<10 {
		t.Errorf("the copy stored %d bytes: not deduplicated against the rebuilt index", out.Summary.DataAddedStored)
	}
	d.e.ok("prune", "--grace", "0")
	d.e.ok("prune", "--grace", "0")
	d.e.ok("check", "--read-data")
	d.restoresBoth("after prune")
}

// (c) Among the packs that no index file lists, one whose blob bytes are
// damaged: repair indexes the others, reports it and leaves it; the
// snapshot whose data it held is reported damaged, the other restores.
func TestRepairLeavesDamagedPack(t *testing.T) {
	t.Parallel()
	d := newReindexRepo(t)
	entries, err := os.ReadDir(filepath.Join(d.e.repo, "index"))
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range entries {
		if err := os.Remove(filepath.Join(d.e.repo, "index", de.Name())); err != nil {
			t.Fatal(err)
		}
	}
	// the second backup's data pack (its largest new object)
	var second []string
	for _, p := range objects(t, filepath.Join(d.e.repo, "data")) {
		if !strings.Contains(strings.Join(d.first["data"], " "), p) {
			second = append(second, p)
		}
	}
	bad := largest(second)
	b, err := os.ReadFile(bad)
	if err != nil {
		t.Fatal(err)
	}
	b[1000] ^= 0x10 // inside the first blob
	if err := os.WriteFile(bad, b, 0o600); err != nil {
		t.Fatal(err)
	}
	badID := filepath.Base(bad)

	var intact []string
	for _, p := range baseNames(objects(t, filepath.Join(d.e.repo, "data"))) {
		if p != badID {
			intact = append(intact, p)
		}
	}
	plan := decodeJSON[repairPlan](t, d.e.ok("repair", "--dry-run", "--json"))
	if got, want := strings.Join(plan.ids("index-pack"), " "), strings.Join(intact, " "); got != want || len(intact) != 3 {
		t.Errorf("--json indexes packs %s, want every pack but the damaged one: %s", got, want)
	}
	if len(plan.Plan.Left) != 1 || plan.Plan.Left[0].ID != badID || !strings.Contains(plan.Plan.Left[0].Reason, "does not hash to its ID") {
		t.Errorf("--json leaves %+v alone, want the damaged pack %s", plan.Plan.Left, badID[:8])
	}
	r := d.e.ok("repair", "--yes")
	if !strings.Contains(r.stdout, "left alone") || !strings.Contains(r.stdout, badID[:8]) {
		t.Errorf("repair does not report the damaged pack: %s", r)
	}
	r = d.e.floe("check", "--read-data")
	expectCode(t, r, 13)
	out := r.stdout + r.stderr
	if !strings.Contains(out, "pack "+badID[:8]+" is unreferenced") || !strings.Contains(out, "snapshot "+d.snapB[:8]) || strings.Contains(out, "snapshot "+d.snapA[:8]) {
		t.Errorf("check after repair: want the damaged pack unreferenced and only snapshot %s damaged: %s", d.snapB[:8], r)
	}
	d.e.restoreAndCompare("after repair", d.snapA, d.srcA, d.manA, true)
	// nothing indexes the damaged pack; prune refuses while a snapshot
	// needs what only it holds, so the pack stays
	expectFail(t, d.e.floe("prune", "--grace", "0"))
	if _, err := os.Stat(bad); err != nil {
		t.Fatalf("the damaged pack is gone: %v", err)
	}
	if r := d.e.ok("repair", "--yes"); !strings.Contains(r.stdout, "nothing to repair") || !strings.Contains(r.stdout, badID[:8]) {
		t.Errorf("second repair: %s", r)
	}
}

// (d) A write-only key uploads a pack whose header lists the ID of a
// genuine blob over garbage bytes, and no index file; the honest index
// file is then damaged. repair indexes the honest packs, never the
// forged one, which prune then deletes.
func TestRepairIgnoresForgedPack(t *testing.T) {
	t.Parallel()
	f := newTrustFixture(t)
	f.backup("web1")
	wo := f.attacker()
	var listed []packfile.Blob
	var body []byte
	wo.Index().Each(func(h repo.BlobHandle, loc repo.Location) {
		listed = append(listed, packfile.Blob{Type: h.Type, ID: h.ID, Offset: uint32(len(body)), Length: loc.Length})
		body = append(body, bytes.Repeat([]byte{0x5a}, int(loc.Length))...)
	})
	pack := packfile.AppendHeader(body, [packfile.UniqueLen]byte{0xe1}, listed)
	forged := hash.Sum(pack)
	if err := wo.Backend().Save(context.Background(), storage.Handle{Type: storage.Pack, Name: forged.String()}, pack); err != nil {
		t.Fatal(err)
	}
	for _, p := range objects(t, filepath.Join(f.e.repo, "index")) {
		flip(t, p)
	}
	r := f.e.ok("repair", "--yes")
	if !strings.Contains(r.stdout, "left alone") || !strings.Contains(r.stdout, forged.Short()) || !strings.Contains(r.stdout, "do not hash to their IDs") {
		t.Errorf("repair does not report the forged pack: %s", r)
	}
	var plan repairPlan
	r = f.e.ok("repair", "--dry-run", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &plan); err != nil {
		t.Fatal(err)
	}
	if len(plan.Plan.Actions) != 0 || len(plan.Plan.Left) != 1 || plan.Plan.Left[0].ID != forged.String() {
		t.Errorf("after repair: %+v", plan)
	}
	r = f.e.ok("check", "--read-data")
	if !strings.Contains(r.stdout+r.stderr, "pack "+forged.Short()+" is unreferenced") {
		t.Errorf("check: the forged pack is not unreferenced: %s", r)
	}
	f.verifyAll("after repair")
	f.backup("web2")
	f.verifyAll("after another backup")
	f.e.ok("prune", "--grace", "0")
	f.e.ok("prune", "--grace", "0")
	if _, err := os.Stat(filepath.Join(f.e.repo, "data", forged.String()[:2], forged.String())); !os.IsNotExist(err) {
		t.Errorf("prune left the forged pack: %v", err)
	}
	f.e.ok("check", "--read-data")
	f.verifyAll("after prune")
}

// Through a floe server, rebuilding the index needs a token that may read
// packs and remove files: a backup token is refused (exit 14) and nothing
// changes; an admin token repairs.
func TestRepairThroughServer(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	s, admin := e.startFleetServer()
	backupTok := s.token("fleet", "web", "backup")
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "f"), 2<<20, 21)
	man := testutil.Manifest(t, src)
	r := s.remote("fleet", admin, "--password-file", e.pwFile, "backup", "--json", src)
	expectCode(t, r, 0)
	snap := decodeJSON[backupOut](t, r).Snapshot
	index := objects(t, filepath.Join(s.root, "fleet", "index"))
	if len(index) != 1 {
		t.Fatalf("index files: %v", index)
	}
	flip(t, index[0])

	before := treeState(t, filepath.Join(s.root, "fleet"))
	r = s.remote("fleet", backupTok, "--password-file", e.pwFile, "repair", "--yes")
	expectCode(t, r, 14)
	if treeState(t, filepath.Join(s.root, "fleet")) != before {
		t.Fatal("a refused repair changed the repository")
	}
	r = s.remote("fleet", admin, "--password-file", e.pwFile, "repair", "--yes")
	expectCode(t, r, 0)
	if !strings.Contains(r.stdout, "index 2 packs") || !strings.Contains(r.stdout, "repaired: 3 of 3") {
		t.Errorf("repair through the server: %s", r)
	}
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "check", "--read-data"), 0)
	dst := e.path("restored")
	expectCode(t, s.remote("fleet", admin, "--password-file", e.pwFile, "restore", snap+":"+src, "--target", dst, "--verify"), 0)
	testutil.DiffManifest(t, man, dst)
}

// Killed at any moment, a repair that rebuilds the index leaves a
// repository that the next repair finishes: check --read-data then passes
// and every snapshot restores byte for byte. Each round starts from the
// same damaged repository and kills the repair at another moment (the
// window between writing the new index files and removing the damaged
// ones is short: internal/repair TestReindexKilledBeforeRemoval stops a
// repair there every time).
func TestRepairCrashSafety(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	type snap struct {
		id, src  string
		manifest map[string]string
	}
	var snaps []snap
	for i := range 4 {
		src := e.mkdir(fmt.Sprintf("src%d", i))
		testutil.WriteRandom(t, filepath.Join(src, "f"), 6<<20, uint64(40+i))
		out, _ := e.backup(src)
		snaps = append(snaps, snap{out.Snapshot, src, testutil.Manifest(t, src)})
	}
	for _, p := range objects(t, filepath.Join(e.repo, "index")) {
		flip(t, p)
	}
	pristine := e.path("damaged")
	copyDir(t, e.repo, pristine)

	// how long a whole repair takes here
	start := time.Now()
	e.ok("repair", "--yes")
	took := time.Since(start)
	t.Logf("a whole repair took %v", took)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for round := range 6 {
		if err := os.RemoveAll(e.repo); err != nil {
			t.Fatal(err)
		}
		copyDir(t, pristine, e.repo)
		delay := took/4 + time.Duration(rng.Int64N(int64(took)))
		finished, _, _ := e.killAfter(delay, "repair", "--yes")
		// where it was killed: the damaged files (all still there?) and
		// the new ones (written yet?)
		var damaged, written int
		for _, p := range objects(t, filepath.Join(e.repo, "index")) {
			if _, err := os.Stat(filepath.Join(pristine, "index", filepath.Base(p))); err == nil {
				damaged++
			} else {
				written++
			}
		}
		t.Logf("round %d: killed after %v (finished before: %v): %d damaged index files left, %d written", round, delay, finished, damaged, written)
		// a repair killed while it applied its plan leaves its lease,
		// which stops the next one until it expires: remove it, as the
		// operator would once sure that the repair is dead
		again := e.ok("repair", "--yes", "--force-unlock")
		if r := e.floe("check", "--read-data"); r.code != 0 {
			t.Fatalf("round %d: check --read-data after a killed repair and another: %s\nthe second repair: %s", round, r, again)
		}
		for _, s := range snaps {
			e.restoreAndCompare(fmt.Sprintf("round %d", round), s.id, s.src, s.manifest, false)
		}
	}
}

// copyDir copies the regular files and directories below src to dst.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(to, fi.Mode().Perm())
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, data, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}
