//go:build race

package e2e

// raceDetector: `go test -race ./e2e` builds the floe under test with the
// race detector too.
const raceDetector = true
