package lazyfs

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/store/dir"
)

// BenchmarkSequentialRead reads a 64 MiB file once through a fresh mount
// (cold: every chunk comes from a local directory store, zstd-compressed,
// 1 MiB chunks; warm: from the disk cache) and the same bytes from a plain
// local file with its page cache dropped, and reports both throughputs and
// their ratio.
func BenchmarkSequentialRead(b *testing.B) {
	requireFUSE(b)
	const size = 64 << 20
	data := fixture.Text(1, size)
	img, err := fetchtest.Build([]fetchtest.Entry{{Path: "/f", Mode: bootstrap.ModeRegular | 0o644, Data: data}},
		fetchtest.Options{ChunkSize: 1 << 20, Compression: bootstrap.Zstd})
	if err != nil {
		b.Fatal(err)
	}
	st, err := dir.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	if err := img.Upload(context.Background(), st); err != nil {
		b.Fatal(err)
	}
	local := filepath.Join(b.TempDir(), "f")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		b.Fatal(err)
	}
	warmCache, err := cache.Open(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	read := func(p string, drop bool) time.Duration {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if drop {
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
		start := time.Now()
		n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf)
		if err != nil || n != size {
			b.Fatalf("read %s: %d bytes, %v", p, n, err)
		}
		return time.Since(start)
	}
	mountRead := func(c *cache.Cache) time.Duration {
		mnt := b.TempDir()
		srv, err := Mount(context.Background(), mnt, img.Bootstrap, fetch.New(c, fetch.NewStoreSource("store", st)), Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			srv.Unmount()
			srv.Wait()
		}()
		return read(filepath.Join(mnt, "f"), false)
	}
	mountRead(warmCache) // fill the warm cache
	var cold, warm, plain time.Duration
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		cold += mountRead(nil)
		warm += mountRead(warmCache)
		plain += read(local, true)
	}
	mbps := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / (1 << 20) }
	b.ReportMetric(mbps(cold), "cold-MiB/s")
	b.ReportMetric(mbps(warm), "warm-MiB/s")
	b.ReportMetric(mbps(plain), "local-MiB/s")
	b.ReportMetric(mbps(cold)/mbps(plain), "cold/local")
	b.ReportMetric(mbps(warm)/mbps(plain), "warm/local")
}
