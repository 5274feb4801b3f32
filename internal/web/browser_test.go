package web

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"image/png"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// RequireBrowserEnv, when set (scripts/test.sh sets it), turns a missing
// Chromium into a failure instead of a skip.
const RequireBrowserEnv = "FLOE_REQUIRE_CHROMIUM"

func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "Chromium not found (looked for chromium, chromium-browser, google-chrome in PATH; Debian: apt-get install chromium)"
	if os.Getenv(RequireBrowserEnv) != "" {
		t.Fatal(msg + "; " + RequireBrowserEnv + " is set")
	}
	t.Skip(msg)
	return ""
}

// browser starts headless Chromium with a fresh profile and collects
// console errors and warnings, uncaught exceptions and log entries
// (failed loads, CSP violations).
func browser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	exe := findChromium(t)
	// Chromium makes its singleton socket's directory in TMPDIR and
	// leaves it there when it is killed: give it one of the test's own,
	// short (a socket's path holds at most 107 bytes), removed after it
	tmp, err := os.MkdirTemp("", "chromium")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	opts := []chromedp.ExecAllocatorOption{
		chromedp.Env("TMPDIR=" + tmp),
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox, // tests run as root
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); acancel() })
	// the first Run starts the browser; its context must not time out
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`1`)); err != nil {
		t.Fatalf("start Chromium (%s): %v", exe, err)
	}
	var mu sync.Mutex
	var problems []string
	if err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError || e.Type == runtime.ConsoleAPICalledTypeWarning {
				var parts []string
				for _, a := range e.Args {
					parts = append(parts, string(a.Value)+a.Description)
				}
				problems = append(problems, fmt.Sprintf("console.%s: %s", e.Type, strings.Join(parts, " ")))
			}
		case *runtime.EventExceptionThrown:
			problems = append(problems, "exception: "+(&chromedp.ExceptionError{ExceptionDetails: e.ExceptionDetails}).Error())
		case *cdplog.EventEntryAdded:
			if e.Entry.Level == cdplog.EntryLevelError || e.Entry.Level == cdplog.EntryLevelWarning {
				problems = append(problems, fmt.Sprintf("log %s: %s %s", e.Entry.Level, e.Entry.Text, e.Entry.URL))
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("enable the log domain: %v", err)
	}
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), problems...)
	}
}

func must[T any](t *testing.T, what string) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
}

func eval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return v
}

func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := chromedp.Do(tctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// The dashboard as a person uses it, in real headless Chromium: log in,
// see 1,000 hosts (timed), sort and filter, open the hostile host's page,
// whose name renders as text and whose charts draw; log out; no console
// errors on any page.
func TestDashboardInBrowser(t *testing.T) {
	ts := newTestServer(t, 1000)
	ctx, problems := browser(t)

	do(t, ctx, "login",
		chromedp.Navigate(ts.URL+"/ui/"), // redirected to the login
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), goodToken),
		chromedp.Click(chromedp.ID("login-button")),
		chromedp.WaitVisible(chromedp.CSS(`#overview[data-loaded]`)),
	)

	// the overview with 1,000 hosts, timed from navigation to the rendered table
	start := time.Now()
	do(t, ctx, "overview",
		chromedp.Navigate(ts.URL+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS(`#overview[data-loaded]`)),
	)
	elapsed := time.Since(start)
	renderMS := eval[string](t, ctx, `document.getElementById("overview").getAttribute("data-render-ms")`)
	rows := eval[int](t, ctx, `document.querySelectorAll("#hosts tbody tr").length`)
	t.Logf("overview of %d jobs: %v from navigation to the rendered table (fetch and render in the page: %s ms)", rows, elapsed, renderMS)
	if rows != 1001 {
		t.Fatalf("%d rows, want 1001", rows)
	}
	if elapsed > 5*time.Second {
		t.Fatalf("the overview of 1,000 hosts took %v", elapsed)
	}

	// worst first; the hostile name is text, not markup
	first := eval[string](t, ctx, `document.querySelector("#hosts tbody tr").getAttribute("data-state")`)
	hostile := eval[bool](t, ctx, fmt.Sprintf(`Array.from(document.querySelectorAll("a.hostlink")).some(a => a.textContent === %q)`, HostileName))
	injected := eval[int](t, ctx, `document.querySelectorAll("main img, main script:not([src=\"/ui/static/app.js\"])").length`)
	title := must[string](t, "title")(chromedp.Run(ctx, chromedp.Title()))
	if first != "failed" || !hostile || injected != 0 || title == "pwned" {
		t.Fatalf("first row %q, hostile name as text %v, injected elements %d, title %q", first, hostile, injected, title)
	}

	// sort by host, then filter
	do(t, ctx, "sort", chromedp.Click(chromedp.CSS(`th[data-key="host"]`)))
	firstHost := eval[string](t, ctx, `document.querySelector("#hosts tbody tr a.hostlink").textContent`)
	if firstHost != HostileName { // '<' sorts before letters
		t.Fatalf("first host after sorting by host: %q", firstHost)
	}
	do(t, ctx, "filter", chromedp.SendKeys(chromedp.ID("filter"), "host0999"))
	if n := eval[int](t, ctx, `document.querySelectorAll("#hosts tbody tr").length`); n != 1 {
		t.Fatalf("filter host0999: %d rows", n)
	}

	// the hostile host's page: its name as text, charts drawn
	do(t, ctx, "host page",
		chromedp.Navigate(ts.URL+"/ui/host?name="+url.QueryEscape(HostileName)),
		chromedp.WaitVisible(chromedp.CSS(`#hostpage[data-loaded]`)),
	)
	name := must[string](t, "host name")(chromedp.Run(ctx, chromedp.Text(chromedp.ID("hostname"))))
	title = must[string](t, "title")(chromedp.Run(ctx, chromedp.Title()))
	if name != HostileName || title == "pwned" {
		t.Fatalf("host name rendered as %q, title %q", name, title)
	}
	if bars := eval[int](t, ctx, `document.querySelectorAll("#chart-duration rect").length`); bars != 30 {
		t.Fatalf("duration chart has %d bars, want 30", bars)
	}
	shot := must[[]byte](t, "screenshot")(chromedp.Run(ctx, chromedp.Screenshot(chromedp.ID("chart-duration"))))
	if colours := distinctColours(t, shot); colours < 3 {
		t.Fatalf("chart screenshot has %d colours: blank", colours)
	}

	// the repository page: figures, the growth chart, hosts by unique
	// data (the hostile name as text)
	do(t, ctx, "repository page",
		chromedp.Navigate(ts.URL+"/ui/repo?name=fleet"),
		chromedp.WaitVisible(chromedp.CSS(`#repopage[data-loaded]`)),
	)
	stored := must[string](t, "stored")(chromedp.Run(ctx, chromedp.Text(chromedp.ID("stored"))))
	dedup := must[string](t, "dedup")(chromedp.Run(ctx, chromedp.Text(chromedp.ID("dedup"))))
	firstRepoHost := eval[string](t, ctx, `document.querySelector("#repohosts tbody tr a.hostlink").textContent`)
	growth := eval[int](t, ctx, `document.querySelectorAll("#chart-growth rect").length`)
	links := eval[int](t, ctx, `document.querySelectorAll("#repolinks a.repolink").length`)
	title = must[string](t, "title")(chromedp.Run(ctx, chromedp.Title()))
	if stored != "4.0 MiB" || !strings.HasSuffix(dedup, "x") || firstRepoHost != HostileName || growth != 30 || links != 1 || title == "pwned" {
		t.Fatalf("repository page: stored %q, dedup %q, first host %q, %d growth bars, %d repository links, title %q", stored, dedup, firstRepoHost, growth, links, title)
	}

	// the accounting page and its CSV (fetched by the page, with the session)
	do(t, ctx, "accounting page",
		chromedp.Navigate(ts.URL+"/ui/accounting"),
		chromedp.WaitVisible(chromedp.CSS(`#accounting[data-loaded]`)),
	)
	if n := eval[int](t, ctx, `document.querySelectorAll("#acct tbody tr").length`); n < 2 {
		t.Fatalf("accounting page: %d rows", n)
	}
	csvText, err := chromedp.Run(ctx, chromedp.Evaluate[string](`fetch(document.getElementById("csv").href, {credentials: "same-origin"}).then(r => r.text())`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("fetch the CSV: %v", err)
	}
	recs, err := csv.NewReader(strings.NewReader(csvText)).ReadAll()
	if err != nil || len(recs) < 3 || strings.Join(recs[0], ",") != "month,repository,host,runs,protected_bytes,new_stored_bytes,share,attributed_bytes" {
		t.Fatalf("CSV: %v\n%s", err, csvText)
	}
	var sawFormula, sawHostile bool
	for _, rec := range recs[1:] {
		sawFormula = sawFormula || rec[2] == "'"+FormulaName
		sawHostile = sawHostile || rec[2] == HostileName
		if strings.HasPrefix(rec[2], "=") {
			t.Fatalf("a formula in the CSV: %q", rec)
		}
	}
	if !sawFormula || !sawHostile {
		t.Fatalf("CSV lacks the guarded formula host or the hostile one:\n%s", csvText)
	}

	// log out (a POST with the CSRF token) lands on the login page
	do(t, ctx, "logout",
		chromedp.Click(chromedp.CSS(`form.logout button`)),
		chromedp.WaitVisible(chromedp.ID("token")),
	)
	if p := problems(); len(p) > 0 {
		t.Fatalf("console errors:\n%s", strings.Join(p, "\n"))
	}
}

func distinctColours(t *testing.T, b []byte) int {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	seen := map[[4]uint32]bool{}
	bounds := img.Bounds()
	for y := bounds.Min.Y; y < bounds.Max.Y; y += 2 {
		for x := bounds.Min.X; x < bounds.Max.X; x += 2 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r >> 8, g >> 8, bl >> 8, a >> 8}] = true
		}
	}
	return len(seen)
}
