// Command fleetsim simulates a fleet of agents against one real `floe
// serve`: every simulated agent enrolls, asks for a lease at its start
// time, "backs up" (a sleep drawn from a log-normal distribution), reports
// its run and gives the lease back, all with real HTTP calls. A simulated
// clock compresses the night (00:00-04:00 by default) into a few minutes.
// Start times come from internal/agent/schedule: spread over the window by
// a hash of host and job, as the agent does, or all at 00:00 (--cron).
//
// Measured: the peak of backups running at once (leases held), the peak
// requested (running and queued), when the last backup ended, the
// server's latency for lease requests and reports (p50/p99), its peak RSS,
// and, with --runs N, the size of the fleet database per 100,000 reports.
// bench/FLEET.md has the results.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/floe-backup/floe/internal/agent/schedule"
	"github.com/floe-backup/floe/internal/fleet"
	"github.com/floe-backup/floe/internal/server/fleetsrv"
	"github.com/floe-backup/floe/internal/storage/remote"
)

func main() {
	bin := flag.String("floe", "", "the floe binary (built by scripts or `go build ./cmd/floe`)")
	agents := flag.Int("agents", 1000, "simulated agents")
	maxConc := flag.Int("max-concurrent-backups", 50, "the server's limit of backups at once")
	window := flag.String("window", "00:00-04:00", "the backup window")
	nightReal := flag.Duration("night", 4*time.Minute, "real time the window takes")
	median := flag.Duration("median", 8*time.Minute, "median backup duration (simulated time)")
	sigma := flag.Float64("sigma", 0.8, "log-normal sigma of backup durations")
	cron := flag.Bool("cron", false, "everyone at 00:00 instead of spread over the window")
	runs := flag.Int("runs", 0, "after the night, post this many more reports and measure the database")
	poll := flag.Duration("poll", 2*time.Second, "real time between lease requests of a queued agent")
	flag.Parse()
	if *bin == "" {
		log.Fatal("give --floe BINARY")
	}
	if _, err := schedule.ParseWindow(*window); err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "fleetsim-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "srv")
	state := filepath.Join(root, ".floe-server")
	ctx := context.Background()

	// the hosts, added to the database as `floe serve host add` does
	db, err := fleetsrv.OpenDB(ctx, state)
	if err != nil {
		log.Fatal(err)
	}
	enrollTokens := make([]string, *agents)
	now := time.Now()
	for i := range enrollTokens {
		tok, hash, err := fleetsrv.NewEnrollToken()
		if err != nil {
			log.Fatal(err)
		}
		if err := db.AddHost(ctx, fmt.Sprintf("host%04d", i), "fleet", hash, now.Add(time.Hour), now); err != nil {
			log.Fatal(err)
		}
		enrollTokens[i] = tok
	}
	db.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	srv := exec.Command(*bin, "serve", "--root", root, "--listen", listen, "--max-concurrent-backups", fmt.Sprint(*maxConc), "--alert-interval", "1h")
	out, err := srv.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	defer srv.Process.Kill()
	addr, fp := "https://"+listen, ""
	sc := bufio.NewScanner(out)
	for fp == "" && sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "certificate fingerprint: "); ok {
			fp = v
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	if fp == "" {
		log.Fatal("floe serve did not print its fingerprint")
	}
	base := strings.TrimSuffix(addr, "/")
	fmt.Printf("server %s (pid %d), %d agents, --max-concurrent-backups %d, load before: %s\n", base, srv.Process.Pid, *agents, *maxConc, loadavg())

	// enroll: each agent gets its own client (its own connection)
	clients := make([]*fleet.Client, *agents)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range clients {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			hc, err := remote.NewHTTPClient(base, remote.Options{Fingerprint: fp})
			if err != nil {
				log.Fatal(err)
			}
			hc.Timeout = 2 * time.Minute
			cr, err := fleet.Enroll(ctx, hc, base, enrollTokens[i])
			if err != nil {
				log.Fatalf("enroll host%04d: %v", i, err)
			}
			clients[i] = &fleet.Client{Base: base, Token: cr.Token, HTTP: hc}
		}()
	}
	wg.Wait()

	// the night
	scale := float64(4*time.Hour) / float64(*nightReal)
	day := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	real0 := time.Now()
	virt := func(t time.Time) time.Time { return day.Add(time.Duration(float64(t.Sub(real0)) * scale)) }
	realAt := func(v time.Time) time.Time { return real0.Add(time.Duration(float64(v.Sub(day)) / scale)) }
	var (
		mu                  sync.Mutex
		leaseLat, reportLat []time.Duration
		running, requested  atomic.Int64
		peakRun, peakReq    atomic.Int64
		lastEnd             time.Time
		failures            atomic.Int64
	)
	peak := func(p *atomic.Int64, v int64) {
		for {
			old := p.Load()
			if v <= old || p.CompareAndSwap(old, v) {
				return
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	durations := make([]time.Duration, *agents)
	for i := range durations {
		d := time.Duration(float64(*median) * math.Exp(*sigma*rng.NormFloat64()))
		durations[i] = min(max(d, time.Minute), 2*time.Hour)
	}
	for i, c := range clients {
		host := fmt.Sprintf("host%04d", i)
		start := day
		if !*cron {
			p, err := schedule.New([]string{"daily"}, *window, host, "system", time.UTC)
			if err != nil {
				log.Fatal(err)
			}
			start = p.Next(day.Add(-time.Minute))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Until(realAt(start)))
			peak(&peakReq, requested.Add(1))
			ticket := ""
			var lease *fleet.Lease
			for lease == nil {
				t0 := time.Now()
				l, q, err := c.RequestLease(ctx, "system", ticket, 0)
				lat := time.Since(t0)
				mu.Lock()
				leaseLat = append(leaseLat, lat)
				mu.Unlock()
				if err != nil {
					failures.Add(1)
					time.Sleep(*poll)
					continue
				}
				if l != nil {
					lease = l
					break
				}
				ticket = q.Ticket
				time.Sleep(*poll)
			}
			peak(&peakRun, running.Add(1))
			began := virt(time.Now())
			// renew while "backing up", as Client.Acquire does
			every := time.Duration(lease.TTLSeconds) * time.Second / 3
			end := time.Now().Add(time.Duration(float64(durations[i]) / scale))
			for time.Until(end) > every {
				time.Sleep(every)
				if _, err := c.Renew(ctx, lease.ID); err != nil {
					failures.Add(1)
				}
			}
			time.Sleep(time.Until(end))
			fin := virt(time.Now())
			running.Add(-1)
			requested.Add(-1)
			t0 := time.Now()
			err := c.Report(ctx, fleet.Run{Job: "system", Task: fleet.TaskBackup, Status: fleet.StatusOK, Attempt: 1, Scheduled: start, Started: began, Finished: fin,
				FilesUnchanged: 120000, TotalBytes: 40 << 30, DataAdded: 300 << 20, DataAddedStored: 180 << 20, Version: "fleetsim", NextDue: start.Add(24 * time.Hour)})
			lat := time.Since(t0)
			if err != nil {
				failures.Add(1)
			}
			_ = c.Release(ctx, lease.ID)
			mu.Lock()
			reportLat = append(reportLat, lat)
			if fin.After(lastEnd) {
				lastEnd = fin
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	mode := "spread over " + *window
	if *cron {
		mode = "cron-style, everyone at 00:00"
	}
	fmt.Printf("night (%s, %s real for 4 h, scale %.0f): peak backups running %d (limit %d), peak requested (running + queued) %d, last backup ended %s, errors %d\n",
		mode, *nightReal, scale, peakRun.Load(), *maxConc, peakReq.Load(), lastEnd.Format("15:04"), failures.Load())
	fmt.Printf("lease requests: %d, p50 %s, p99 %s, max %s\n", len(leaseLat), pct(leaseLat, 50), pct(leaseLat, 99), pct(leaseLat, 100))
	fmt.Printf("reports: %d, p50 %s, p99 %s, max %s\n", len(reportLat), pct(reportLat, 50), pct(reportLat, 99), pct(reportLat, 100))

	if *runs > 0 {
		before := dbSize(state)
		var lat []time.Duration
		var n atomic.Int64
		var lmu sync.Mutex
		t0 := time.Now()
		for w := 0; w < 32; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for {
					k := int(n.Add(1)) - 1
					if k >= *runs {
						break
					}
					c := clients[k%len(clients)]
					at := day.Add(time.Duration(k/len(clients)+1) * 24 * time.Hour)
					s := time.Now()
					if err := c.Report(ctx, fleet.Run{Job: "system", Task: fleet.TaskBackup, Status: fleet.StatusOK, Attempt: 1, Scheduled: at, Started: at, Finished: at.Add(10 * time.Minute),
						FilesUnchanged: 120000, TotalBytes: 40 << 30, DataAdded: 300 << 20, DataAddedStored: 180 << 20, Version: "fleetsim", NextDue: at.Add(24 * time.Hour)}); err != nil {
						failures.Add(1)
					}
					mine = append(mine, time.Since(s))
				}
				lmu.Lock()
				lat = append(lat, mine...)
				lmu.Unlock()
			}()
		}
		wg.Wait()
		el := time.Since(t0)
		after := dbSize(state)
		fmt.Printf("%d more reports in %s (%.0f/s, 32 at once): p50 %s, p99 %s; database %s -> %s: %s per 100,000 reports\n",
			*runs, el.Round(time.Second), float64(*runs)/el.Seconds(), pct(lat, 50), pct(lat, 99), mib(before), mib(after),
			mib(int64(float64(after-before)*100000/float64(*runs))))
	}
	fmt.Printf("server peak RSS %s; load after: %s\n", vmHWM(srv.Process.Pid), loadavg())
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := min(len(s)-1, int(math.Ceil(float64(p)/100*float64(len(s))))-1)
	return s[max(i, 0)].Round(100 * time.Microsecond)
}

func dbSize(state string) int64 {
	var n int64
	for _, f := range []string{"fleet.db", "fleet.db-wal"} {
		if fi, err := os.Stat(filepath.Join(state, f)); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func vmHWM(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ") + fmt.Sprintf(" (%d CPUs)", numCPU())
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}
