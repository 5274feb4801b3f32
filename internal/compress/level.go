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
// Fastest used 25-30% less CPU for the whole backup than Default and
// stored 5.3-5.5% more (November 2026, same chunker parameters); Better
// costs about twice Default's compression time for 2-7% less.
type Level int

const (
	// Auto compresses the data of files, and every tree, at SpeedDefault
	// (about zstd level 3) and the data of disk images at SpeedFastest
	// (For says why), with the sampled trial that stores incompressible
	// blobs raw. The default, and the level of every repository whose
	// config has no compression_level.
	Auto Level = iota
	// Fastest is SpeedFastest (about zstd level 1) with the same trial.
	Fastest
	// Better is SpeedBetterCompression (about zstd level 7) with the same
	// trial.
	Better
	// Off never compresses: every blob is stored raw.
	Off
	// Default is SpeedDefault for every blob, disk images included: Auto
	// for an operator who would rather store 5% less of an image than
	// save a quarter of the CPU time of its first backup. File data and
	// trees get the same bytes as at Auto.
	Default

	numLevels = iota
)

var levelNames = [numLevels]string{Auto: "auto", Fastest: "fastest", Better: "better", Off: "off", Default: "default"}

// Levels lists the names ParseLevel accepts, for help texts and errors.
const Levels = "auto, fastest, default, better, off"

// Content is what a data blob holds, the one thing besides the
// repository's level that decides how it is compressed (Level.For).
type Content int

const (
	// Files: the data of files and streams, and trees.
	Files Content = iota
	// Image: the data of a disk image (backup --image).
	Image
)

// For returns the level at which a repository at level l compresses a
// blob of content c: Auto compresses images at Fastest, every other level
// is itself. It depends on l and c alone, so every writer of a repository
// gives one plaintext of one kind the same bytes (docs/FORMAT.md "config").
//
// Why images at Fastest: a disk image's data is mostly binaries, shared
// libraries and already compressed files, on which SpeedDefault's second
// hash table finds little that SpeedFastest does not, and its first
// backup is all compression. On the 1.5 GiB ext4 image of bench/images.sh
// (November 2026, same chunker parameters, three alternating pairs) Fastest
// stored 5.4% more (394.9 against 374.6 MB; restic stores about 377 MB,
// borg's default lz4 538 MB) for 25% less CPU time of the whole backup
// (5.2 against 6.9 s): 1.8-1.9x borg's speed on two cores (bench/IMAGES.md)
// against 1.4-1.7x. Proxmox Backup Server makes the same trade: it
// compresses VM images at zstd level 1. File trees keep SpeedDefault: on
// Go source Fastest stores 6.7% more, and a repository of files must not
// be larger than restic's, which uses SpeedDefault.
func (l Level) For(c Content) Level {
	if l == Auto && c == Image {
		return Fastest
	}
	return l
}

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
	case Auto, Default:
		return zstd.SpeedDefault, true
	case Fastest:
		return zstd.SpeedFastest, true
	case Better:
		return zstd.SpeedBetterCompression, true
	}
	return 0, false
}
