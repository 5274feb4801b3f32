//go:build !race

package crypto

const raceDetector = false
