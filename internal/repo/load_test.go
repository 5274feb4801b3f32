package repo

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/storage"
)

// TestBlobLoader loads through both paths (a local backend's ranges, the
// memory backend's Load) what LoadBlob loads, reusing its buffers, and
// finds a damaged copy as forged like LoadBlob does.
func TestBlobLoader(t *testing.T) {
	ctx := context.Background()
	lr, dir := localRepo(t)
	mr, _ := newRepo(t)
	for name, r := range map[string]*Repository{"local": lr, "mem": mr} {
		t.Run(name, func(t *testing.T) {
			datas, refs := saveMixed(t, r, 20, 3000, 2)
			l := r.NewBlobLoader()
			defer l.Close()
			var buf []byte
			for round := 0; round < 2; round++ {
				for i, ref := range refs {
					got, err := l.Load(ctx, DataBlob, ref, buf)
					if err != nil {
						t.Fatalf("blob %d: %v", i, err)
					}
					if !bytes.Equal(got, datas[i]) {
						t.Fatalf("blob %d: wrong content", i)
					}
					buf = got
				}
			}
			missing := hash.Ref{ID: hash.ID{1}, Key: hash.ID{2}}
			if _, err := l.Load(ctx, DataBlob, missing, nil); !errors.Is(err, ErrBlobNotFound) {
				t.Fatalf("missing blob: err = %v, want ErrBlobNotFound", err)
			}
		})
	}

	// A flipped bit in a pack of the local repository, read through the
	// pack the loader keeps open.
	ref, loc, _, _ := damageBlob(t, lr, dir, randomBytes(50<<10))
	l := lr.NewBlobLoader()
	defer l.Close()
	if _, err := l.Load(ctx, DataBlob, ref, nil); !errors.Is(err, ErrForged) {
		t.Fatalf("flipped bit: err = %v, want ErrForged", err)
	}
	if f := lr.ForgedCopies(); len(f) != 1 || f[0].Pack != loc.Pack {
		t.Fatalf("ForgedCopies = %+v", f)
	}
}

// LoadInto hands out plaintexts the caller keeps (none is overwritten by
// the next load), verified by the ref's key; a copy that does not open is
// read again through Load, so a damaged copy is reported as forged and a
// genuine second copy still serves, and a ref whose key does not match
// its blob is an error about the ref, with nothing reported.
func TestBlobLoaderLoadInto(t *testing.T) {
	ctx := context.Background()
	lr, dir := localRepo(t)
	mr, _ := newRepo(t)
	for name, r := range map[string]*Repository{"local": lr, "mem": mr} {
		t.Run(name, func(t *testing.T) {
			datas, refs := saveMixed(t, r, 12, 5000, 3)
			l := r.NewBlobLoader()
			defer l.Close()
			got := make([][]byte, len(refs))
			for i, ref := range refs {
				var buf []byte
				if i%2 == 1 {
					buf = make([]byte, 0, 64<<10) // room: the plaintext lands in it
				}
				p, err := l.LoadInto(ctx, DataBlob, ref, buf)
				if err != nil {
					t.Fatalf("blob %d: %v", i, err)
				}
				if buf != nil && cap(buf) >= len(datas[i]) && &p[:1][0] != &buf[:1][0] {
					t.Fatalf("blob %d: not in the buffer given", i)
				}
				got[i] = p
			}
			for i := range refs {
				if !bytes.Equal(got[i], datas[i]) {
					t.Fatalf("blob %d: wrong content after later loads", i)
				}
			}
			wrong := hash.Ref{ID: refs[1].ID, Key: refs[2].Key}
			if _, err := l.LoadInto(ctx, DataBlob, wrong, nil); err == nil || errors.Is(err, ErrForged) {
				t.Fatalf("wrong ref: err = %v, want an error about the ref", err)
			}
			missing := hash.Ref{ID: hash.ID{1}, Key: hash.ID{2}}
			if _, err := l.LoadInto(ctx, DataBlob, missing, nil); !errors.Is(err, ErrBlobNotFound) {
				t.Fatalf("missing blob: err = %v, want ErrBlobNotFound", err)
			}
			if f := r.ForgedCopies(); len(f) != 0 {
				t.Fatalf("nothing forged, got %+v", f)
			}
		})
	}

	// A flipped bit in the local repository's pack: reported as forged
	// (through Load), never handed out.
	data := randomBytes(50 << 10)
	ref, loc, p, orig := damageBlob(t, lr, dir, data)
	l := lr.NewBlobLoader()
	defer l.Close()
	if got, err := l.LoadInto(ctx, DataBlob, ref, nil); !errors.Is(err, ErrForged) {
		t.Fatalf("flipped bit: %d bytes, err = %v, want ErrForged", len(got), err)
	}
	if f := lr.ForgedCopies(); len(f) != 1 || f[0].Pack != loc.Pack {
		t.Fatalf("ForgedCopies = %+v", f)
	}
	// the pack mended, a fresh open of the repository serves it again
	lr2 := reopen(t, lr.be)
	if err := os.WriteFile(p, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	l2 := lr2.NewBlobLoader()
	defer l2.Close()
	if got, err := l2.LoadInto(ctx, DataBlob, ref, nil); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("repaired pack: err = %v", err)
	}
}

// damageBlob saves data as a blob in lr, the local repository in dir,
// and flips a bit of its stored bytes; it returns the blob, its copy, the
// pack's path and the pack's bytes before the damage.
func damageBlob(t *testing.T, lr *Repository, dir string, data []byte) (hash.Ref, Location, string, []byte) {
	t.Helper()
	ref := save(t, lr, data)
	if err := flush(context.Background(), lr); err != nil {
		t.Fatal(err)
	}
	loc, _ := lr.Index().Lookup(BlobHandle{DataBlob, ref.ID})
	p := filepath.Join(dir, string(storage.Pack), loc.Pack.String()[:2], loc.Pack.String())
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	damaged := bytes.Clone(orig)
	damaged[loc.Offset+100] ^= 0x40
	os.Chmod(p, 0o600)
	if err := os.WriteFile(p, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	return ref, loc, p, orig
}

// saveMixed saves n blobs in r and flushes: random ones of 1000 + i*step
// bytes, and every every-th a compressible one.
func saveMixed(t *testing.T, r *Repository, n, step, every int) ([][]byte, []hash.Ref) {
	t.Helper()
	var datas [][]byte
	var refs []hash.Ref
	for i := range n {
		d := randomBytes(1000 + i*step)
		if i%every == 0 {
			d = bytes.Repeat([]byte("compressible "), 100+i*50)
		}
		datas = append(datas, d)
		refs = append(refs, save(t, r, d))
	}
	if err := flush(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return datas, refs
}
