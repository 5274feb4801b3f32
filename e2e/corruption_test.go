package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// damagedRepo holds two snapshots whose data lie in different packs and
// index files: damage to the first must not stop the second restoring.
type damagedRepo struct {
	e            *floeEnv
	srcA, srcB   string
	snapA, snapB string
	first        map[string][]string // objects written by the first backup, by directory
}

func newDamagedRepo(t *testing.T) *damagedRepo {
	e := newEnv(t)
	e.init()
	d := &damagedRepo{e: e, srcA: e.mkdir("a"), srcB: e.mkdir("b")}
	testutil.WriteRandom(t, filepath.Join(d.srcA, "fa"), 3<<20, 11)
	out, _ := e.backup(d.srcA)
	d.snapA = out.Snapshot
	d.first = map[string][]string{}
	for _, dir := range []string{"data", "index", "snapshots", "keys"} {
		d.first[dir] = objects(t, filepath.Join(e.repo, dir))
	}
	testutil.WriteRandom(t, filepath.Join(d.srcB, "fb"), 3<<20, 12)
	out, _ = e.backup(d.srcB)
	d.snapB = out.Snapshot
	return d
}

// objects lists the regular files below dir.
func objects(t *testing.T, dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, de os.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func largest(paths []string) string {
	best, size := "", int64(-1)
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			best, size = p, fi.Size()
		}
	}
	return best
}

func flip(t *testing.T, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x10
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func truncate(t *testing.T, path string) {
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()*2/3); err != nil {
		t.Fatal(err)
	}
}

func noPanic(t *testing.T, r result) {
	t.Helper()
	if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
		t.Fatalf("floe panicked: %s", r)
	}
}

// restoresIntact restores snapshot snap and compares it with src.
func (d *damagedRepo) restoresIntact(t *testing.T, snap, src string) {
	t.Helper()
	target := d.e.path("restore-" + snap[:8])
	d.e.ok("restore", snap+":"+src, "--target", target)
	testutil.CompareTrees(t, src, target)
}

func TestCorruptionIsReportedAndContained(t *testing.T) {
	t.Parallel()
	damage := map[string]func(*testing.T, string){"flipped bit": flip, "truncated": truncate}
	for _, kind := range []string{"data", "index", "snapshots"} {
		for how, fn := range damage {
			t.Run(kind+" "+how, func(t *testing.T) {
				t.Parallel()
				d := newDamagedRepo(t)
				targets := d.first[kind]
				if kind == "data" {
					targets = []string{largest(d.first[kind])} // the file's data, not its trees
				}
				for _, p := range targets {
					fn(t, p)
				}
				args := []string{"check"}
				if kind == "data" {
					args = append(args, "--read-data")
				}
				r := d.e.floe(args...)
				noPanic(t, r)
				expectCode(t, r, 13)
				if kind == "data" && !strings.Contains(r.stdout+r.stderr, filepath.Join(d.srcA, "fa")) {
					t.Errorf("check does not name the damaged file: %s", r)
				}
				// what the damage does not touch still restores
				d.restoresIntact(t, d.snapB, d.srcB)
				if kind == "data" {
					r := d.e.floe("restore", d.snapA+":"+d.srcA, "--target", d.e.path("broken"))
					noPanic(t, r)
					expectCode(t, r, 3)
					// the damaged blob has no other copy: the warning must
					// not claim one was used
					if how == "flipped bit" && (strings.Contains(r.stderr, "another copy was used") || !strings.Contains(r.stderr, "no other copy is known")) {
						t.Errorf("restore of a blob without a good copy says: %s", r.stderr)
					}
				}
			})
		}
	}
}

func TestCorruptKeysAndConfig(t *testing.T) {
	t.Parallel()
	t.Run("one of two keys", func(t *testing.T) {
		t.Parallel()
		d := newDamagedRepo(t)
		second := d.e.path("pw2")
		writeSecretFile(t, second)
		d.e.ok("key", "add", "--new-password-file", second)
		flip(t, d.first["keys"][0])
		// the other key still opens the repository; check names the damage
		r := d.e.run("-r", d.e.repo, "--password-file", second, "check")
		noPanic(t, r)
		expectCode(t, r, 13)
		if !strings.Contains(r.stdout+r.stderr, "key") {
			t.Errorf("check does not report the damaged key: %s", r)
		}
		r = d.e.run("-r", d.e.repo, "--password-file", second, "restore", d.snapB+":"+d.srcB, "--target", d.e.path("r"))
		expectCode(t, r, 0)
	})
	for how, fn := range map[string]func(*testing.T, string){"flipped bit": flip, "truncated": truncate} {
		for _, what := range []string{"config", "only key"} {
			t.Run(what+" "+how, func(t *testing.T) {
				t.Parallel()
				d := newDamagedRepo(t)
				target := filepath.Join(d.e.repo, "config")
				if what == "only key" {
					target = d.first["keys"][0]
				}
				fn(t, target)
				for _, cmd := range [][]string{{"snapshots"}, {"check"}, {"restore", "latest", "--target", d.e.path("r")}} {
					r := d.e.floe(cmd...)
					noPanic(t, r)
					expectFail(t, r)
					if !bytes.Contains([]byte(strings.ToLower(r.stderr+r.stdout)), []byte("damaged")) &&
						!strings.Contains(r.stderr, "wrong password") {
						t.Errorf("%s: the error does not say what is wrong: %s", cmd[0], r)
					}
				}
			})
		}
	}
}
