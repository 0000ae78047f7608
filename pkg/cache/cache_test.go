package cache

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/skiff-dev/skiff/internal/benchratio"
	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

func chunk(i, size int) ([]byte, bootstrap.Digest) {
	b := bytes.Repeat([]byte{byte(i), byte(i >> 8), 0x5a}, size/3+1)[:size]
	return b, bootstrap.Sum(b)
}

func mustOpen(t *testing.T, dir string, max int64) *Cache {
	t.Helper()
	c, err := Open(dir, max)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return c
}

func TestPutGetAndReopen(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	var want [][]byte
	for i := range 20 {
		data, d := chunk(i, 1000+i)
		if err := c.Put(d, data); err != nil {
			t.Fatal(err)
		}
		want = append(want, data)
	}
	if _, ok := c.Get(bootstrap.Sum([]byte("absent"))); ok {
		t.Fatal("hit for a chunk never put")
	}
	s := c.Stats()
	if s.Entries != 20 || s.Misses != 1 {
		t.Fatalf("stats %+v, want 20 entries, 1 miss", s)
	}

	// A new process sees the same chunks.
	c2 := mustOpen(t, dir, 0)
	for _, data := range want {
		got, ok := c2.Get(bootstrap.Sum(data))
		if !ok || !bytes.Equal(got, data) {
			t.Fatalf("after reopen: got %d bytes ok=%v, want %d bytes", len(got), ok, len(data))
		}
	}
	s = c2.Stats()
	if s.Hits != 20 || s.Entries != 20 || s.Bytes != c.Stats().Bytes {
		t.Fatalf("reopened stats %+v vs %+v", s, c.Stats())
	}
	// Layout is part of the contract: operators and other tools find chunks there.
	h := bootstrap.Sum(want[0]).Hex()
	if _, err := os.Stat(filepath.Join(dir, "chunks", h[:2], h)); err != nil {
		t.Fatalf("chunk not at DIR/chunks/ab/<hex>: %v", err)
	}
}

func TestEvictionLRU(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 3000)
	a, da := chunk(1, 1000)
	b, db := chunk(2, 1000)
	x, dx := chunk(3, 1000)
	y, dy := chunk(4, 1000)
	for _, p := range []struct {
		d    bootstrap.Digest
		data []byte
	}{{da, a}, {db, b}, {dx, x}} {
		if err := c.Put(p.d, p.data); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := c.Get(da); !ok { // a becomes most recent; b is now oldest
		t.Fatal("miss for a")
	}
	if err := c.Put(dy, y); err != nil {
		t.Fatal(err)
	}
	if c.Has(db) {
		t.Fatal("least recently used chunk b survived eviction")
	}
	if _, err := os.Stat(c.path(db)); !os.IsNotExist(err) {
		t.Fatalf("evicted file still on disk: %v", err)
	}
	for _, d := range []bootstrap.Digest{da, dx, dy} {
		if _, ok := c.Get(d); !ok {
			t.Fatalf("chunk %s evicted, want kept", d)
		}
	}
	s := c.Stats()
	if s.Bytes > 3000 || s.Evictions != 1 || s.Entries != 3 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReopenOrderAndLowerLimit(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	var ds []bootstrap.Digest
	base := time.Now().Add(-time.Hour)
	for i := range 5 {
		data, d := chunk(i, 1000)
		if err := c.Put(d, data); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	// Recency as a previous process left it: chunk 0 newest, chunk 4 oldest.
	for i, d := range ds {
		ts := base.Add(time.Duration(len(ds)-i) * time.Minute)
		if err := os.Chtimes(c.path(d), ts, ts); err != nil {
			t.Fatal(err)
		}
	}
	c2 := mustOpen(t, dir, 2500)
	for i, d := range ds {
		if want := i < 2; c2.Has(d) != want {
			t.Errorf("chunk %d kept=%v, want %v", i, c2.Has(d), want)
		}
		if _, err := os.Stat(c2.path(d)); (err == nil) != (i < 2) {
			t.Errorf("chunk %d file present=%v", i, err == nil)
		}
	}
}

func TestCorruptFileIsMissAndDeleted(t *testing.T) {
	// A process checks a chunk's bytes the first time it reads it, and
	// its length on every read: a flipped byte is caught by the next
	// process (reopen), a truncation by this one too.
	tests := []struct {
		name   string
		reopen bool
		damage func(p string) error
	}{
		{"flipped byte", true, func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 1
			return os.WriteFile(p, b, 0o644)
		}},
		{"truncated", false, func(p string) error { return os.Truncate(p, 10) }},
		{"emptied", false, func(p string) error { return os.Truncate(p, 0) }},
		{"truncated, next process", true, func(p string) error { return os.Truncate(p, 10) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := mustOpen(t, dir, 0)
			data, d := chunk(7, 5000)
			if err := c.Put(d, data); err != nil {
				t.Fatal(err)
			}
			if err := tt.damage(c.path(d)); err != nil {
				t.Fatal(err)
			}
			if tt.reopen {
				c = mustOpen(t, dir, 0)
			}
			if got, ok := c.Get(d); ok {
				t.Fatalf("corrupt chunk served (%d bytes)", len(got))
			}
			if _, err := os.Stat(c.path(d)); !os.IsNotExist(err) {
				t.Fatalf("corrupt file kept: %v", err)
			}
			if s := c.Stats(); s.Corrupt != 1 || s.Entries != 0 || s.Bytes != 0 {
				t.Fatalf("stats %+v", s)
			}
			// The chunk can be cached again.
			if err := c.Put(d, data); err != nil {
				t.Fatal(err)
			}
			if got, ok := c.Get(d); !ok || !bytes.Equal(got, data) {
				t.Fatal("re-put chunk not served")
			}
		})
	}
}

func TestDeletedFileIsMiss(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 0)
	data, d := chunk(1, 100)
	if err := c.Put(d, data); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(c.path(d)); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Get(d); ok {
		t.Fatal("hit for a deleted file")
	}
	if c.Has(d) {
		t.Fatal("deleted file still indexed")
	}
}

func TestOpenRemovesStrays(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	data, d := chunk(1, 100)
	if err := c.Put(d, data); err != nil {
		t.Fatal(err)
	}
	h := d.Hex()
	strays := []string{
		filepath.Join(dir, "chunks", h[:2], tempPrefix+"123"),
		filepath.Join(dir, "chunks", h[:2], "not-a-digest"),
		filepath.Join(dir, "chunks", "zz", h), // wrong fan-out directory
	}
	old := time.Now().Add(-staleTemp - time.Minute)
	for _, p := range strays {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	c2 := mustOpen(t, dir, 0)
	if s := c2.Stats(); s.Entries != 1 {
		t.Fatalf("entries %d, want 1", s.Entries)
	}
	for _, p := range strays {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("stray %s kept", p)
		}
	}
}

// TestOpenKeepsFreshTemp: during a takeover the new process opens the
// cache while the old one still writes to it. Open must leave a temporary
// file that is still being written, so that its writer can rename it into
// place, and remove only those left long enough to be leftovers.
func TestOpenKeepsFreshTemp(t *testing.T) {
	dir := t.TempDir()
	mustOpen(t, dir, 0)
	data, d := chunk(1, 100)
	h := d.Hex()
	fresh := filepath.Join(dir, "chunks", h[:2], tempPrefix+"fresh")
	stale := filepath.Join(dir, "packs", h[:2], tempPrefix+"stale")
	for _, p := range []string{fresh, stale} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-staleTemp - time.Minute)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}

	mustOpen(t, dir, 0)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temporary file kept: %v", err)
	}
	// The other process finishes its write.
	if err := os.Rename(fresh, filepath.Join(dir, "chunks", h[:2], h)); err != nil {
		t.Fatalf("in-flight write lost: %v", err)
	}
	c := mustOpen(t, dir, 0)
	if got, ok := c.Get(d); !ok || !bytes.Equal(got, data) {
		t.Fatalf("chunk written by the other process: %d bytes, ok=%v", len(got), ok)
	}
}

func TestBadOpen(t *testing.T) {
	if _, err := Open(t.TempDir(), -1); err == nil {
		t.Fatal("negative limit accepted")
	}
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	if _, err := Open(f, 0); err == nil {
		t.Fatal("cache under a regular file accepted")
	}
}

func TestTooBigNotStored(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 100)
	data, d := chunk(1, 101)
	if err := c.Put(d, data); err != nil {
		t.Fatal(err)
	}
	if c.Has(d) {
		t.Fatal("chunk larger than the cache was stored")
	}
}

func TestConcurrent(t *testing.T) {
	c := mustOpen(t, t.TempDir(), 20_000)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				data, d := chunk((g*7+i)%30, 1000)
				if err := c.Put(d, data); err != nil {
					errs <- err
					return
				}
				if got, ok := c.Get(d); ok && !bytes.Equal(got, data) {
					errs <- fmt.Errorf("wrong bytes for %s", d)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Bytes > 20_000 {
		t.Fatalf("over limit: %+v", s)
	}
}

func TestMemory(t *testing.T) {
	m := NewMemory(2000)
	a, da := chunk(1, 1000)
	b, db := chunk(2, 1000)
	x, dx := chunk(3, 1000)
	m.Put(da, a)
	m.Put(db, b)
	m.Get(da)
	m.Put(dx, x)
	if _, ok := m.Get(db); ok {
		t.Fatal("least recently used chunk kept")
	}
	if got, ok := m.Get(da); !ok || !bytes.Equal(got, a) {
		t.Fatal("recent chunk lost")
	}
	off := NewMemory(0)
	off.Put(da, a)
	if _, ok := off.Get(da); ok {
		t.Fatal("disabled memory cache held a chunk")
	}
}

// frame builds a decompressed frame of n chunks of size bytes each, and
// returns its digests and the chunks, slices of one buffer.
func frame(first, n, size int) ([]bootstrap.Digest, [][]byte) {
	var buf []byte
	for i := range n {
		c, _ := chunk(first+i, size)
		buf = append(buf, c...)
	}
	ds := make([]bootstrap.Digest, n)
	cs := make([][]byte, n)
	for i := range n {
		cs[i] = buf[i*size : (i+1)*size]
		ds[i] = bootstrap.Sum(cs[i])
	}
	return ds, cs
}

func TestMemoryFrames(t *testing.T) {
	a, ca := frame(10, 4, 250) // 1000 bytes each
	b, cb := frame(20, 4, 250)
	x, cx := frame(30, 4, 250)
	big, cbig := frame(40, 12, 250)
	tests := []struct {
		name string
		run  func(m *Memory)
		held []bootstrap.Digest
		gone []bootstrap.Digest
	}{
		{
			name: "a frame comes whole",
			run:  func(m *Memory) { m.PutFrame(a, ca, 1000) },
			held: a,
		},
		{
			name: "reading one chunk keeps its whole frame",
			run: func(m *Memory) {
				m.PutFrame(a, ca, 1000)
				m.PutFrame(b, cb, 1000)
				m.Get(a[3])
				m.PutFrame(x, cx, 1000)
			},
			held: slices.Concat(a, x),
			gone: b,
		},
		{
			name: "a frame goes whole, not a chunk at a time",
			run: func(m *Memory) {
				m.PutFrame(a, ca, 1000)
				m.PutFrame(b, cb, 1000)
				m.PutFrame(x, cx, 1000)
			},
			held: slices.Concat(b, x),
			gone: a,
		},
		{
			name: "a frame larger than the memory is not held",
			run:  func(m *Memory) { m.PutFrame(big, cbig, 3000) },
			gone: big,
		},
		{
			name: "a chunk held already stays with its own frame",
			run: func(m *Memory) {
				m.PutFrame(a, ca, 1000)
				m.PutFrame(append([]bootstrap.Digest{a[0]}, b[1:]...), append([][]byte{ca[0]}, cb[1:]...), 1000)
				m.PutFrame(x, cx, 1000) // evicts a, and a[0] with it
			},
			held: slices.Concat(b[1:], x),
			gone: a,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMemory(2000)
			tt.run(m)
			for _, d := range tt.held {
				if !m.Has(d) {
					t.Errorf("chunk %s not held", d)
				}
			}
			for _, d := range tt.gone {
				if m.Has(d) {
					t.Errorf("chunk %s still held", d)
				}
			}
		})
	}
	m := NewMemory(2000)
	m.PutFrame(a, ca, 1000)
	for i, d := range a {
		if got, ok := m.Get(d); !ok || !bytes.Equal(got, ca[i]) {
			t.Fatalf("chunk %d of the frame: got %v, %q", i, ok, got)
		}
	}
}

// BenchmarkGetHit reads a chunk the cache holds against reading the same
// bytes from a plain file: what the cache's bookkeeping costs a hit.
func BenchmarkGetHit(b *testing.B) {
	dir := b.TempDir()
	c, err := Open(filepath.Join(dir, "cache"), 0)
	if err != nil {
		b.Fatal(err)
	}
	data, d := chunk(1, 1<<20)
	if err := c.Put(d, data); err != nil {
		b.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, data, 0o644); err != nil {
		b.Fatal(err)
	}
	benchratio.Report(b, "get-hit/read-file", func() {
		if _, ok := c.Get(d); !ok {
			b.Fatal("miss")
		}
	}, func() {
		if _, err := os.ReadFile(plain); err != nil {
			b.Fatal(err)
		}
	})
}
