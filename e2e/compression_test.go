//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/floe-backup/floe/internal/testutil"
)

// compressibleText returns n bytes of text from a small vocabulary: it
// compresses to about a third at every level.
func compressibleText(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	words := strings.Fields("backup restore snapshot repository chunk blob tree index pack key host fleet level zstd the of and to in")
	var b []byte
	for len(b) < n {
		b = append(append(b, words[r.IntN(len(words))]...), " \n"[r.IntN(2)])
	}
	return b[:n]
}

// configLevel returns the compression_level that `cat config` shows.
func configLevel(t *testing.T, e *floeEnv, args ...string) string {
	t.Helper()
	var cfg struct {
		Level *string `json:"compression_level"`
	}
	r := e.ok(append(args, "cat", "config")...)
	if err := json.Unmarshal([]byte(r.stdout), &cfg); err != nil {
		t.Fatalf("cat config: %v\n%s", err, r)
	}
	if cfg.Level == nil {
		return "<absent>"
	}
	return *cfg.Level
}

// A repository made with --compression fastest keeps that level in its
// config, shows it, and every writer (files, --stdin, --image, trees)
// stores at it; check --read-data passes and restores are byte-exact.
func TestCompressionFastest(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.ok("init", "--compression", "fastest")
	if !strings.Contains(r.stdout+r.stderr, "compression fastest") {
		t.Errorf("init does not say the level: %s", r)
	}
	if l := configLevel(t, e); l != "fastest" {
		t.Fatalf("cat config: compression_level %s, want fastest", l)
	}
	src := e.mkdir("src")
	text := compressibleText(1, 3<<20)
	testutil.WriteFile(t, filepath.Join(src, "text"), text)
	testutil.WriteRandom(t, filepath.Join(src, "random"), 1<<20, 2)
	testutil.WriteFile(t, filepath.Join(src, "small"), []byte("a small file\n"))
	img := e.path("disk.raw")
	testutil.WriteFile(t, img, append(compressibleText(3, 2<<20), make([]byte, 2<<20)...))

	b, _ := e.backup(src)
	if b.Summary.DataAddedStored == 0 || b.Summary.DataAddedStored > b.Summary.DataAdded*3/4 {
		t.Errorf("fastest stored %d bytes for %d (3 MiB of them text): not compressed?", b.Summary.DataAddedStored, b.Summary.DataAdded)
	}
	bi, _ := e.backup("--image", img)
	if bi.Summary.DataAddedStored > 2<<20 {
		t.Errorf("fastest stored %d bytes of a 4 MiB image of text and zeros", bi.Summary.DataAddedStored)
	}
	stdin := compressibleText(4, 1<<20+5)
	rs := e.runWith(runOpts{stdin: bytes.NewReader(stdin)}, append(e.repoArgs(), "backup", "--json", "--stdin", "--stdin-filename", "db.sql")...)
	expectCode(t, rs, 0)
	bs := decodeJSON[backupOut](t, rs)
	if bs.Summary.DataAddedStored > bs.Summary.DataAdded/2 {
		t.Errorf("fastest stored %d bytes of %d of text from stdin", bs.Summary.DataAddedStored, bs.Summary.DataAdded)
	}

	e.ok("check", "--read-data")
	dst := e.path("restored")
	e.ok("restore", "--verify", b.Snapshot+":"+src, "--target", dst)
	testutil.CompareTrees(t, src, dst)
	e.ok("restore", bi.Snapshot+":"+img, "--target", e.path("ri"))
	cmpFiles(t, img, filepath.Join(e.path("ri"), "disk.raw"), 0)
	e.ok("restore", bs.Snapshot+":/db.sql", "--target", e.path("rs"))
	if got, err := os.ReadFile(filepath.Join(e.path("rs"), "db.sql")); err != nil || !bytes.Equal(got, stdin) {
		t.Errorf("restored db.sql differs from stdin (%v)", err)
	}

	st := e.ok("stats")
	if !strings.Contains(st.stdout, "(level fastest)") {
		t.Errorf("stats does not show the level:\n%s", st.stdout)
	}
	var sj struct {
		Level string `json:"compression_level"`
	}
	if err := json.Unmarshal([]byte(e.ok("stats", "--json").stdout), &sj); err != nil || sj.Level != "fastest" {
		t.Errorf("stats --json: compression_level %q (%v)", sj.Level, err)
	}

	// A repository initialised with this one's chunker parameters takes its
	// level too (both give one plaintext one ID), unless told otherwise.
	other := e.path("other")
	e.ok("init", "-r", other, "--copy-chunker-params-from", e.repo, "--from-password-file", e.pwFile)
	if l := configLevel(t, e, "-r", other); l != "fastest" {
		t.Errorf("copied chunker parameters, compression_level %s; want fastest", l)
	}
	third := e.path("third")
	e.ok("init", "-r", third, "--compression", "better", "--copy-chunker-params-from", e.repo, "--from-password-file", e.pwFile)
	if l := configLevel(t, e, "-r", third); l != "better" {
		t.Errorf("copied chunker parameters with --compression better: compression_level %s", l)
	}
}

// --compression off stores data raw: the stored size is at least the
// plaintext's, where auto stores the same text in under half.
func TestCompressionOff(t *testing.T) {
	t.Parallel()
	stored := map[string]uint64{}
	for _, level := range []string{"off", "auto"} {
		e := newEnv(t)
		e.ok("init", "--compression", level)
		if l := configLevel(t, e); l != level {
			t.Fatalf("%s: cat config: compression_level %s", level, l)
		}
		src := e.mkdir("src")
		testutil.WriteFile(t, filepath.Join(src, "text"), compressibleText(5, 4<<20))
		b, _ := e.backup(src)
		stored[level] = b.Summary.DataAddedStored
		t.Logf("%s: %d bytes stored as %d", level, b.Summary.DataAdded, b.Summary.DataAddedStored)
		switch {
		case level == "off" && b.Summary.DataAddedStored < b.Summary.DataAdded:
			t.Errorf("off: %d bytes stored as %d: compressed", b.Summary.DataAdded, b.Summary.DataAddedStored)
		case level == "auto" && b.Summary.DataAddedStored > b.Summary.DataAdded/2:
			t.Errorf("auto: %d bytes of text stored as %d", b.Summary.DataAdded, b.Summary.DataAddedStored)
		}
		if level == "off" {
			if size := dirSize(t, e.repo); size < 4<<20 {
				t.Errorf("off: the repository holds %d bytes for 4 MiB of text", size)
			}
			e.ok("check", "--read-data")
			e.ok("restore", "latest:"+src, "--target", e.path("r"))
			testutil.CompareTrees(t, src, e.path("r"))
		}
	}
}

// An unknown level is a usage error that names the known ones, and makes
// no repository.
func TestCompressionBadLevel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.floe("init", "--compression", "ultra")
	expectCode(t, r, 2)
	if !strings.Contains(r.stderr, `unknown compression level "ultra"`) || !strings.Contains(r.stderr, "fastest") {
		t.Errorf("unclear error: %s", r)
	}
	if _, err := os.Stat(e.repo); err == nil {
		t.Errorf("a failed init left %s", e.repo)
	}
}

// copy between repositories that share the chunk ID key but not the level
// re-encodes every blob at the destination's level and rewrites the trees
// to the new IDs: the copy checks and restores byte-exact.
func TestCompressionCopyAcrossLevels(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.ok("init", "--compression", "fastest")
	src := e.mkdir("src")
	testutil.WriteFile(t, filepath.Join(src, "text"), compressibleText(6, 2<<20))
	testutil.WriteFile(t, filepath.Join(src, "sub", "more"), compressibleText(7, 300<<10))
	e.backup(src)
	for _, level := range []string{"auto", "off"} {
		dst := e.path("dst-" + level)
		e.ok("init", "-r", dst, "--compression", level, "--copy-chunker-params-from", e.repo, "--from-password-file", e.pwFile)
		e.ok("copy", "latest", "--to", dst, "--to-password-file", e.pwFile)
		e.ok("-r", dst, "check", "--read-data")
		out := e.path("restored-" + level)
		e.ok("-r", dst, "restore", "latest:"+src, "--target", out)
		testutil.CompareTrees(t, src, out)
	}
}

// At auto (the default) the data of a disk image is stored at fastest and
// that of files at default; --compression default stores both at
// default. Two repositories with the same chunker parameters cut the same
// chunks, so the files take the same bytes in both and the image more at
// auto; both restore byte for byte.
func TestCompressionImagePolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.ok("init")
	def := e.path("default")
	e.ok("init", "-r", def, "--compression", "default", "--copy-chunker-params-from", e.repo, "--from-password-file", e.pwFile)
	if l := configLevel(t, e, "-r", def); l != "default" {
		t.Fatalf("cat config: compression_level %s, want default", l)
	}
	src := e.mkdir("src")
	testutil.WriteFile(t, filepath.Join(src, "text"), compressibleText(6, 3<<20))
	img := e.path("disk.raw")
	testutil.WriteFile(t, img, append(compressibleText(7, 3<<20), make([]byte, 2<<20)...))
	stored := func(repo string, args ...string) (backupOut, uint64) {
		r := e.ok(append([]string{"-r", repo, "backup", "--json"}, args...)...)
		b := decodeJSON[backupOut](t, r)
		return b, b.Summary.DataAddedStored
	}
	_, autoFiles := stored(e.repo, src)
	_, defFiles := stored(def, src)
	autoImg, autoImage := stored(e.repo, "--image", img)
	defImg, defImage := stored(def, "--image", img)
	t.Logf("files: auto %d, default %d bytes; image: auto %d, default %d bytes", autoFiles, defFiles, autoImage, defImage)
	if autoFiles != defFiles {
		t.Errorf("files: auto stored %d bytes, default %d: want the same level", autoFiles, defFiles)
	}
	if autoImage <= defImage || autoImage > 2<<20 {
		t.Errorf("image: auto stored %d bytes, default %d: want auto's (fastest) larger and still compressed", autoImage, defImage)
	}
	for _, c := range []struct {
		repo, snap string
	}{{e.repo, autoImg.Snapshot}, {def, defImg.Snapshot}} {
		e.ok("-r", c.repo, "check", "--read-data")
		dst := e.path("r-" + c.snap)
		e.ok("-r", c.repo, "restore", c.snap+":"+img, "--target", dst)
		cmpFiles(t, img, filepath.Join(dst, "disk.raw"), 0)
	}
}

// The trial (docs/FORMAT.md "Blobs") at every level that compresses: random
// data, whose samples the histogram settles, is stored raw; a file that is
// random except for stretches of text is compressed (a histogram that took
// text for random would store it raw). Both restore byte for byte.
func TestCompressionTrial(t *testing.T) {
	t.Parallel()
	for _, level := range []string{"auto", "fastest", "better"} {
		e := newEnv(t)
		e.ok("init", "--compression", level)
		random := e.mkdir("random")
		testutil.WriteRandom(t, filepath.Join(random, "random"), 3<<20, 31)
		b, _ := e.backup(random)
		// data_added counts the tree too.
		if b.Summary.DataAddedStored < 3<<20 {
			t.Errorf("%s: 3 MiB of random data (%d bytes with the tree) stored as %d: want stored raw", level, b.Summary.DataAdded, b.Summary.DataAddedStored)
		}
		// Random, with 64 KiB of text in every 128 KiB: every chunk has
		// samples in the text.
		mixed := e.mkdir("mixed")
		data := make([]byte, 4<<20)
		rand.NewChaCha8([32]byte{32}).Read(data)
		for off := 0; off < len(data); off += 128 << 10 {
			copy(data[off:off+64<<10], compressibleText(uint64(off), 64<<10))
		}
		testutil.WriteFile(t, filepath.Join(mixed, "mixed"), data)
		b, _ = e.backup(mixed)
		if b.Summary.DataAddedStored > b.Summary.DataAdded*85/100 {
			t.Errorf("%s: %d bytes, half of them text, stored as %d: not compressed?", level, b.Summary.DataAdded, b.Summary.DataAddedStored)
		}
		for _, dir := range []string{random, mixed} {
			target := e.path("r-" + filepath.Base(dir))
			e.ok("restore", "latest:"+dir, "--target", target, "--path", dir)
			testutil.CompareTrees(t, dir, target)
		}
	}
}
