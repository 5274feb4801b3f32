package repo

import (
	"bytes"
	"context"
	"testing"

	"math/rand/v2"
)

func benchData() [][]byte {
	var out [][]byte
	for i := 0; i < 32; i++ {
		if i%2 == 0 {
			out = append(out, rnd(uint64(i), 1<<20))
		} else {
			var b bytes.Buffer
			for b.Len() < 1<<20 {
				b.WriteString("lorem ipsum dolor sit amet ")
				b.Write(rnd(uint64(b.Len()+i), 8))
			}
			out = append(out, b.Bytes()[:1<<20])
		}
	}
	return out
}

func BenchmarkSaveBlobs(b *testing.B) {
	data := benchData()
	b.SetBytes(int64(len(data)) << 20)
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r, _ := newRepo(b)
		b.StartTimer()
		for _, d := range data {
			if _, _, _, err := writerOf(r).SaveBlob(ctx, DataBlob, r.BlobKey(d), d); err != nil {
				b.Fatal(err)
			}
		}
		if err := flush(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
}

func rnd(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}
