package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{nan, 2, nan}, 2},
	} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if got := median([]float64{nan}); !math.IsNaN(got) {
		t.Errorf("median(NaN) = %v, want NaN", got)
	}
}

func rows(tool string, b1, b2, rs, rss, repo float64, status string) []Row {
	var out []Row
	for _, s := range []struct {
		step string
		sec  float64
	}{{"init", 0.1}, {"backup1", b1}, {"backup2", b2}, {"restore", rs}} {
		out = append(out, Row{1, "goroot", tool, s.step, s.sec, rss, math.NaN(), status, s.sec * 1.5})
	}
	out = append(out, Row{1, "goroot", tool, "repo", math.NaN(), math.NaN(), repo, status, math.NaN()})
	out = append(out, Row{1, "goroot", tool, "verify", math.NaN(), math.NaN(), math.NaN(), status, math.NaN()})
	return out
}

func TestVerdicts(t *testing.T) {
	in := &Input{
		Meta:     [][2]string{{"repeat", "1"}},
		Datasets: []Dataset{{"goroot", 10, 1000}},
	}
	in.Rows = append(in.Rows, rows("floe", 5, 1, 6, 100<<10, 90, "ok")...)
	in.Rows = append(in.Rows, rows("restic", 11, 1.5, 12, 200<<10, 100, "ok")...)
	cells := aggregate(in.Rows)
	want := map[string]string{
		"initial backup time":                      "met",     // 11/5 = 2.2 >= 2
		"repeated backup time (nothing changed)":   "NOT MET", // 1.5 < 2
		"restore time":                             "NOT MET", // 12/6 = 2 < 2.5
		"repository size":                          "met",
		"peak RSS, highest of backups and restore": "met",
	}
	for _, tg := range targets("goroot") {
		if got := verdict(ratio(cells, "goroot", "restic", tg), tg); got != want[tg.Measure] {
			t.Errorf("%s: verdict %q, want %q", tg.Measure, got, want[tg.Measure])
		}
	}
	// On "large" the initial backup needs 2.5x.
	in.Rows = nil
	for _, r := range append(rows("floe", 5, 1, 6, 1, 90, "ok"), rows("restic", 11, 1.5, 12, 1, 100, "ok")...) {
		r.Dataset = "large"
		in.Rows = append(in.Rows, r)
	}
	cells = aggregate(in.Rows)
	if tg := targets("large")[0]; verdict(ratio(cells, "large", "restic", tg), tg) != "NOT MET" {
		t.Errorf("large initial backup at 2.2x should not meet the 2.5x target")
	}
}

func TestNotBuilt(t *testing.T) {
	in := &Input{Datasets: []Dataset{{"goroot", 10, 1000}}}
	in.Rows = append(in.Rows, rows("floe", math.NaN(), math.NaN(), math.NaN(), math.NaN(), math.NaN(), "not built")...)
	in.Rows = append(in.Rows, rows("restic", 11, 1.5, 12, 200<<10, 100, "ok")...)
	cells := aggregate(in.Rows)
	for _, tg := range targets("goroot") {
		if got := verdict(ratio(cells, "goroot", "restic", tg), tg); got != "not measured" {
			t.Errorf("%s: verdict %q, want not measured", tg.Measure, got)
		}
	}
	var sb strings.Builder
	write(&sb, in)
	if !strings.Contains(sb.String(), "| not built |") {
		t.Errorf("report does not say floe is not built:\n%s", sb.String())
	}
}

func TestFailureIsLoud(t *testing.T) {
	in := &Input{Datasets: []Dataset{{"goroot", 10, 1000}}}
	in.Rows = append(in.Rows, rows("restic", 11, 1.5, 12, 200<<10, 100, "ok")...)
	in.Rows[len(in.Rows)-1].Status = "MISMATCH"
	var sb strings.Builder
	write(&sb, in)
	if !strings.Contains(sb.String(), "## FAILURES") || !strings.Contains(sb.String(), "RESTORE DIFFERS FROM SOURCE") {
		t.Errorf("mismatch not reported loudly:\n%s", sb.String())
	}
}

func TestBusy(t *testing.T) {
	in := &Input{Meta: [][2]string{{"nproc", "2"}, {"load average at start", "0.50 0.40 0.30"}, {"load average at end", "1.00 0.5 0.2"}}}
	if got := busy(in); got != "" {
		t.Errorf("idle machine reported busy: %q", got)
	}
	in.Meta[2][1] = "7.25 3.1 1.0"
	if got := busy(in); !strings.Contains(got, "0.50 and 7.25") {
		t.Errorf("busy machine: got %q", got)
	}
}

// smallstored has one time target, on its second backup; its other
// steps are shown without a verdict.
func TestSmallStoredTargets(t *testing.T) {
	var in []Row
	for _, r := range rows("floe", 2, 1, 3, 100<<10, 90, "ok") {
		r.Dataset = "smallstored"
		in = append(in, r)
	}
	for _, r := range rows("restic", 2, 2.5, 3, 100<<10, 90, "ok") {
		r.Dataset = "smallstored"
		in = append(in, r)
	}
	cells := aggregate(in)
	ts := targets("smallstored")
	if ts[0].Step != "backup2" || ts[0].Kind != "time" {
		t.Fatalf("first smallstored target %+v, want the time of backup2", ts[0])
	}
	if got := verdict(ratio(cells, "smallstored", "restic", ts[0]), ts[0]); got != "NOT MET" { // 2.5/1 < 3
		t.Errorf("verdict %q, want NOT MET", got)
	}
	for _, r := range infoRows("smallstored") {
		if !noTarget(r) {
			t.Errorf("%s: an info row with a target", r.Measure)
		}
	}
	var b strings.Builder
	write(&b, &Input{Meta: [][2]string{{"repeat", "1"}}, Datasets: []Dataset{{"smallstored", 10, 1000}}, Rows: in})
	for _, want := range []string{"first backup of copy 2 (content already stored)", "backup of copy 1"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestLoadCPU: timed steps carry a 9th field, CPU seconds, shown in the
// raw table; rows without it (untimed steps, older runs) still load.
func TestLoadCPU(t *testing.T) {
	dir := t.TempDir()
	put := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put("meta.tsv", "nproc\t2\n")
	put("datasets.tsv", "goroot\t10\t1000\n")
	put("results.tsv", "1\tgoroot\tfloe\tbackup1\t1.50\t80000\tNA\tok\t2.75\n"+
		"1\tgoroot\tfloe\trepo\tNA\tNA\t12345\tok\n")
	in, err := load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Rows) != 2 || in.Rows[0].CPU != 2.75 || !math.IsNaN(in.Rows[1].CPU) {
		t.Fatalf("rows %+v", in.Rows)
	}
	var b strings.Builder
	write(&b, in)
	if !strings.Contains(b.String(), "| 1 | goroot | floe | backup1 | 1.50 | 2.75 | 80000 |  | ok |") {
		t.Fatalf("raw table lacks the CPU column:\n%s", b.String())
	}
	put("results.tsv", "1\tgoroot\tfloe\tbackup1\t1.50\n")
	if _, err := load(dir); err == nil {
		t.Fatal("a short row loaded")
	}
}

// restore+sync is the median of each run's restore and sync added, not the
// sum of their medians, and shows only for runs that have both.
func TestDurableRestore(t *testing.T) {
	nan := math.NaN()
	var in []Row
	for i, s := range []struct{ restore, sync float64 }{{1, 5}, {2, 0.5}, {3, 0.1}} {
		in = append(in,
			Row{i + 1, "large", "restic", "restore", s.restore, 100, nan, "ok", 1},
			Row{i + 1, "large", "restic", "sync", s.sync, 2, nan, "ok", 0.5})
	}
	in = append(in, Row{1, "large", "floe", "restore", 2, 80, nan, "ok", 2})
	cells := aggregate(in)
	// runs: 6, 2.5, 3.1; medians of the steps would give 2 + 0.5
	if got := cells[key{"large", "restic", durableStep}].Seconds; got != 3.1 {
		t.Errorf("restic restore+sync = %v, want 3.1", got)
	}
	if c, ok := cells[key{"large", "floe", durableStep}]; ok {
		t.Errorf("floe has no sync, yet restore+sync = %+v", c)
	}
	in[1].Status = "FAIL"
	if c := aggregate(in)[key{"large", "restic", durableStep}]; c.OK() {
		t.Errorf("a failed sync makes restore+sync %q, want not ok", c.Status)
	}
}

// Issue 12's "restore within 2x of cp -a" is a target row: floe ÷ cp.
func TestCPTarget(t *testing.T) {
	nan := math.NaN()
	in := &Input{Datasets: []Dataset{{"goroot", 10, 1000}, {"large", 2, 2000}}, Rows: []Row{
		{1, "goroot", "floe", "restore", 1.5, 80, nan, "ok", 1},
		{1, "goroot", "cp", "restore", 1, 2, nan, "ok", 1},
		{1, "large", "floe", "restore", 2.5, 80, nan, "ok", 1},
		{1, "large", "cp", "restore", 1, 2, nan, "ok", 1},
	}}
	var b strings.Builder
	write(&b, in)
	for _, want := range []string{
		"| goroot | restore time | 1.500× | floe ÷ cp -a ≤ 2× | met |",
		"| large | restore time | 2.500× | floe ÷ cp -a ≤ 2× | **NOT MET** |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

// With a "disk" reference the report says whether the restore target asks
// floe for less than the disk's own time for the same bytes, and says
// nothing of the kind without one.
func TestDiskFloor(t *testing.T) {
	nan := math.NaN()
	report := func(disk float64) string {
		in := &Input{Datasets: []Dataset{{"goroot", 10, 1000}, {"large", 2, 2000}}, Rows: []Row{
			{1, "goroot", "floe", "restore", 0.7, 80, nan, "ok", 1},
			{1, "goroot", "restic", "restore", 2.2, 110, nan, "ok", 3},
			{1, "large", "floe", "restore", 1.6, 80, nan, "ok", 3},
			{1, "large", "restic", "restore", 3.6, 170, nan, "ok", 9},
		}}
		if !math.IsNaN(disk) {
			in.Rows = append(in.Rows, Row{1, "large", "disk", "restore", disk, 2, nan, "ok", 0.5})
		}
		var b strings.Builder
		write(&b, in)
		return b.String()
	}
	slow := report(1.5) // 3.6 / 2.5 = 1.44 s asked, the disk took 1.5
	for _, want := range []string{
		"## The disk's floor (large)",
		"| floe (files of 8 MiB and more written around the page cache: on the disk when it ends) | 1.60 s | 1.067× |",
		"| what restic ÷ floe ≥ 2.5× asks of floe | 1.44 s | 0.960× |",
		"The restore target asks floe for 1.44 s, less than the disk took to write the same bytes (1.50 s)",
		"at most 2.400× restic's speed",
	} {
		if !strings.Contains(slow, want) {
			t.Errorf("report lacks %q:\n%s", want, slow)
		}
	}
	if !strings.Contains(slow, "| step | floe time | floe peak RSS | restic time | restic peak RSS |\n") ||
		!strings.Contains(slow, "| step | floe time | floe peak RSS | restic time | restic peak RSS | disk time | disk peak RSS |\n") {
		t.Errorf("the disk's columns are missing from the large set's table or shown in goroot's:\n%s", slow)
	}
	if fast := report(1.0); !strings.Contains(fast, "The disk allows the restore target here: restic ÷ the direct copy is 3.600×.") {
		t.Errorf("a disk faster than the target asks is not said to allow it:\n%s", fast)
	}
	if none := report(nan); strings.Contains(none, "disk's floor") {
		t.Errorf("a report without the disk reference shows its floor:\n%s", none)
	}
}
