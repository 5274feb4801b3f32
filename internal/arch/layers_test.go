package arch

import (
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/floe-backup/floe"

// The layers of docs/ARCHITECTURE.md, bottom up. A package may import
// packages of its own layer or of layers below. A package gets the layer of
// the longest prefix below that names it; a package that none names fails
// the test: give it a layer here and a line in docs/ARCHITECTURE.md.
const (
	layerStorage = iota
	layerLeaf
	layerRepository
	layerModel
	layerOperation
	layerFront
)

var layerNames = []string{"storage", "leaves", "repository", "model", "operations", "front ends"}

var layers = map[string]int{
	"internal/storage":  layerStorage, // and every backend below it
	"internal/location": layerStorage,

	"internal/hash":      layerLeaf,
	"internal/chunker":   layerLeaf,
	"internal/compress":  layerLeaf,
	"internal/crypto":    layerLeaf,
	"internal/packfile":  layerLeaf, // pack and index layouts, no keys: the server verifies uploads with it
	"internal/par":       layerLeaf,
	"internal/directio":  layerStorage, // used by storage/local, image backups and restores
	"internal/netbatch":  layerStorage, // beneath TLS in storage/remote and the server
	"internal/idle":      layerStorage, // the idle timeout of the clients of floe serve and S3
	"internal/slab":      layerStorage, // large buffers outside the Go heap: backup's chunks and seals, restore's plaintexts
	"internal/pathmatch": layerLeaf,
	"internal/ui":        layerLeaf,
	"internal/hook":      layerLeaf,
	"internal/fssnap":    layerLeaf,
	"internal/fleet":     layerLeaf, // report types shared by agent, server and web UI
	"internal/nbd":       layerLeaf, // NBD server over any Image; knows no repository

	"internal/agent/schedule": layerLeaf, // pure: when jobs run, from times passed in

	"internal/repo": layerRepository,

	"internal/snapshot": layerModel,
	"internal/walk":     layerModel,
	"internal/fsmeta":   layerModel,
	"internal/cache":    layerModel,

	"internal/connect":             layerOperation, // opens repositories for operations and front ends
	"internal/backup":              layerOperation,
	"internal/restore":             layerOperation,
	"internal/check":               layerOperation,
	"internal/prune":               layerOperation,
	"internal/forget":              layerOperation,
	"internal/diff":                layerOperation,
	"internal/audit":               layerOperation,
	"internal/dump":                layerOperation,
	"internal/stats":               layerOperation,
	"internal/mount":               layerOperation,
	"internal/transfer":            layerOperation,
	"internal/repair":              layerOperation,
	"internal/rewrite":             layerOperation,  // floe rewrite: snapshots without excluded paths
	"internal/snapimage":           layerOperation,  // a snapshot's file as an nbd.Image
	"internal/devrestore":          layerOperation,  // a snapshot's image onto a block device
	"internal/testutil":            layerRepository, // test helpers: see testOnly
	"internal/testutil/backuptest": layerOperation,

	"cmd":             layerFront,
	"internal/server": layerFront,
	"internal/agent":  layerFront,
	"internal/web":    layerFront,
	"internal/arch":   layerFront,
	"e2e":             layerFront,
	"bench":           layerFront,
}

// testOnly packages are imported by _test.go files only.
var testOnly = []string{"internal/testutil", "internal/storage/storagetest", "internal/storage/s3/s3test", "internal/walk/walktest", "internal/nbd/nbdtest"}

// forbidden lists, for a package prefix, packages it must not depend on,
// directly or through others.
var forbidden = map[string][]string{
	// the server serves storage to hosts and holds no keys
	"internal/server": {"internal/repo", "internal/snapshot", "internal/crypto", "internal/connect"},
	// pack and index layouts, verifiable by anyone: no keys
	"internal/packfile": {"internal/repo", "internal/crypto", "internal/snapshot"},
	// pure: fed times by the agent, tested with a fake clock
	"internal/agent/schedule": {"internal/repo", "internal/storage", "internal/connect", "internal/server"},
	// assets and their handler; the server mounts them
	"internal/web": {"internal/repo", "internal/snapshot", "internal/crypto", "internal/connect", "internal/agent"},
}

// pkg is one package's imports of this module's packages, relative to the
// module ("internal/repo").
type pkg struct {
	imports     map[string][]string // imported package -> the files importing it
	testImports map[string][]string // the same for _test.go files
}

func loadModule(t *testing.T) map[string]*pkg {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	pkgs := map[string]*pkg{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") {
			return nil
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		p := pkgs[rel]
		if p == nil {
			p = &pkg{imports: map[string][]string{}, testImports: map[string][]string{}}
			pkgs[rel] = p
		}
		for _, imp := range f.Imports {
			ip, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return err
			}
			dep, ok := strings.CutPrefix(ip, module+"/")
			if !ok {
				continue
			}
			if strings.HasSuffix(name, "_test.go") {
				p.testImports[dep] = append(p.testImports[dep], name)
			} else {
				p.imports[dep] = append(p.imports[dep], name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) < 20 || pkgs["internal/repo"] == nil || pkgs["cmd/floe"] == nil {
		t.Fatalf("found only %d packages under %s", len(pkgs), root)
	}
	return pkgs
}

// under reports whether pkg is prefix or below it.
func under(pkg, prefix string) bool {
	return pkg == prefix || strings.HasPrefix(pkg, prefix+"/")
}

// layerOf returns the layer of the longest prefix in layers naming p.
func layerOf(p string) (int, bool) {
	best, layer := "", 0
	for prefix, l := range layers {
		if under(p, prefix) && len(prefix) > len(best) {
			best, layer = prefix, l
		}
	}
	return layer, best != ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func TestLayers(t *testing.T) {
	for _, v := range layerViolations(loadModule(t)) {
		t.Error(v)
	}
}

func TestTestHelpersOnlyInTests(t *testing.T) {
	for _, v := range testOnlyViolations(loadModule(t)) {
		t.Error(v)
	}
}

func TestForbiddenDependencies(t *testing.T) {
	for _, v := range forbiddenViolations(loadModule(t)) {
		t.Error(v)
	}
}

// layerViolations: every package has a layer, imports point down (or
// sideways), and nothing imports the command.
func layerViolations(pkgs map[string]*pkg) []string {
	var out []string
	for _, p := range sortedKeys(pkgs) {
		lp, ok := layerOf(p)
		if !ok {
			out = append(out, fmt.Sprintf("%s has no layer: add it to the table in internal/arch and to docs/ARCHITECTURE.md", p))
			continue
		}
		for _, imports := range []map[string][]string{pkgs[p].imports, pkgs[p].testImports} {
			for _, dep := range sortedKeys(imports) {
				if under(dep, "cmd") && !under(p, "cmd") {
					out = append(out, fmt.Sprintf("%s imports %s (%s): nothing imports the command", p, dep, imports[dep][0]))
					continue
				}
				if ld, ok := layerOf(dep); ok && ld > lp {
					out = append(out, fmt.Sprintf("%s (%s) imports %s (%s) in %s: imports must point down",
						p, layerNames[lp], dep, layerNames[ld], imports[dep][0]))
				}
			}
		}
	}
	return out
}

// testOnlyViolations: test helpers are imported by _test.go files only.
func testOnlyViolations(pkgs map[string]*pkg) []string {
	var out []string
	for _, p := range sortedKeys(pkgs) {
		if slices.ContainsFunc(testOnly, func(h string) bool { return under(p, h) }) {
			continue // helpers may use each other
		}
		for _, dep := range sortedKeys(pkgs[p].imports) {
			for _, h := range testOnly {
				if under(dep, h) {
					out = append(out, fmt.Sprintf("%s imports the test helper %s in %s", p, dep, pkgs[p].imports[dep][0]))
				}
			}
		}
	}
	return out
}

// forbiddenViolations: the rules of forbidden, through any chain of imports.
func forbiddenViolations(pkgs map[string]*pkg) []string {
	var out []string
	for _, p := range sortedKeys(pkgs) {
		for _, prefix := range sortedKeys(forbidden) {
			if !under(p, prefix) {
				continue
			}
			d := deps(pkgs, p)
			for _, dep := range sortedKeys(d) {
				for _, bad := range forbidden[prefix] {
					if under(dep, bad) {
						out = append(out, fmt.Sprintf("%s depends on %s (%s): see docs/ARCHITECTURE.md", p, dep, strings.Join(d[dep], " -> ")))
					}
				}
			}
		}
	}
	return out
}

// deps returns every package p depends on (not through tests), with the
// chain of imports that leads there.
func deps(pkgs map[string]*pkg, p string) map[string][]string {
	out := map[string][]string{}
	var visit func(q string, path []string)
	visit = func(q string, path []string) {
		pq := pkgs[q]
		if pq == nil {
			return
		}
		for _, dep := range sortedKeys(pq.imports) {
			if _, seen := out[dep]; seen {
				continue
			}
			chain := append(slices.Clone(path), dep)
			out[dep] = chain
			visit(dep, chain)
		}
	}
	visit(p, []string{p})
	return out
}

// TestRulesCatchViolations runs the checks on a module that breaks each
// rule once, so that a mistake in them cannot make them pass everything.
func TestRulesCatchViolations(t *testing.T) {
	imp := func(deps ...string) *pkg {
		p := &pkg{imports: map[string][]string{}, testImports: map[string][]string{}}
		for _, d := range deps {
			p.imports[d] = []string{"x.go"}
		}
		return p
	}
	bad := map[string]*pkg{
		"internal/storage/s3": imp("internal/repo"),                    // upward
		"internal/repo":       imp("cmd/floe", "internal/testutil"),    // the command; a test helper
		"internal/server":     imp("internal/fleet", "internal/stats"), // stats reaches repo
		"internal/stats":      imp("internal/repo"),
		"internal/fleet":      imp(),
		"internal/newthing":   imp(), // no layer
		"internal/storage":    imp(), // fine
		"internal/testutil":   imp(), // fine
		"cmd/floe":            imp("internal/server"),
	}
	bad["internal/snapshot"] = imp()
	bad["internal/snapshot"].testImports["internal/testutil"] = []string{"x_test.go"} // fine: a helper below
	want := map[string][]string{
		"layers": {
			"internal/newthing has no layer",
			"internal/repo imports cmd/floe",
			"internal/storage/s3 (storage) imports internal/repo (repository)",
		},
		"test helpers": {"internal/repo imports the test helper internal/testutil"},
		"forbidden":    {"internal/server depends on internal/repo (internal/server -> internal/stats -> internal/repo)"},
	}
	got := map[string][]string{
		"layers":       layerViolations(bad),
		"test helpers": testOnlyViolations(bad),
		"forbidden":    forbiddenViolations(bad),
	}
	for rule, wants := range want {
		if len(got[rule]) != len(wants) {
			t.Errorf("%s: %d violations, want %d:\n%s", rule, len(got[rule]), len(wants), strings.Join(got[rule], "\n"))
		}
		for _, w := range wants {
			if !slices.ContainsFunc(got[rule], func(v string) bool { return strings.HasPrefix(v, w) }) {
				t.Errorf("%s: no violation %q among:\n%s", rule, w, strings.Join(got[rule], "\n"))
			}
		}
	}
}

func init() {
	if len(layerNames) != layerFront+1 {
		panic(fmt.Sprintf("%d layer names for %d layers", len(layerNames), layerFront+1))
	}
}
