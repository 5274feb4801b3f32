package ui

import (
	"strings"
	"sync"
	"testing"
)

func TestMeter(t *testing.T) {
	var m Meter
	var p Progress = &m
	p.Phase("reading packs", 4, 1000)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() { defer wg.Done(); p.Done(1, 100) }()
	}
	wg.Wait()
	line := m.Line()
	for _, want := range []string{"reading packs: 3/4", "300 B/1000 B (30%)", "ETA"} {
		if !strings.Contains(line, want) {
			t.Errorf("line %q lacks %q", line, want)
		}
	}
	p.Phase("repacking", 0, 2048)
	p.Done(0, 1024)
	if line := m.Line(); !strings.Contains(line, "repacking: 1.00 KiB/2.00 KiB (50%)") || strings.Contains(line, "0/") {
		t.Errorf("bytes-only phase: %q", line)
	}
	p.Phase("backup", 0, 0)
	p.Grow(2, 4096)
	p.Done(1, 1024)
	p.Working("/etc/passwd")
	if line := m.Line(); !strings.Contains(line, "backup: 1/2, 1.00 KiB/4.00 KiB (25%)") || strings.Contains(line, "ETA") || !strings.HasSuffix(line, "  /etc/passwd") {
		t.Errorf("while counting: %q", line)
	}
	p.Fail()
	if m.Failures() != 1 || m.Item() != "/etc/passwd" || m.IsCounted() {
		t.Errorf("failures %d, item %q, counted %v", m.Failures(), m.Item(), m.IsCounted())
	}
	p.Counted()
	if line := m.Line(); !strings.Contains(line, "ETA") || !m.IsCounted() {
		t.Errorf("counted: no ETA in %q", line)
	}
	p.Phase("marking", 0, 0)
	if line := m.Line(); !strings.HasSuffix(line, "] marking") {
		t.Errorf("phase without counts: %q", line)
	}
	NoProgress.Phase("x", 1, 1) // reports to nobody, without panicking
	NoProgress.Done(1, 1)
}

func TestMeterCounters(t *testing.T) {
	var m Meter
	var p Progress = &m
	c, ok := p.(Counters)
	if !ok {
		t.Fatal("Meter does not keep named counters")
	}
	if _, ok := NoProgress.(Counters); ok {
		t.Error("NoProgress keeps named counters")
	}
	p.Phase("copy", 0, 0)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); c.Count("blobs_sent", 2) }()
	}
	wg.Wait()
	p.Phase("verify", 0, 0) // counters add up over phases
	c.Count("bytes_verified", 10)
	if m.Counter("blobs_sent") != 8 || m.Counter("bytes_verified") != 10 || m.Counter("never") != 0 || m.PhaseName() != "verify" {
		t.Errorf("counters: blobs_sent %d, bytes_verified %d, never %d, phase %q",
			m.Counter("blobs_sent"), m.Counter("bytes_verified"), m.Counter("never"), m.PhaseName())
	}
}
