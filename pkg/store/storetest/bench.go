package storetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/skiff-dev/skiff/internal/benchratio"
	"github.com/skiff-dev/skiff/pkg/store"
)

// Baseline reads a range of an object without the store around it, the
// plainest way to reach the store's medium; a store's ranged read is
// measured against it.
type Baseline struct {
	// Name names the baseline in the reported ratio, "get/<Name>".
	Name string
	// Read fills buf from the object at key, from offset off.
	Read func(ctx context.Context, key string, off int64, buf []byte) error
}

// BenchmarkRangedGet reads ranges at random offsets of one large blob, the
// access pattern of lazily loaded frames, through st and through base in
// turn, and reports the ratio of their times. Each side draws its offsets
// from its own generator of the same seed, so that neither reads what
// the other just brought into a cache.
func BenchmarkRangedGet(b *testing.B, st store.Store, base Baseline) {
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
			rs := rand.New(rand.NewPCG(1, uint64(length)))
			rb := rand.New(rand.NewPCG(1, uint64(length)))
			buf := make([]byte, length)
			benchratio.Report(b, "get/"+base.Name, func() {
				off := rs.Int64N(size - length + 1)
				rc, err := st.Get(ctx, key, off, length)
				if err != nil {
					b.Fatalf("Get(%d, %d): %v", off, length, err)
				}
				_, err = io.ReadFull(rc, buf)
				rc.Close()
				if err != nil {
					b.Fatalf("read (%d, %d): %v", off, length, err)
				}
			}, func() {
				off := rb.Int64N(size - length + 1)
				if err := base.Read(ctx, key, off, buf); err != nil {
					b.Fatalf("%s (%d, %d): %v", base.Name, off, length, err)
				}
			})
		})
	}
}
