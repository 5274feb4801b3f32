// Package nbdtest finds the real NBD clients of Debian that the tests of
// internal/nbd and e2e run against: qemu-img and qemu-io (qemu-utils),
// nbdinfo and nbdcopy (libnbd-bin), nbdkit, and libnbd's Python bindings
// (python3-libnbd). scripts/test.sh installs them and sets
// FLOE_REQUIRE_NBD_TOOLS=1, which turns a missing tool from a skip into a
// failure. Imported by _test.go files only.
package nbdtest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireEnv, when set, makes a missing tool fail the test.
const RequireEnv = "FLOE_REQUIRE_NBD_TOOLS"

// Required reports whether missing tools fail tests instead of skipping
// them.
func Required() bool { return os.Getenv(RequireEnv) != "" }

// NeedTools skips the test (fails it under scripts/test.sh) unless every
// tool is on PATH.
func NeedTools(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	unavailable(t, fmt.Sprintf("missing %s (Debian: qemu-utils, libnbd-bin)", strings.Join(missing, ", ")))
}

// Python returns a Python that has libnbd's bindings (the system one; a
// python3 earlier in PATH may not), or skips (fails) the test.
func Python(t testing.TB) string {
	t.Helper()
	for _, py := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(py, "-c", "import nbd").Run() == nil {
			return py
		}
	}
	unavailable(t, "missing libnbd's Python bindings (Debian: python3-libnbd)")
	return ""
}

func unavailable(t testing.TB, msg string) {
	t.Helper()
	if Required() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
