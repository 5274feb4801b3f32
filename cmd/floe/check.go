package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/floe-backup/floe/internal/check"
	"github.com/floe-backup/floe/internal/connect"
	"github.com/floe-backup/floe/internal/ui"
)

// checkMaxAffectedLines caps the damaged paths that text output lists.
const checkMaxAffectedLines = 200

func newCheckCommand(g *globals) *cobra.Command {
	var (
		readData bool
		subset   string
	)
	c := &cobra.Command{
		Use:   "check [--read-data | --read-data-subset N%|n/m]",
		Short: "Verify the repository, and show which snapshots and files any damage affects",
		Long: `Verify the repository: the config and every key, index file, pack header
and snapshot load and authenticate; the index agrees with the packs; every
snapshot's trees decode and every blob they need is stored. check reports
every problem it finds, not only the first, and for each damaged object the
snapshots and files it affects.

--read-data also reads every pack in full: every blob in it must hash to
its ID, which with the header and index checks covers every byte that
matters; a pack with a problem, or that no index lists, must also hash to
its name (neither needs a key: b3sum and a write-only key can check that
too). With a full key, every blob
a snapshot refers to must also decrypt, decompress and match the key and
size its tree gives. A copy that does not match its ID is reported with the
pack and the index files that list it, signed by a full key or unsigned (a
write-only host or whoever can write to the storage may have forged it);
gc marks not signed by a full key are reported too. That reads the whole
repository. --read-data-subset reads a share of the packs:
  N%    a random N% of the packs (decimals allowed)
  n/m   the n-th of m fixed ranges of pack IDs (1/5 = the first fifth);
        run 1/m, 2/m, ... m/m in turn to read every pack once per cycle

Packs that no index file lists (left by an interrupted backup) and
temporary files older than an hour are warnings: harmless, and prune
removes such packs.

Exit status: 0 when check found no damage (warnings allowed), 13 when it
found damage, and the usual codes when the repository cannot be opened.`,
		Example: `  floe check
  floe check --read-data
  floe check --read-data-subset 10%      # a random tenth of the packs
  floe check --read-data-subset 3/7      # run 1/7 ... 7/7 on successive days
  floe check --json | jq '.errors[].affected'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := check.Options{ReadData: readData}
			if subset != "" {
				s, err := check.ParseSubset(subset)
				if err != nil {
					return usageError{err}
				}
				opts.Subset = &s
			}
			return runCheck(cmd.Context(), g, opts)
		},
	}
	c.Flags().BoolVar(&readData, "read-data", false, "read every pack in full and verify every blob (reads the whole repository)")
	c.Flags().StringVar(&subset, "read-data-subset", "", "like --read-data, but only for a `SUBSET` of the packs: N% (random) or n/m (the n-th of m parts)")
	return c
}

func runCheck(ctx context.Context, g *globals, opts check.Options) error {
	r, err := g.openRepo(ctx, false)
	if err != nil {
		return checkOpenFailure(ctx, g, err)
	}
	defer r.Close()

	mode := ""
	switch {
	case opts.Subset != nil:
		mode = ", reading the data of packs " + opts.Subset.String()
	case opts.ReadData:
		mode = ", reading all data"
	}
	g.say("checking repository %s%s", r.Backend().Location(), mode)

	prog := &ui.Meter{}
	live := newCheckLiveStatus(g, prog.Line)
	stopJSON := g.jsonStatus(time.Now(), func() map[string]any {
		phase, _, done, total, bytesDone, bytesTotal := prog.Current()
		return map[string]any{"phase": phase, "done": done, "total": total, "bytes_done": bytesDone, "bytes_total": bytesTotal}
	})
	opts.Progress = prog
	res, err := check.Run(ctx, r, opts, func(p *check.Problem) {
		if g.json || (g.quiet && p.Severity == check.Warning) {
			return
		}
		live.println(p.String())
	})
	live.stop()
	stopJSON()
	if err != nil {
		return err
	}
	s := res.Summary
	if g.json {
		stdoutJSON.summary(struct {
			Repository string           `json:"repository"`
			Errors     []*check.Problem `json:"errors"`
			Warnings   []*check.Problem `json:"warnings"`
			Summary    check.Summary    `json:"summary"`
		}{r.Backend().Location(), res.Errors(), res.Warnings(), s})
		if s.Errors > 0 {
			g.exitCode = ExitDamage // the document says it all; no second JSON error
		}
		return nil
	}
	printCheckAffected(res)
	g.say("%s", checkSummaryLine(s))
	if s.Errors > 0 {
		return &exitError{ExitDamage, fmt.Errorf("check found %s", ui.Count(s.Errors, "problem"))}
	}
	if s.Warnings > 0 {
		g.say("no damage found (%s)", ui.Count(s.Warnings, "warning"))
	} else {
		g.say("no problems found")
	}
	return nil
}

// printCheckAffected lists the damaged paths of each snapshot, and the
// snapshots whose records cannot be read.
func printCheckAffected(res *check.Result) {
	s := res.Summary
	if len(s.DamagedSnapshots) == 0 {
		return
	}
	withPaths := map[string]bool{}
	for _, a := range res.Affected {
		withPaths[a.Snapshot.String()] = true
	}
	fmt.Printf("\ndamage affects %s", ui.Count(len(s.DamagedSnapshots), "snapshot"))
	if n := len(res.Affected); n > 0 {
		fmt.Printf(", %s", ui.Count(n, "path"))
	}
	fmt.Println(":")
	for _, id := range s.DamagedSnapshots {
		if !withPaths[id] {
			fmt.Printf("  snapshot %s: its record cannot be read\n", id[:8])
		}
	}
	for i, a := range res.Affected {
		if i == checkMaxAffectedLines {
			fmt.Printf("  ... and %d more (floe check --json lists them all)\n", len(res.Affected)-i)
			break
		}
		fmt.Printf("  %s\n", a)
	}
	fmt.Println()
}

func checkSummaryLine(s check.Summary) string {
	var b strings.Builder
	fmt.Fprintf(&b, "checked %s, %s, %s (%s), %s, %s, %s, %s",
		ui.Count(s.Keys, "key"), ui.Count(s.IndexFiles, "index file"), ui.Count(s.Packs, "pack"), ui.Bytes(uint64(s.PackBytes)),
		ui.Count(s.Blobs, "blob"), ui.Count(s.Snapshots, "snapshot"), ui.Count(s.Trees, "tree"), ui.Count(s.Files, "file"))
	if s.ReadData {
		fmt.Fprintf(&b, "; read %s (%s) and verified %s", ui.Count(s.PacksRead, "pack"),
			ui.Bytes(uint64(s.BytesRead)), ui.Count(s.BlobsVerified, "blob"))
	}
	fmt.Fprintf(&b, " in %s", ui.Duration(time.Duration(s.DurationSeconds*float64(time.Second))))
	if s.Errors > 0 || s.Warnings > 0 {
		fmt.Fprintf(&b, ": %s, %s", ui.Count(s.Errors, "error"), ui.Count(s.Warnings, "warning"))
	}
	if len(s.DamagedSnapshots) > 0 {
		fmt.Fprintf(&b, "; %d of %s damaged", len(s.DamagedSnapshots), ui.Count(s.Snapshots, "snapshot"))
	}
	return b.String()
}

// checkLiveStatus is a status line on stderr that lines printed on stdout
// interrupt cleanly: the line is cleared before each, and redrawn later.
type checkLiveStatus struct {
	mu   sync.Mutex
	st   *ui.Status
	on   bool
	done chan struct{}
	wg   sync.WaitGroup
}

func newCheckLiveStatus(g *globals, line func() string) *checkLiveStatus {
	l := &checkLiveStatus{st: g.status(), on: !g.quiet && !g.json && ui.IsTerminal(os.Stderr), done: make(chan struct{})}
	if !l.on {
		return l
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-l.done:
				return
			case <-t.C:
				l.mu.Lock()
				l.st.Show(line())
				l.mu.Unlock()
			}
		}
	}()
	return l
}

func (l *checkLiveStatus) clear() {
	if l.on {
		l.st.Show("")
		fmt.Fprint(os.Stderr, "\r")
	}
}

func (l *checkLiveStatus) println(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clear()
	fmt.Println(s)
}

func (l *checkLiveStatus) stop() {
	if !l.on {
		return
	}
	close(l.done)
	l.wg.Wait()
	l.clear()
}

// checkOpenFailure gives damage that keeps the repository from opening
// exit code 13 (connect.Diagnose tells it from a wrong password).
func checkOpenFailure(ctx context.Context, g *globals, err error) error {
	err = connect.Diagnose(ctx, g.target(), err)
	var de *connect.DamagedError
	if errors.As(err, &de) {
		return &exitError{ExitDamage, err}
	}
	return err
}
