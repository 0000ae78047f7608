package cache

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

func testPack(first, n int) []PackedChunk {
	var p []PackedChunk
	for i := first; i < first+n; i++ {
		data, d := chunk(i, 100+i*13)
		p = append(p, PackedChunk{Digest: d, Data: data})
	}
	return p
}

func packIDs(t *testing.T, dir string) []string {
	t.Helper()
	ps, err := filepath.Glob(filepath.Join(dir, "packs", "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// TestPackPutGetReopen: chunks stored as one pack are found one by one,
// by this process and the next, from a single file.
func TestPackPutGetReopen(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	pack := testPack(0, 20)
	if err := c.PutPack(pack); err != nil {
		t.Fatal(err)
	}
	if ps := packIDs(t, dir); len(ps) != 1 {
		t.Fatalf("pack files %v, want one", ps)
	}
	for _, reopen := range []bool{false, true} {
		if reopen {
			c = mustOpen(t, dir, 0)
		}
		for _, ch := range pack {
			if !c.Has(ch.Digest) {
				t.Fatalf("reopen=%v: chunk %s not indexed", reopen, ch.Digest)
			}
			if got, ok := c.Get(ch.Digest); !ok || !bytes.Equal(got, ch.Data) {
				t.Fatalf("reopen=%v: chunk %s: %d bytes, ok=%v", reopen, ch.Digest, len(got), ok)
			}
		}
		if s := c.Stats(); s.Entries != 1 || s.Hits != int64(len(pack)) || s.Corrupt != 0 {
			t.Fatalf("reopen=%v: stats %+v", reopen, s)
		}
	}
	// The same pack again is not written twice.
	if err := c.PutPack(pack); err != nil {
		t.Fatal(err)
	}
	if ps := packIDs(t, dir); len(ps) != 1 {
		t.Fatalf("pack files %v after a second put", ps)
	}
}

// TestDamagedPack: a pack whose data or header was damaged serves none of
// its chunks, is deleted, and its chunks can be stored again.
func TestDamagedPack(t *testing.T) {
	flip := func(at func(size int) int) func(string) error {
		return func(p string) error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[at(len(b))] ^= 1
			return os.WriteFile(p, b, 0o644)
		}
	}
	tests := []struct {
		name    string
		reopen  bool
		damage  func(p string) error
		corrupt int64 // counted as corrupt (a read that got wrong bytes)
	}{
		{"flipped data byte", true, flip(func(n int) int { return n - 1 }), 1},
		{"flipped header byte", true, flip(func(int) int { return 20 }), 0},
		{"bad magic", true, flip(func(int) int { return 0 }), 0},
		{"truncated", false, func(p string) error { return os.Truncate(p, 30) }, 0},
		{"truncated, next process", true, func(p string) error { return os.Truncate(p, 30) }, 0},
		{"deleted", false, os.Remove, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := mustOpen(t, dir, 0)
			pack := testPack(0, 5)
			if err := c.PutPack(pack); err != nil {
				t.Fatal(err)
			}
			ps := packIDs(t, dir)
			if len(ps) != 1 {
				t.Fatalf("pack files %v", ps)
			}
			if err := tt.damage(ps[0]); err != nil {
				t.Fatal(err)
			}
			if tt.reopen {
				c = mustOpen(t, dir, 0)
			}
			last := pack[len(pack)-1]
			if got, ok := c.Get(last.Digest); ok {
				t.Fatalf("damaged pack served %d bytes", len(got))
			}
			for _, ch := range pack {
				if c.Has(ch.Digest) {
					t.Fatalf("chunk %s of a damaged pack still indexed", ch.Digest)
				}
			}
			if _, err := os.Stat(ps[0]); !os.IsNotExist(err) {
				t.Fatalf("damaged pack kept: %v", err)
			}
			if s := c.Stats(); s.Corrupt != tt.corrupt || s.Entries != 0 || s.Bytes != 0 {
				t.Fatalf("stats %+v, want %d corrupt and nothing left", s, tt.corrupt)
			}
			if err := c.PutPack(pack); err != nil {
				t.Fatal(err)
			}
			if got, ok := c.Get(last.Digest); !ok || !bytes.Equal(got, last.Data) {
				t.Fatal("re-put pack not served")
			}
		})
	}
}

// TestStoredAgainBeforeRemoval replays, one step at a time, a Put that
// evicts an entry while another goroutine stores the same entry again
// before the Put has removed the evicted file. The entry stored again
// must keep its file and, for a pack, its chunks' index: otherwise it
// stays counted against the limit with nothing findable.
func TestStoredAgainBeforeRemoval(t *testing.T) {
	pack := testPack(0, 3)
	packSize := int64(len(packHeader(pack)))
	for _, ch := range pack {
		packSize += int64(len(ch.Data))
	}
	same, sameDigest := chunk(50, int(packSize))
	tests := []struct {
		name  string
		store func(c *Cache) error
		want  []PackedChunk // what must be found afterwards
	}{
		{"pack", func(c *Cache) error { return c.PutPack(pack) }, pack},
		{"chunk", func(c *Cache) error { return c.Put(sameDigest, same) }, []PackedChunk{{sameDigest, same}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustOpen(t, t.TempDir(), packSize)
			if err := tt.store(c); err != nil {
				t.Fatal(err)
			}

			// Put of a chunk as large as the cache, up to where it has
			// evicted the entry from the index...
			data, d := chunk(99, int(packSize))
			tmp, err := writeTemp(c.path(d), writeParts(data))
			if err != nil {
				t.Fatal(err)
			}
			c.mu.Lock()
			evicted, err := c.commit(tmp, d, int64(len(data)), chunkEntry)
			c.mu.Unlock()
			if err != nil || len(evicted) != 1 {
				t.Fatalf("commit evicted %v, err %v; want the %s", evicted, err, tt.name)
			}
			// ...the same entry is stored again, evicting the chunk...
			if err := tt.store(c); err != nil {
				t.Fatal(err)
			}
			// ...and the Put removes what it evicted.
			c.removeFiles(evicted)

			if _, err := os.Stat(c.pathOf(evicted[0].key, evicted[0].val)); err != nil {
				t.Fatalf("file stored again was removed: %v", err)
			}
			for _, ch := range tt.want {
				if got, ok := c.Get(ch.Digest); !ok || !bytes.Equal(got, ch.Data) {
					t.Fatalf("chunk %s: %d bytes, ok=%v", ch.Digest, len(got), ok)
				}
			}
			if s := c.Stats(); s.Entries != 1 || s.Bytes != packSize || s.Evictions != 2 {
				t.Fatalf("stats %+v, want the %s alone after 2 evictions", s, tt.name)
			}
		})
	}
}

// TestPacksShareTheLimit: packs are evicted as a whole, in recency order
// with chunks, and a read of any chunk keeps its pack.
func TestPacksShareTheLimit(t *testing.T) {
	dir := t.TempDir()
	a, b := testPack(0, 4), testPack(10, 4)
	size := func(p []PackedChunk) int64 {
		n := int64(len(packHeader(p)))
		for _, ch := range p {
			n += int64(len(ch.Data))
		}
		return n
	}
	single, d := chunk(99, 200)
	c := mustOpen(t, dir, size(a)+size(b)+100)
	for _, p := range [][]PackedChunk{a, b} {
		if err := c.PutPack(p); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := c.Get(a[2].Digest); !ok { // a is now the most recent
		t.Fatal("pack a not served")
	}
	if err := c.Put(d, single); err != nil {
		t.Fatal(err)
	}
	for _, ch := range b {
		if c.Has(ch.Digest) {
			t.Fatalf("chunk of the least recently used pack still indexed")
		}
	}
	for _, ch := range a {
		if got, ok := c.Get(ch.Digest); !ok || !bytes.Equal(got, ch.Data) {
			t.Fatal("chunk of the recently used pack evicted")
		}
	}
	if ps := packIDs(t, dir); len(ps) != 1 {
		t.Fatalf("pack files %v, want only a's", ps)
	}
	if s := c.Stats(); s.Evictions != 1 || s.Bytes != size(a)+int64(len(single)) {
		t.Fatalf("stats %+v", s)
	}
	// Too big for the whole cache: not stored, not an error.
	if err := c.PutPack(testPack(20, 200)); err != nil || c.Has(testPack(20, 1)[0].Digest) {
		t.Fatalf("oversized pack: err %v", err)
	}
	if err := c.PutPack(nil); err == nil {
		t.Fatal("empty pack accepted")
	}
}

// FuzzPackHeader: whatever a pack file holds, Open's header check either
// rejects it or indexes chunks that lie inside the file, without panics
// or allocations beyond the file's own size.
func FuzzPackHeader(f *testing.F) {
	for _, n := range []int{1, 3} {
		p := testPack(0, n)
		var buf bytes.Buffer
		buf.Write(packHeader(p))
		for _, ch := range p {
			buf.Write(ch.Data)
		}
		f.Add(buf.Bytes())
	}
	f.Add([]byte(packMagic + "\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "pack")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		// Name the file after what would be its header, so the fuzzer
		// gets past the name check.
		id := bootstrap.Sum(data)
		if len(data) >= len(packMagic)+4 {
			n := int64(binary.BigEndian.Uint32(data[len(packMagic):]))
			if hl := int64(len(packMagic)+4) + n*int64(packEntrySize); hl <= int64(len(data)) {
				id = bootstrap.Sum(data[:hl])
			}
		}
		refs, err := readPackHeader(p, id, int64(len(data)))
		if err != nil {
			return
		}
		for d, r := range refs {
			if r.pack != id || r.off < 0 || r.size < 0 || r.off+r.size > int64(len(data)) {
				t.Fatalf("chunk %s at [%d,+%d) of a %d-byte pack", d, r.off, r.size, len(data))
			}
		}
	})
}

// TestOpenChunk: a chunk this process has checked is handed out as a file
// and offset, alone or in a pack; one it has not checked is not.
func TestOpenChunk(t *testing.T) {
	dir := t.TempDir()
	c := mustOpen(t, dir, 0)
	single, d := chunk(1, 3000)
	if err := c.Put(d, single); err != nil {
		t.Fatal(err)
	}
	pack := testPack(10, 4)
	if err := c.PutPack(pack); err != nil {
		t.Fatal(err)
	}
	check := func(c *Cache, d bootstrap.Digest, want []byte, ok bool) {
		t.Helper()
		f, off, size, got := c.OpenChunk(d)
		if got != ok {
			t.Fatalf("OpenChunk(%s): ok=%v, want %v", d, got, ok)
		}
		if wn := c.WillNeed(d); wn != ok {
			t.Fatalf("WillNeed(%s) = %v, want %v", d, wn, ok)
		}
		if !ok {
			return
		}
		defer f.Close()
		buf := make([]byte, size)
		if _, err := f.ReadAt(buf, off); err != nil || !bytes.Equal(buf, want) {
			t.Fatalf("chunk %s at [%d,+%d): %v", d, off, size, err)
		}
	}
	check(c, d, single, true)
	check(c, pack[2].Digest, pack[2].Data, true)
	absent, da := chunk(2, 100)
	check(c, da, absent, false)

	// A new process has checked nothing yet; reading a chunk checks it.
	c2 := mustOpen(t, dir, 0)
	check(c2, pack[1].Digest, pack[1].Data, false)
	if _, ok := c2.Get(pack[1].Digest); !ok {
		t.Fatal("packed chunk not served after reopen")
	}
	check(c2, pack[1].Digest, pack[1].Data, true)
}
