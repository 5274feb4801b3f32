package chunker

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"
)

func TestHangHunt(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for k := 0; k < 20000; k++ {
		data := make([]byte, r.IntN(300))
		for i := range data {
			data[i] = byte(r.IntN(3))
		}
		minSize, avgBits, extra, seed := r.Uint32(), uint8(r.IntN(256)), r.Uint32(), byte(r.IntN(256))
		done := make(chan bool)
		go func() {
			avg := uint32(1) << (7 + avgBits%8)
			p := Params{Min: 64 + minSize%(avg-64), Avg: avg, Max: avg + 1 + extra%(4*avg), Seed: seedOf(seed)}
			chunkAll(t, bytes.NewReader(data), p)
			refLengths(data, p)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("hang: len %d min %d avgbits %d extra %d seed %d", len(data), minSize, avgBits, extra, seed)
		}
	}
}
