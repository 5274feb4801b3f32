//go:build linux

package e2e

import (
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An image file is a file node of the snapshot, so the commands that work
// on files work on it unchanged (issue 10): find, diff between two
// backups of a changed image, copy to another repository and export to a
// directory (each restores byte-identical), forget and prune, then check
// --read-data.
func TestImageThroughCommands(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.init()
	img := e.path("web1.raw")
	writeLayoutFile(t, img)
	e.ok("backup", "--image", img)
	// the guest writes 1 MiB in a zero region
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1<<20)
	rand.New(rand.NewSource(8)).Read(b)
	if _, err := f.WriteAt(b, 10<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e.ok("backup", "--image", img)
	snaps := e.snapshots()
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots, want 2", len(snaps))
	}

	if r := e.ok("find", "web1.raw"); strings.Count(r.stdout, "web1.raw") < 2 {
		t.Errorf("find does not list the image in both snapshots:\n%s", r)
	}
	if r := e.ok("diff", snaps[0].ID, snaps[1].ID); !strings.Contains(r.stdout, "web1.raw") {
		t.Errorf("diff does not show the changed image:\n%s", r)
	}

	sib := newOtherRepo(e, "sibling", "--copy-chunker-params-from", e.repo, "--from-password-file", e.pwFile)
	e.ok("copy", "--all", "--to", sib.repo, "--to-password-file", sib.pwFile)
	sib.ok("restore", "latest", "--target", e.path("from-copy"))
	cmpFiles(t, img, filepath.Join(e.path("from-copy"), img), 0)

	exp := e.path("usb", "export")
	e.ok("export", "latest", "--to", exp)
	e.run("-r", exp, "--password-file", e.pwFile, "restore", "latest", "--target", e.path("from-export"))
	cmpFiles(t, img, filepath.Join(e.path("from-export"), img), 0)

	e.ok("forget", "--keep-last", "1")
	e.ok("prune")
	e.ok("check", "--read-data")
	e.ok("restore", "latest", "--target", e.path("restored"))
	cmpFiles(t, img, filepath.Join(e.path("restored"), img), 0)
	sib.ok("check", "--read-data")
}
