// Command scale writes a synthetic repository with many chunks in its
// index, and measures what loading that index costs (bench/SCALE.md).
//
//	go run ./bench/scale -repo DIR -password-file P -chunks 10000000 -files 1000
//	go run ./bench/scale -repo DIR -password-file P -measure
//
// The index files are real: encoded with the packfile encoder and signed
// by the repository's authority key through repo.SaveIndexFile, exactly as
// backup writes them. No pack data is behind them (restore or check
// --read-data of such a repository fails); opening it, loading its index
// and starting a backup work as on a repository that large.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/floe-backup/floe/internal/hash"
	"github.com/floe-backup/floe/internal/packfile"
	"github.com/floe-backup/floe/internal/repo"
	"github.com/floe-backup/floe/internal/storage/local"
)

func main() {
	dir := flag.String("repo", "", "repository directory (created unless -measure)")
	pwFile := flag.String("password-file", "", "file holding the repository password")
	chunks := flag.Int("chunks", 1_000_000, "data chunks to list in the index")
	files := flag.Int("files", 100, "index files to spread them over")
	perPack := flag.Int("per-pack", 16, "chunks per (absent) pack: 16 MiB packs of 1 MiB chunks")
	measure := flag.Bool("measure", false, "open the repository, load its index and report time and bytes per chunk")
	memProfile := flag.String("memprofile", "", "with -measure: write a heap profile after loading to this file")
	cpuProfile := flag.String("cpuprofile", "", "with -measure: write a CPU profile of the open and load to this file")
	add := flag.Bool("add", false, "add the index files to the existing repository (as backups since a cache was written would)")
	cacheDir := flag.String("cache", "", "with -measure: use (and keep) the index cache in this directory, as floe does in its cache directory")
	flag.Parse()
	if *dir == "" || *pwFile == "" {
		fmt.Fprintln(os.Stderr, "scale: -repo and -password-file are required")
		os.Exit(2)
	}
	pw, err := os.ReadFile(*pwFile)
	if err != nil {
		fail(err)
	}
	cred := repo.Credential{Password: []byte(strings.TrimRight(string(pw), "\r\n"))}
	ctx := context.Background()
	if *measure {
		if err := measureLoad(ctx, *dir, cred, *memProfile, *cpuProfile, *cacheDir); err != nil {
			fail(err)
		}
		return
	}
	if *chunks <= 0 || *files <= 0 || *perPack <= 0 {
		fail(fmt.Errorf("-chunks, -files and -per-pack must be positive"))
	}
	if err := generate(ctx, *dir, cred, *chunks, *files, *perPack, *add); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "scale:", err)
	os.Exit(1)
}

func generate(ctx context.Context, dir string, cred repo.Credential, chunks, files, perPack int, add bool) error {
	var r *repo.Repository
	if add {
		be, err := local.Open(dir)
		if err != nil {
			return err
		}
		if r, err = repo.Open(ctx, be, cred, repo.OpenOptions{}); err != nil {
			return err
		}
	} else {
		be, err := local.Create(dir)
		if err != nil {
			return err
		}
		if r, _, err = repo.Init(ctx, be, cred, repo.InitOptions{}); err != nil {
			return err
		}
	}
	start := time.Now()
	perFile := (chunks + files - 1) / files
	done := 0
	for f := 0; f < files && done < chunks; f++ {
		n := min(perFile, chunks-done)
		var idx repo.IndexFile
		for n > 0 {
			k := min(perPack, n)
			p := packfile.Pack{ID: randomID(), Blobs: make([]packfile.Blob, k)}
			var off uint32
			for i := range p.Blobs {
				// ~1 MiB chunks, sealed: IDs are random, as real IDs
				// (keyed hashes) are.
				length := uint32(1<<20 + i*16)
				p.Blobs[i] = packfile.Blob{Type: packfile.Data, ID: randomID(), Offset: off, Length: length}
				off += length
			}
			idx.Packs = append(idx.Packs, p)
			n -= k
			done += k
		}
		if _, err := r.SaveIndexFile(ctx, &idx); err != nil {
			return fmt.Errorf("index file %d: %w", f, err)
		}
	}
	fmt.Printf("wrote %d chunks in %d index files (%d per pack) in %.1f s\n", done, files, perPack, time.Since(start).Seconds())
	return nil
}

func randomID() hash.ID {
	var id hash.ID
	rand.Read(id[:])
	return id
}

func measureLoad(ctx context.Context, dir string, cred repo.Credential, memProfile, cpuProfile, cacheDir string) error {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	cpu0 := cpuTime()
	start := time.Now()
	be, err := local.Open(dir)
	if err != nil {
		return err
	}
	r, err := repo.Open(ctx, be, cred, repo.OpenOptions{})
	if err != nil {
		return err
	}
	opened := time.Since(start)
	r.SetIndexCache(cacheDir)
	if err := r.LoadIndex(ctx); err != nil {
		return err
	}
	loaded := time.Since(start)
	cpu := cpuTime() - cpu0
	if cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	n := r.Index().Len()
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	fmt.Printf("chunks %d\nindex from %s\nopen %.2f s (key derivation included)\nopen+load index %.2f s, CPU (user+sys) %.2f s\nheap after load %.1f MiB\nbytes per chunk %.1f\n",
		n, r.IndexSource(), opened.Seconds(), loaded.Seconds(), cpu.Seconds(), float64(heap)/(1<<20), float64(heap)/float64(max(n, 1)))
	if memProfile != "" {
		f, err := os.Create(memProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.WriteHeapProfile(f); err != nil {
			return err
		}
	}
	runtime.KeepAlive(r)
	return nil
}

// cpuTime returns the user and system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
