//go:build linux

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/floe-backup/floe/internal/testutil"
)

// copyOut is `floe copy --json` and `floe import --json`.
type copyOut struct {
	Snapshots []struct {
		Source      string `json:"source"`
		Destination string `json:"destination"`
		Skipped     bool   `json:"skipped"`
	} `json:"snapshots"`
	Copied         int    `json:"copied"`
	Skipped        int    `json:"skipped"`
	SharedChunkKey bool   `json:"shared_chunk_key"`
	Verbatim       bool   `json:"verbatim"`
	BlobsSent      uint64 `json:"blobs_sent"`
	BytesSent      uint64 `json:"bytes_sent"`
	Verified       bool   `json:"verified"`
	VerifiedBlobs  uint64 `json:"verified_blobs"`
}

// otherRepo is a second repository in e's directory with its own password.
type otherRepo struct {
	e      *floeEnv
	repo   string
	pwFile string
}

func newOtherRepo(e *floeEnv, name string, initArgs ...string) *otherRepo {
	e.t.Helper()
	o := &otherRepo{e: e, repo: e.path(name), pwFile: e.path(name + "-password")}
	writeSecretFile(e.t, o.pwFile)
	expectCode(e.t, o.run(append([]string{"init"}, initArgs...)...), 0)
	return o
}

func (o *otherRepo) run(args ...string) result {
	o.e.t.Helper()
	return o.e.run(append([]string{"-r", o.repo, "--password-file", o.pwFile}, args...)...)
}

func (o *otherRepo) ok(args ...string) result {
	o.e.t.Helper()
	r := o.run(args...)
	if r.code != 0 {
		o.e.t.Fatalf("want exit 0: %s", r)
	}
	return r
}

// twoBackups backs up a source directory, changes it, backs it up again.
func twoBackups(e *floeEnv) string {
	e.t.Helper()
	src := e.mkdir("src")
	testutil.ManyFiles(e.t, src, 120, 8<<10, 11)
	testutil.WriteRandom(e.t, filepath.Join(src, "big"), 3<<20, 12)
	e.backup(src)
	testutil.WriteRandom(e.t, filepath.Join(src, "d0", "new"), 2<<20, 13)
	os.Remove(filepath.Join(src, "d1", "f100"))
	e.backup(src)
	return src
}

func TestCopyCLI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := twoBackups(e)
	srcSnaps := e.snapshots()

	// a sibling: same chunker parameters and chunk ID key
	sib := newOtherRepo(e, "sibling", "--copy-chunker-params-from", e.repo, "--from-password-file", e.pwFile)
	r := e.ok("copy", "--json", srcSnaps[0].ID, "--to", sib.repo, "--to-password-file", sib.pwFile)
	out := decodeJSON[copyOut](t, r)
	if out.Copied != 1 || !out.SharedChunkKey || out.BytesSent < 3<<20 {
		t.Fatalf("first copy: %+v", out)
	}
	first := out.BytesSent
	r = e.ok("copy", "--json", "--all", "--to", sib.repo, "--to-password-file", sib.pwFile, "--verify", "--connections", "2")
	out = decodeJSON[copyOut](t, r)
	if out.Copied != 1 || out.Skipped != 1 || !out.Verified || out.VerifiedBlobs == 0 {
		t.Fatalf("second copy: %+v", out)
	}
	if out.BytesSent < 2<<20 || out.BytesSent > 2<<20+256<<10 {
		t.Errorf("second copy sent %d bytes, want only the 2 MiB new file and some trees (first copy: %d)", out.BytesSent, first)
	}
	// again: nothing to do
	r = e.ok("copy", "--json", "--all", "--to", sib.repo, "--to-password-file", sib.pwFile)
	if out = decodeJSON[copyOut](t, r); out.Skipped != 2 || out.BlobsSent != 0 {
		t.Errorf("third copy: %+v", out)
	}
	sibSnaps := decodeJSON[snapshotList](t, sib.ok("snapshots", "--json")).Snapshots
	if len(sibSnaps) != 2 || !sibSnaps[1].Time.Equal(srcSnaps[1].Time) || sibSnaps[1].Hostname != srcSnaps[1].Hostname ||
		sibSnaps[1].Summary != srcSnaps[1].Summary {
		t.Errorf("copied snapshots %+v differ from the source's %+v", sibSnaps, srcSnaps)
	}
	dst := e.path("restored-sibling")
	sib.ok("restore", "--verify", "latest", "--target", dst)
	testutil.CompareTrees(t, src, filepath.Join(dst, src))
	sib.ok("check", "--read-data")

	// a repository with its own keys, with limits and a text report
	other := newOtherRepo(e, "other")
	r = e.ok("copy", "latest", "--to", other.repo, "--to-password-file", other.pwFile, "--verify",
		"--limit-upload", "1000000", "--limit-download", "1000000")
	if !strings.Contains(r.stdout, "1 snapshot copied") || !strings.Contains(r.stdout, "verified") {
		t.Errorf("text report: %s", r)
	}
	dst = e.path("restored-other")
	other.ok("restore", "latest", "--target", dst)
	testutil.CompareTrees(t, src, filepath.Join(dst, src))
	other.ok("check", "--read-data")

	// wrong usage and a wrong destination password
	expectCode(t, e.floe("copy", "--all"), 2)
	expectCode(t, e.floe("copy", "--to", other.repo, "--to-password-file", other.pwFile), 2)
	expectCode(t, e.floe("copy", "latest", "--all", "--to", other.repo, "--to-password-file", other.pwFile), 2)
	expectCode(t, e.floe("copy", "--all", "--to", other.repo, "--to-password-file", e.pwFile), 11)
	expectCode(t, e.floe("copy", "--all", "--to", e.path("nothing-here"), "--to-password-file", other.pwFile), 10)
}

func TestExportImportCLI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := twoBackups(e)
	exp := e.path("usb", "export")
	r := e.ok("export", "--all", "--to", exp, "--connections", "2")
	if !strings.Contains(r.stdout, "2 snapshots") || !strings.Contains(r.stdout, "MANIFEST.json") {
		t.Errorf("export report: %s", r)
	}
	for _, name := range []string{"MANIFEST.json", "MANIFEST.json.b3", "config"} {
		if _, err := os.Stat(filepath.Join(exp, name)); err != nil {
			t.Fatal(err)
		}
	}
	if b3, err := exec.LookPath("b3sum"); err == nil {
		cmd := exec.Command(b3, "-c", "MANIFEST.json.b3")
		cmd.Dir = exp
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("b3sum -c MANIFEST.json.b3: %v\n%s", err, out)
		}
	}
	// the export is a repository the source's password opens
	expectCode(t, e.run("-r", exp, "--password-file", e.pwFile, "check"), 0)
	// a finished export is not written again
	expectFail(t, e.floe("export", "latest", "--to", exp))

	// damaged exports: nothing is imported, exit 13, the file is named
	target := newOtherRepo(e, "target")
	damaged := func(name string, damage func(dir string) string) {
		t.Helper()
		dir := e.path("damaged-" + name)
		if err := os.CopyFS(dir, os.DirFS(exp)); err != nil {
			t.Fatal(err)
		}
		what := damage(dir)
		r := target.run("import", dir, "--from-password-file", e.pwFile)
		expectCode(t, r, 13)
		if !strings.Contains(r.stderr, what) || !strings.Contains(r.stderr, "nothing was imported") {
			t.Errorf("%s: the error does not name %q: %s", name, what, r)
		}
		if s := decodeJSON[snapshotList](t, target.ok("snapshots", "--json")).Snapshots; len(s) != 0 {
			t.Errorf("%s: %d snapshots imported from a damaged export", name, len(s))
		}
	}
	somePack := func(dir string) string {
		var p string
		filepath.WalkDir(filepath.Join(dir, "data"), func(path string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() && p == "" {
				p = path
			}
			return nil
		})
		return p
	}
	damaged("flipped", func(dir string) string {
		p := somePack(dir)
		data, _ := os.ReadFile(p)
		data[len(data)/3] ^= 1
		os.WriteFile(p, data, 0o600)
		rel, _ := filepath.Rel(dir, p)
		return rel
	})
	damaged("deleted", func(dir string) string {
		p := somePack(dir)
		os.Remove(p)
		rel, _ := filepath.Rel(dir, p)
		return rel + ": missing"
	})
	damaged("unfinished", func(dir string) string {
		os.Remove(filepath.Join(dir, "MANIFEST.json.b3"))
		return "not finished"
	})

	// the intact export: imported into a repository with other keys
	r = target.ok("import", "--json", exp, "--from-password-file", e.pwFile)
	out := decodeJSON[copyOut](t, r)
	if out.Copied != 2 || !out.Verified || out.Verbatim {
		t.Fatalf("import: %+v", out)
	}
	dst := e.path("restored")
	target.ok("restore", "--verify", "latest", "--target", dst)
	testutil.CompareTrees(t, src, filepath.Join(dst, src))
	target.ok("check", "--read-data")
	// again: skipped
	out = decodeJSON[copyOut](t, target.ok("import", "--json", exp, "--from-password-file", e.pwFile))
	if out.Skipped != 2 || out.BlobsSent != 0 {
		t.Errorf("second import: %+v", out)
	}
	// without --from-*, the target's password does not open the export
	r = target.run("import", exp)
	expectCode(t, r, 11)
	if !strings.Contains(r.stderr, "--from-password-file") {
		t.Errorf("the error does not point to --from-password-file: %s", r)
	}
}

// --limit-upload slows a backup down; a negative limit is wrong usage.
func TestBandwidthLimitCLI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	src := e.mkdir("src")
	testutil.WriteRandom(t, filepath.Join(src, "f"), 2<<20, 21)
	start := time.Now()
	e.ok("--limit-upload", "1024", "backup", src) // 1 MiB/s: about 2 s
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("2 MiB at --limit-upload 1024 took %v, want about 2s", d)
	}
	start = time.Now()
	e.ok("--limit-download", "1024", "restore", "latest", "--target", e.path("restored"))
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("restoring 2 MiB at --limit-download 1024 took %v, want about 2s", d)
	}
	expectCode(t, e.floe("--limit-upload", "-1", "snapshots"), 2)
}
