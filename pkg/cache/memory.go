package cache

import (
	"sync"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Memory holds recently used verified chunks in memory, in front of the
// disk cache: the kernel reads a file in requests much smaller than a chunk,
// and without it every request would re-read and re-hash the whole chunk.
// Chunks are shared with callers, who must not modify them.
type Memory struct {
	mu  sync.Mutex
	idx *lru[[]byte]
}

// NewMemory returns a memory cache holding at most maxBytes of chunks; with
// maxBytes <= 0 it holds nothing.
func NewMemory(maxBytes int64) *Memory {
	return &Memory{idx: newLRU[[]byte](maxBytes)}
}

// Get returns the chunk d if it is held.
func (m *Memory) Get(d bootstrap.Digest) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.idx.get(d)
}

// Has reports whether d is held, without making it recently used.
func (m *Memory) Has(d bootstrap.Digest) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.idx.has(d)
}

// Put holds data, already verified to hash to d, evicting the least
// recently used chunks beyond the limit.
func (m *Memory) Put(d bootstrap.Digest, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.idx.max > 0 && m.idx.fits(int64(len(data))) {
		m.idx.add(d, int64(len(data)), data)
	}
}
