package storetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/skiff-dev/skiff/pkg/store"
)

// BenchmarkRangedGet measures the throughput of ranged reads at random
// offsets of one large blob, the access pattern of lazily loaded frames.
func BenchmarkRangedGet(b *testing.B, st store.Store) {
	const (
		key  = "blobs/sha256/bench"
		size = 32 << 20
	)
	ctx := context.Background()
	if err := st.Put(ctx, key, bytes.NewReader(Data(size, 1)), size); err != nil {
		b.Fatalf("Put: %v", err)
	}
	for _, length := range []int64{4 << 10, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", length>>10), func(b *testing.B) {
			r := rand.New(rand.NewPCG(1, uint64(length)))
			buf := make([]byte, length)
			b.SetBytes(length)
			b.ResetTimer()
			for b.Loop() {
				off := r.Int64N(size - length + 1)
				rc, err := st.Get(ctx, key, off, length)
				if err != nil {
					b.Fatalf("Get(%d, %d): %v", off, length, err)
				}
				_, err = io.ReadFull(rc, buf)
				rc.Close()
				if err != nil {
					b.Fatalf("read (%d, %d): %v", off, length, err)
				}
			}
		})
	}
}
