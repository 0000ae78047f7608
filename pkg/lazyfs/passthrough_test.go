package lazyfs

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
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

// uploaded builds entries into a real directory store.
func uploaded(t testing.TB, entries []fetchtest.Entry, opts fetchtest.Options) (*fetchtest.Image, *dir.Dir) {
	t.Helper()
	img, err := fetchtest.Build(entries, opts)
	if err != nil {
		t.Fatal(err)
	}
	st, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Upload(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	return img, st
}

// countingFetcher counts the chunk reads that reach the mount.
type countingFetcher struct {
	*fetch.Fetcher
	reads atomic.Int64
}

func (c *countingFetcher) ReadChunk(ctx context.Context, b *bootstrap.Bootstrap, idx uint32) ([]byte, error) {
	c.reads.Add(1)
	return c.Fetcher.ReadChunk(ctx, b, idx)
}

// readUncached reads p through with its page cache dropped first, so every
// byte comes from the mount or, in passthrough mode, the backing file.
func readUncached(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return data
}

func TestPassthrough(t *testing.T) {
	requireFUSE(t)
	if os.Geteuid() != 0 {
		t.Skip("FUSE passthrough needs root (CAP_SYS_ADMIN)")
	}
	big := fixture.Text(9, 3<<20+123)
	img, st := uploaded(t, []fetchtest.Entry{
		{Path: "/big", Mode: bootstrap.ModeRegular | 0o644, Data: big},
		{Path: "/small", Mode: bootstrap.ModeRegular | 0o644, Data: []byte("small file\n")},
	}, fetchtest.Options{ChunkSize: 1 << 20, Compression: bootstrap.Zstd})
	for _, tt := range []struct {
		name        string
		passthrough bool
	}{{"on", true}, {"off", false}} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			c, err := cache.Open(t.TempDir(), 0)
			if err != nil {
				t.Fatal(err)
			}
			cf := &countingFetcher{Fetcher: fetch.New(c, []fetch.Source{fetch.NewStoreSource("store", st)})}
			t.Cleanup(cf.Flush)
			mnt := t.TempDir()
			srv, err := Mount(ctx, mnt, img.Bootstrap, cf, Options{Passthrough: tt.passthrough})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				srv.Unmount()
				srv.Wait()
			}()
			p := filepath.Join(mnt, "big")
			// Opened before the file is local: served through the mount,
			// and kept open while the file becomes local.
			first, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer first.Close()
			if got, err := io.ReadAll(first); err != nil || !bytes.Equal(got, big) {
				t.Fatalf("first read: %d bytes, %v", len(got), err)
			}
			ino := mustLookup(t, img.Bootstrap, "/big")
			if err := cf.Materialize(ctx, img.Bootstrap, ino); err != nil {
				t.Fatal(err)
			}
			// The kernel refuses a passthrough open beside a cached one;
			// the mount must not offer it.
			if got := readUncached(t, p); !bytes.Equal(got, big) {
				t.Fatalf("read beside an open handle: %d bytes", len(got))
			}
			first.Close()

			// The kernel releases the first handle after close returns;
			// until the mount hears of it, opens are served by the mount.
			var reads int64
			for try := 0; try < 100; try++ {
				before := cf.reads.Load()
				if got := readUncached(t, p); !bytes.Equal(got, big) {
					t.Fatalf("read of a local file: %d bytes", len(got))
				}
				if reads = cf.reads.Load() - before; reads == 0 || !tt.passthrough {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if tt.passthrough && reads != 0 {
				t.Fatalf("passthrough: %d chunk reads reached the mount", reads)
			}
			if !tt.passthrough && reads == 0 {
				t.Fatal("without passthrough, no chunk read reached the mount")
			}
			if got := readUncached(t, filepath.Join(mnt, "small")); string(got) != "small file\n" {
				t.Fatalf("small file: %q", got)
			}
		})
	}
}
