package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
)

var cpuProfileFile *os.File

func (g *globals) startProfiles() error {
	if g.cpuProfile == "" {
		return nil
	}
	f, err := os.Create(g.cpuProfile)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	cpuProfileFile = f
	return pprof.StartCPUProfile(f)
}

func (g *globals) stopProfiles() {
	if cpuProfileFile != nil {
		pprof.StopCPUProfile()
		cpuProfileFile.Close()
	}
	if g.memProfile != "" {
		f, err := os.Create(g.memProfile)
		if err != nil {
			g.warn("mem profile: %v", err)
			return
		}
		defer f.Close()
		runtime.GC()
		_ = pprof.Lookup("allocs").WriteTo(f, 0)
	}
}
