package compress

import (
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Level is a repository's compression level (docs/FORMAT.md "config",
// field compression_level). The stored bytes of a blob, hence its ID,
// depend on the level, so every writer of one repository must use the
// same one: it belongs to the repository, not to a backup.
//
// Measured on the 1.5 GiB ext4 image of bench/images.sh (bench/IMAGES.md),
// Fastest used 25-30% less CPU for the whole backup than Auto and stored
// 5.3-5.5% more (November 2026, same chunker parameters); Better costs
// about twice Auto's compression time for 2-7% less.
type Level int

const (
	// Auto is SpeedDefault (about zstd level 3) with the sampled trial
	// that stores incompressible blobs raw. The default, and the level of
	// every repository whose config has no compression_level.
	Auto Level = iota
	// Fastest is SpeedFastest (about zstd level 1) with the same trial.
	Fastest
	// Better is SpeedBetterCompression (about zstd level 7) with the same
	// trial.
	Better
	// Off never compresses: every blob is stored raw.
	Off

	numLevels = iota
)

var levelNames = [numLevels]string{Auto: "auto", Fastest: "fastest", Better: "better", Off: "off"}

// Levels lists the names ParseLevel accepts, for help texts and errors.
const Levels = "auto, fastest, better, off"

// ParseLevel returns the level named s; "" is Auto (a config written
// before levels existed).
func ParseLevel(s string) (Level, error) {
	if s == "" {
		return Auto, nil
	}
	for l, name := range levelNames {
		if s == name {
			return Level(l), nil
		}
	}
	return Auto, fmt.Errorf("unknown compression level %q (known: %s)", s, Levels)
}

// String returns the level's name as ParseLevel reads it.
func (l Level) String() string {
	if l >= 0 && int(l) < len(levelNames) {
		return levelNames[l]
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// zstd returns the encoder level of a compressing level.
func (l Level) zstd() (zstd.EncoderLevel, bool) {
	switch l {
	case Auto:
		return zstd.SpeedDefault, true
	case Fastest:
		return zstd.SpeedFastest, true
	case Better:
		return zstd.SpeedBetterCompression, true
	}
	return 0, false
}
