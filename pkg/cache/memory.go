package cache

import (
	"sync"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Memory holds recently used verified chunks in memory, in front of the
// disk cache: the kernel reads a file in requests much smaller than a chunk,
// and without it every request would re-read and re-hash the whole chunk.
// Chunks are shared with callers, who must not modify them.
//
// The chunks of one decompressed frame are held as one entry (PutFrame).
// They are slices of the frame's buffer: copying each small chunk out of
// its frame cost a cold read of small files a sixth of its time in the
// fetch path, and a chunk held alone would keep the whole buffer alive
// unaccounted. As one entry the frame counts its whole buffer and comes
// and goes whole.
type Memory struct {
	mu     sync.Mutex
	idx    *lru[uint64, []bootstrap.Digest] // entries: the chunks they hold
	chunks map[bootstrap.Digest]memChunk
	next   uint64 // the next entry's key
}

// memChunk is a held chunk and the entry holding it.
type memChunk struct {
	entry uint64
	data  []byte
}

// NewMemory returns a memory cache holding at most maxBytes of chunks; with
// maxBytes <= 0 it holds nothing.
func NewMemory(maxBytes int64) *Memory {
	return &Memory{idx: newLRU[uint64, []bootstrap.Digest](maxBytes), chunks: map[bootstrap.Digest]memChunk{}}
}

// Get returns the chunk d if it is held, and makes its entry the most
// recently used.
func (m *Memory) Get(d bootstrap.Digest) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.chunks[d]
	if !ok {
		return nil, false
	}
	m.idx.use(c.entry)
	return c.data, true
}

// Has reports whether d is held, without making it recently used.
func (m *Memory) Has(d bootstrap.Digest) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.chunks[d]
	return ok
}

// Put holds data, already verified to hash to d, evicting the least
// recently used entries beyond the limit.
func (m *Memory) Put(d bootstrap.Digest, data []byte) {
	m.PutFrame([]bootstrap.Digest{d}, [][]byte{data}, int64(len(data)))
}

// PutFrame holds chunks ds, already verified, whose data are slices of
// one buffer of size bytes (a decompressed frame), as one entry of that
// size. Chunks already held stay where they are; the entry holds the
// others.
func (m *Memory) PutFrame(ds []bootstrap.Digest, data [][]byte, size int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.idx.max <= 0 || !m.idx.fits(size) {
		return
	}
	var held []bootstrap.Digest
	for i, d := range ds {
		if _, ok := m.chunks[d]; !ok {
			held = append(held, d)
			m.chunks[d] = memChunk{entry: m.next, data: data[i]}
		}
	}
	if len(held) == 0 {
		return
	}
	for _, ev := range m.idx.add(m.next, size, held) {
		for _, d := range ev.val {
			delete(m.chunks, d)
		}
	}
	m.next++
}
