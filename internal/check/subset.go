package check

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/floe-backup/floe/internal/hash"
)

// Subset selects the packs whose data --read-data-subset reads.
//
// "n/m" (1 ≤ n ≤ m) selects the packs whose IDs lie in the n-th of m equal
// ranges of the ID space: 1/5 is the first fifth of the packs sorted by ID
// (IDs 00… to 33…). The ranges do not move when packs are added, so running
// 1/m, 2/m, … m/m on successive days reads every pack once per cycle.
//
// "N%" (0 < N ≤ 100, decimals allowed) selects a random N% of the packs, at
// least one.
type Subset struct {
	N, M    int     // n/m, when M > 0
	Percent float64 // N%, when M == 0
}

// ParseSubset parses "n/m" or "N%".
func ParseSubset(s string) (Subset, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(v) || v <= 0 || v > 100 {
			return Subset{}, fmt.Errorf("read-data subset %q: want a percentage above 0 and at most 100, like 10%%", s)
		}
		return Subset{Percent: v}, nil
	}
	if a, b, ok := strings.Cut(s, "/"); ok {
		n, err1 := strconv.Atoi(strings.TrimSpace(a))
		m, err2 := strconv.Atoi(strings.TrimSpace(b))
		if err1 != nil || err2 != nil || m < 1 || n < 1 || n > m || m > 1<<20 {
			return Subset{}, fmt.Errorf("read-data subset %q: want n/m with 1 ≤ n ≤ m, like 1/5", s)
		}
		return Subset{N: n, M: m}, nil
	}
	return Subset{}, fmt.Errorf("read-data subset %q: want N%% (a random share of the packs, like 10%%) or n/m (the n-th of m parts, like 1/5)", s)
}

func (s Subset) String() string {
	if s.M > 0 {
		return fmt.Sprintf("%d/%d", s.N, s.M)
	}
	return strconv.FormatFloat(s.Percent, 'f', -1, 64) + "%"
}

// Select returns the packs of ids (any order) that the subset reads, sorted.
func (s Subset) Select(ids []hash.ID) []hash.ID {
	sorted := slices.Clone(ids)
	slices.SortFunc(sorted, func(a, b hash.ID) int { return strings.Compare(string(a[:]), string(b[:])) })
	if s.M > 0 {
		var out []hash.ID
		for _, id := range sorted {
			// the range of the ID's first 64 bits: floor(x * m / 2^64)
			part, _ := bits.Mul64(binary.BigEndian.Uint64(id[:8]), uint64(s.M))
			if int(part) == s.N-1 {
				out = append(out, id)
			}
		}
		return out
	}
	if len(sorted) == 0 {
		return nil
	}
	k := int(math.Ceil(s.Percent / 100 * float64(len(sorted))))
	k = max(1, min(k, len(sorted)))
	perm := rand.Perm(len(sorted))[:k]
	slices.Sort(perm)
	out := make([]hash.ID, k)
	for i, j := range perm {
		out[i] = sorted[j]
	}
	return out
}
