package lazyfs

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/fixture"
	"github.com/skiff-dev/skiff/internal/testenv"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/fetch"
	"github.com/skiff-dev/skiff/pkg/fetch/fetchtest"
	"github.com/skiff-dev/skiff/pkg/store/s3"
)

// TestStoreOutage: a lazy mount outlives an outage of the MinIO it reads
// from. While MinIO is down, a file not yet fetched fails with EIO rather
// than hanging its reader, and a file read before still reads; nothing is
// lost or poisoned: once MinIO is back, the file that failed reads its
// right bytes.
func TestStoreOutage(t *testing.T) {
	for _, mode := range []string{"tree", "image"} {
		t.Run(mode, func(t *testing.T) { testStoreOutage(t, mode == "image") })
	}
}

func testStoreOutage(t *testing.T, image bool) {
	requireFUSE(t)
	if image && os.Geteuid() != 0 {
		t.Skip("image mode mounts EROFS, which needs root")
	}
	ctx := context.Background()
	m := testenv.StartMinIO(t)
	st, err := s3.New(ctx, s3.Config{Endpoint: m.Endpoint, Bucket: m.Bucket(t, "skiff"), AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	// The large file lies far from the small one in either layout, so
	// that no readahead of the small one fetches it.
	files := map[string][]byte{"/small": fixture.Text(1, 20<<10), "/large": fixture.Random(2, 12<<20)}
	img, err := fetchtest.Build([]fetchtest.Entry{
		{Path: "/", Mode: bootstrap.ModeDir | 0o755},
		{Path: "/small", Mode: bootstrap.ModeRegular | 0o644, Data: files["/small"]},
		{Path: "/large", Mode: bootstrap.ModeRegular | 0o644, Data: files["/large"]},
	}, fetchtest.Options{ChunkSize: chunkSize, Compression: bootstrap.Zstd})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.Upload(ctx, st); err != nil {
		t.Fatal(err)
	}
	c, err := cache.Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	if image {
		if opts.Image, err = erofs.Build(img.Bootstrap); err != nil {
			t.Fatal(err)
		}
		opts.ImageDir = t.TempDir()
	}
	f := fetch.New(c, []fetch.Source{fetch.NewStoreSource("store", st)})
	t.Cleanup(f.Flush) // chunks wait for the disk cache; written before its directory goes
	mnt := t.TempDir()
	srv, err := Mount(ctx, mnt, img.Bootstrap, f, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Unmount()
		srv.Wait()
	})
	read := func(p string) ([]byte, error) {
		// A reader that hangs fails the test rather than the run.
		type result struct {
			data []byte
			err  error
		}
		done := make(chan result, 1)
		go func() {
			data, err := os.ReadFile(mnt + p)
			done <- result{data, err}
		}()
		select {
		case r := <-done:
			return r.data, r.err
		case <-time.After(2 * time.Minute):
			t.Fatalf("read of %s still blocked after 2 minutes", p)
			return nil, nil
		}
	}
	if got, err := read("/small"); err != nil || !bytes.Equal(got, files["/small"]) {
		t.Fatalf("read /small: %d bytes, %v", len(got), err)
	}

	m.Stop()
	start := time.Now()
	got, err := read("/large")
	t.Logf("read while the store is down failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read /large while the store is down: %d bytes, %v; want EIO", len(got), err)
	}
	if !bytes.HasPrefix(files["/large"], got) {
		t.Fatal("read during the outage returned bytes that are not the file's")
	}
	if got, err := read("/small"); err != nil || !bytes.Equal(got, files["/small"]) {
		t.Fatalf("read /small, fetched before the outage, while the store is down: %d bytes, %v", len(got), err)
	}

	m.Start()
	// A frame that failed fails at once for a second after (the
	// fetcher's failMemo), counted from the last failure, which a
	// readahead request still in flight may have met while MinIO was
	// restarting: the file reads again within a few seconds.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := read("/large")
		if err == nil {
			if !bytes.Equal(got, files["/large"]) {
				t.Fatalf("read /large after the outage: %d bytes that are not the file's", len(got))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("read /large after the outage: %d bytes, %v", len(got), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
