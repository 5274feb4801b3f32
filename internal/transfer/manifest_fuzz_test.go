package transfer

import (
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
)

// FuzzVerifyExport gives VerifyExport a manifest of any content with a
// matching checksum: it must report problems, never panic or read outside
// the export directory.
func FuzzVerifyExport(f *testing.F) {
	f.Add([]byte(`{"version":1,"files":[{"path":"config","size":3,"blake3":"00"}],"snapshots":[]}`))
	f.Add([]byte(`{"version":1,"files":[{"path":"../../etc/passwd","size":1,"blake3":"x"}]}`))
	f.Add([]byte(`{"version":1,"files":[{"path":"data/ab/` + string(make([]byte, 0)) + `"}]}`))
	f.Fuzz(func(t *testing.T, manifest []byte) {
		dir := t.TempDir()
		sum := hash.Sum(manifest)
		if err := os.WriteFile(filepath.Join(dir, ManifestName), manifest, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ManifestSumName), []byte(hex.EncodeToString(sum[:])+"  "+ManifestName+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		VerifyExport(context.Background(), dir, 2)
	})
}
