package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
)

var cpuProfileFile, traceFile *os.File

func (g *globals) startProfiles() error {
	if g.tracePath != "" {
		// an execution trace shows what a profile cannot: when a core
		// idles, and what each goroutine waited on
		f, err := os.Create(g.tracePath)
		if err != nil {
			return fmt.Errorf("trace: %w", err)
		}
		traceFile = f
		if err := trace.Start(f); err != nil {
			return fmt.Errorf("trace: %w", err)
		}
	}
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
	if traceFile != nil {
		trace.Stop()
		traceFile.Close()
	}
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
