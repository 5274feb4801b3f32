package compress

// looksRandom reports whether a trial sample's bytes are spread over the
// 256 values as evenly as random bytes are, neither more nor less evenly:
// with c_b the number of bytes of value b in the sample,
// randomMin <= sum c_b^2 <= randomMax (docs/FORMAT.md "Blobs"). The trial
// counts such a sample as one that does not save 1/16, without compressing
// it.
//
// Why the histogram: the trial's samples of random, encrypted or already
// compressed data all fail, and compressing them was the trial's whole cost.
// A sample's EncodeAll costs ~2.8 µs on a benchmark that keeps the encoder's
// 1.1 MiB of match tables in cache, but 9-12 µs in a backup, where BLAKE3,
// AES-GCM and the chunker run between chunks (0.14-0.19 CPU-s per GiB of
// random data, six profiled backups of bench's 1 GiB random.bin); the
// histogram of a sample costs ~1.4 µs, needs 1 KiB of stack and no table
// (0.02-0.03 CPU-s per GiB in the same profiles).
//
// Why these bounds: sum c_b^2 / 16 - 4096 is Pearson's chi-square statistic
// of the sample against uniform bytes, 255 degrees of freedom, so for
// random bytes sum c_b^2 = 69616 on average, standard deviation 361. The
// bounds, 16.5 and 17.5 times 4096 (chi-square 128 and 384), are 5.6
// deviations below and 5.7 above; by Wilson-Hilferty a random sample lies
// above the upper one about once in 3 million samples (once per ~190 GiB
// of random data) and below the lower one about once in 5*10^11, and such
// a sample is only compressed as before.
//
// What changes: a sample within the bounds has a collision entropy,
// -log2(sum (c_b/4096)^2), above 7.87 bits per byte, so its Shannon entropy
// is above that too, and zstd cannot save 1/16 by Huffman-coding its bytes
// (that needs 7.5 bits or less). It can by matches: when some 300 of its
// bytes repeat others, even if all are random, and repetition leaves the
// histogram as flat as random. Such a sample no longer makes its blob
// compressed; the package comment says where that happens. A sample flatter
// than random data is structured, not random (the bytes 0-255 over and
// over give 65536), and is compressed as before.
func looksRandom(p []byte) bool {
	var hist [256]uint32
	for _, c := range p {
		hist[c]++
	}
	var sum uint64
	for _, c := range hist {
		sum += uint64(c) * uint64(c)
	}
	return randomMin <= sum && sum <= randomMax
}

// The bounds of looksRandom, for samples of sampleSize bytes.
const (
	randomMin = sampleSize * 33 / 2 // 67584
	randomMax = sampleSize * 35 / 2 // 71680
)
