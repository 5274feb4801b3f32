package directio

import (
	"os"
	"runtime"
	"sync"
)

// A goroutine blocked in a system call keeps its P (the right to run Go
// code) until the runtime's monitor takes it back, which can be up to 10
// ms later; a direct write waits for the disk, not the CPU, all that time.
// With one P per core, a restore whose workers wait in direct writes left
// a core idle while other workers had chunks to decode: the large set
// (two files of 1 GiB, 2 cores) restored in 1.66-1.87 s with GOMAXPROCS 2
// and 1.58-1.65 s with 4, the same CPU time (docs/PERFORMANCE.md, "Spare
// Ps for direct writes").
var spare struct {
	sync.Mutex
	n    int // Ps lent out by SpareProcs calls still running
	base int // GOMAXPROCS before the first of them
}

// SpareProcs raises GOMAXPROCS by n while writers that block in direct
// writes run, and returns the function that takes them back (calls may
// overlap). It does nothing when the GOMAXPROCS environment variable is
// set: the operator's choice stands.
func SpareProcs(n int) (release func()) {
	if n <= 0 || os.Getenv("GOMAXPROCS") != "" {
		return func() {}
	}
	spare.Lock()
	if spare.n == 0 {
		spare.base = runtime.GOMAXPROCS(0)
	}
	spare.n += n
	runtime.GOMAXPROCS(spare.base + spare.n)
	spare.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			spare.Lock()
			defer spare.Unlock()
			spare.n -= n
			runtime.GOMAXPROCS(spare.base + spare.n)
		})
	}
}
