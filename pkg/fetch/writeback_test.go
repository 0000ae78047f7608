package fetch

import (
	"testing"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
)

// TestWriteback: a frame's chunks reach the disk cache only once no frame
// has arrived for writeQuiet, are read from memory until then (the memory
// tier is off here), go at once past maxPendingBytes, and Flush writes
// them whatever the wait.
func TestWriteback(t *testing.T) {
	img, files := testImage(t, bootstrap.Zstd)
	b := img.Bootstrap
	onDisk := func(c *cache.Cache) int {
		n := 0
		for _, ch := range b.Chunks {
			if !ch.Zero() && c.Has(ch.Digest) {
				n++
			}
		}
		return n
	}
	setup := func(t *testing.T, quiet time.Duration, most int64) (*Fetcher, *cache.Cache) {
		t.Helper()
		oldQuiet, oldMost := writeQuiet, maxPendingBytes
		writeQuiet, maxPendingBytes = quiet, most
		t.Cleanup(func() { writeQuiet, maxPendingBytes = oldQuiet, oldMost })
		c, err := cache.Open(t.TempDir(), 0)
		if err != nil {
			t.Fatal(err)
		}
		f := New(c, []Source{NewStoreSource("store", upload(t, img))})
		f.mem = cache.NewMemory(0)
		t.Cleanup(f.Flush)
		return f, c
	}

	t.Run("quiet", func(t *testing.T) {
		f, c := setup(t, 2*time.Second, 1<<30)
		checkFiles(t, f, b, files)
		if n := onDisk(c); n != 0 {
			t.Fatalf("%d chunks written while frames were still arriving", n)
		}
		// From memory: no source is asked again.
		before := f.Stats().Sources[0].Requests
		checkFiles(t, f, b, files)
		if after := f.Stats().Sources[0].Requests; after != before {
			t.Fatalf("chunks waiting for the disk were fetched again: %d requests, then %d", before, after)
		}
		deadline := time.Now().Add(10 * time.Second)
		for onDisk(c) == 0 {
			if time.Now().After(deadline) {
				t.Fatal("nothing written once quiet")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("bound", func(t *testing.T) {
		f, c := setup(t, time.Hour, 0)
		checkFiles(t, f, b, files)
		deadline := time.Now().Add(5 * time.Second)
		for f.pending.has(b.Chunks[0].Digest) || onDisk(c) == 0 {
			if time.Now().After(deadline) {
				t.Fatal("writes past maxPendingBytes waited for quiet")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})

	t.Run("flush", func(t *testing.T) {
		f, c := setup(t, time.Hour, 1<<30)
		checkFiles(t, f, b, files)
		f.Flush()
		want := 0
		seen := map[bootstrap.Digest]bool{}
		for _, ch := range b.Chunks {
			if !ch.Zero() && !seen[ch.Digest] {
				seen[ch.Digest] = true
				want++
			}
		}
		if n := onDisk(c); n != len(seen) {
			t.Fatalf("after Flush %d of %d chunks on disk", n, want)
		}
		// A new process finds them all.
		c2, err := cache.Open(c.Dir(), 0)
		if err != nil {
			t.Fatal(err)
		}
		checkFiles(t, New(c2, nil), b, files)
	})
}
