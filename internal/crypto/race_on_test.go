//go:build race

package crypto

// raceDetector: the race detector's shadow memory faults pages of its own.
const raceDetector = true
