// Package cache keeps verified, decompressed chunks keyed by their digest,
// so a chunk crosses the network once per node no matter how many files,
// images or mounts share it. The disk cache survives restarts and never
// trusts its own files: every read is checked against the digest it is
// filed under, and a file that fails is deleted and reported as a miss.
package cache

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Stats counts what a cache holds and how it has been used.
type Stats struct {
	Entries   int   `json:"entries"`
	Bytes     int64 `json:"bytes"`
	MaxBytes  int64 `json:"maxBytes"`
	Hits      int64 `json:"hits"`
	Misses    int64 `json:"misses"`
	Evictions int64 `json:"evictions"`
	Corrupt   int64 `json:"corrupt"` // files deleted because their content did not match
}

// Cache is an on-disk chunk cache laid out as DIR/chunks/ab/<hex> (with
// packs of small chunks, see PutPack, and whole files assembled from
// chunks, see OpenFile), bounded
// by total chunk bytes with least-recently-used eviction. File modification
// times carry the recency across restarts: Open orders by them, and a hit
// touches the file. It is safe for concurrent use, including by several
// processes sharing DIR, since every file is written to a temporary name
// and renamed into place.
type Cache struct {
	dir string

	mu       sync.Mutex
	idx      *diskIndex
	stats    Stats
	verified map[bootstrap.Digest]bool // chunks and whole files checked by this process
	// packed finds the chunks stored in packs (see PutPack); packs lists
	// each pack's chunks.
	packed map[bootstrap.Digest]packRef
	packs  map[bootstrap.Digest][]bootstrap.Digest
}

// kind tells what an index entry is: chunks, packs of small chunks and
// whole files share one size limit and one recency order.
type kind uint8

const (
	chunkEntry kind = iota
	fileEntry
	packEntry
)

var kinds = []kind{chunkEntry, fileEntry, packEntry}

// diskIndex orders the disk cache's entries, named by digest, by recency.
type (
	diskIndex = lru[bootstrap.Digest, kind]
	diskEntry = lruEntry[bootstrap.Digest, kind]
)

// subdir is where entries of each kind live under the cache directory.
func (k kind) subdir() string {
	switch k {
	case fileEntry:
		return "files"
	case packEntry:
		return "packs"
	}
	return "chunks"
}

// tempPrefix marks files being written.
const tempPrefix = ".tmp-"

// staleTemp is how long a temporary file goes unmodified before Open takes
// it for the leftover of an interrupted write. Open cannot delete every
// temporary file it finds: during a takeover the previous mount process
// still writes into the directory this one opens, and would find its
// renames failing. Age by mtime is what tells them apart: every write
// moves it, a write takes well under this, and it means the same to every
// process sharing the directory. The writer's pid in the name would be
// exact, but a new process in another pid namespace (a new container) can
// see neither the old pid nor whether a match is a recycled one.
const staleTemp = 10 * time.Minute

// Open opens or creates the cache in dir, limited to maxBytes of chunk data
// (0: unlimited), and rebuilds its index by scanning dir.
func Open(dir string, maxBytes int64) (*Cache, error) {
	if maxBytes < 0 {
		return nil, fmt.Errorf("open cache %s: negative size limit %d", dir, maxBytes)
	}
	type found struct {
		d     bootstrap.Digest
		k     kind
		size  int64
		mtime time.Time
		refs  map[bootstrap.Digest]packRef // of a pack
	}
	var files []found
	for _, k := range kinds {
		root := filepath.Join(dir, k.subdir())
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, fmt.Errorf("open cache: %w", err)
		}
		err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() {
				return nil
			}
			d, ok := parseName(root, p)
			info, ierr := e.Info()
			if errors.Is(ierr, fs.ErrNotExist) {
				// Renamed into place or removed by another process
				// since the directory was read.
				return nil
			}
			if ierr == nil && strings.HasPrefix(e.Name(), tempPrefix) && time.Since(info.ModTime()) < staleTemp {
				// Perhaps another process's write in progress.
				return nil
			}
			if !ok || ierr != nil || !info.Mode().IsRegular() {
				// Interrupted writes and strays: nothing can ever look them up.
				if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
					return rerr
				}
				return nil
			}
			var refs map[bootstrap.Digest]packRef
			if k == packEntry {
				if refs, ierr = readPackHeader(p, d, info.Size()); ierr != nil {
					// Damaged: none of its chunks can be found.
					if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
						return rerr
					}
					return nil
				}
			}
			files = append(files, found{d, k, info.Size(), info.ModTime(), refs})
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("open cache %s: scan: %w", dir, err)
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].mtime.Before(files[j].mtime) })
	c := &Cache{
		dir:      dir,
		idx:      newLRU[bootstrap.Digest, kind](maxBytes),
		verified: map[bootstrap.Digest]bool{},
		packed:   map[bootstrap.Digest]packRef{},
		packs:    map[bootstrap.Digest][]bootstrap.Digest{},
	}
	c.stats.MaxBytes = maxBytes
	var evicted []diskEntry
	for _, f := range files {
		// Oldest first, so the newest end up most recent and a limit
		// lowered since the last run trims the oldest.
		ev := c.idx.add(f.d, f.size, f.k)
		c.forget(ev)
		evicted = append(evicted, ev...)
		if f.k == packEntry {
			c.addPack(f.d, f.refs)
		}
	}
	c.removeFiles(evicted)
	return c, nil
}

// parseName accepts only root/ab/<64 hex> with ab the first two characters.
func parseName(root, p string) (bootstrap.Digest, bool) {
	var d bootstrap.Digest
	rel, err := filepath.Rel(root, p)
	if err != nil {
		return d, false
	}
	dir, name := filepath.Split(rel)
	if len(name) != 64 || dir != name[:2]+string(filepath.Separator) || strings.ToLower(name) != name {
		return d, false
	}
	if _, err := hex.Decode(d[:], []byte(name)); err != nil {
		return d, false
	}
	return d, true
}

func (c *Cache) path(d bootstrap.Digest) string { return c.pathOf(d, chunkEntry) }

func (c *Cache) pathOf(d bootstrap.Digest, k kind) string {
	h := d.Hex()
	return filepath.Join(c.dir, k.subdir(), h[:2], h)
}

// Dir returns the directory the cache lives in.
func (c *Cache) Dir() string { return c.dir }

// Has reports whether chunk d is indexed, on its own or in a pack, without
// reading or verifying it.
func (c *Cache) Has(d bootstrap.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, packed := c.packed[d]
	return packed || c.idx.has(d)
}

// Get returns the chunk with digest d. Its length is checked on every
// read and its bytes against d the first time this process reads it (or
// wrote it, from verified data): hashing every read would cap a cached
// sequential read at the speed of SHA-256, and a file that was sound an
// instant ago changes only if someone with the agent's own privileges
// writes to the cache. A file that fails is deleted and the call reports
// a miss.
func (c *Cache) Get(d bootstrap.Digest) ([]byte, bool) {
	c.mu.Lock()
	e, ok := c.idx.use(d)
	if !ok || e.val != chunkEntry {
		if r, ok := c.packed[d]; ok {
			return c.getPacked(d, r)
		}
		c.stats.Misses++
		c.mu.Unlock()
		return nil, false
	}
	checked := c.verified[d]
	c.mu.Unlock()

	p := c.path(d)
	data, err := os.ReadFile(p)
	if err == nil && int64(len(data)) == e.size && (checked || bootstrap.Sum(data) == d) {
		c.hit(p, d)
		return data, true
	}
	c.mu.Lock()
	c.idx.remove(d)
	delete(c.verified, d)
	c.stats.Misses++
	if err == nil {
		c.stats.Corrupt++
		// Under c.mu, for the reason removeFiles gives.
		_ = os.Remove(p)
	}
	c.mu.Unlock()
	return nil, false
}

// hit records a sound read of chunk d from file p.
func (c *Cache) hit(p string, d bootstrap.Digest) {
	now := time.Now()
	// Recency for the next Open; losing a touch only ages the entry.
	_ = os.Chtimes(p, now, now)
	c.mu.Lock()
	c.stats.Hits++
	c.verified[d] = true
	c.mu.Unlock()
}

// Put stores data, which the caller has verified to hash to d. A chunk
// larger than the whole cache is not stored.
func (c *Cache) Put(d bootstrap.Digest, data []byte) error {
	c.mu.Lock()
	if c.idx.has(d) || !c.idx.fits(int64(len(data))) {
		c.idx.get(d)
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()

	tmp, err := writeTemp(c.path(d), writeParts(data))
	if err != nil {
		return fmt.Errorf("cache put %s: %w", d, err)
	}
	c.mu.Lock()
	evicted, err := c.commit(tmp, d, int64(len(data)), chunkEntry)
	if err == nil {
		c.verified[d] = true
	}
	c.mu.Unlock()
	c.removeFiles(evicted)
	if err != nil {
		return fmt.Errorf("cache put %s: %w", d, err)
	}
	return nil
}

// writeTemp writes a temporary file beside p with write and returns its
// name, for commit to rename into place.
func writeTemp(p string, write func(io.Writer) error) (string, error) {
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return "", err
	}
	err = write(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if rerr := os.Remove(f.Name()); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
		return "", err
	}
	return f.Name(), nil
}

// writeParts writes the concatenation of parts.
func writeParts(parts ...[]byte) func(io.Writer) error {
	return func(w io.Writer) error {
		for _, b := range parts {
			if _, err := w.Write(b); err != nil {
				return err
			}
		}
		return nil
	}
}

// commit renames the complete temporary file tmp into place as entry d
// and indexes it. It returns the entries evicted to make room, already
// forgotten (see forget), for the caller to pass to removeFiles once it
// has unlocked. c.mu is held: renaming under it is what lets removeFiles
// tell an evicted file from a new one at the same path.
func (c *Cache) commit(tmp string, d bootstrap.Digest, size int64, k kind) ([]diskEntry, error) {
	if err := os.Rename(tmp, c.pathOf(d, k)); err != nil {
		_ = os.Remove(tmp)
		return nil, err
	}
	evicted := c.idx.add(d, size, k)
	c.forget(evicted)
	return evicted, nil
}

// forget drops what the cache knows of entries just evicted from the
// index, in the same critical section: once c.mu is released the same id
// may be stored again, and its new pack index must not be wiped. c.mu is
// held.
func (c *Cache) forget(evicted []diskEntry) {
	c.stats.Evictions += int64(len(evicted))
	for _, e := range evicted {
		delete(c.verified, e.key)
		if e.val == packEntry {
			c.forgetPack(e.key)
		}
	}
}

// removeFiles deletes the files of evicted entries, each under c.mu and
// only while its id is still not indexed. Put, PutPack and PutFile rename
// a new file into the same path under c.mu (see commit), so an unlink
// outside it could take a file stored again since the eviction and leave
// its entry counted but unreadable. An unlink is cheap next to the write
// that caused the eviction, and locking once per file lets readers in
// between when a large file evicts thousands of chunks.
func (c *Cache) removeFiles(evicted []diskEntry) {
	for _, e := range evicted {
		c.mu.Lock()
		if !c.indexed(e.key, e.val) {
			_ = os.Remove(c.pathOf(e.key, e.val))
		}
		c.mu.Unlock()
	}
}

// indexed reports whether d is in the index as an entry of kind k,
// without marking it used. c.mu is held.
func (c *Cache) indexed(d bootstrap.Digest, k kind) bool {
	e, ok := c.idx.items[d]
	return ok && e.Value.(*diskEntry).val == k
}

// Stats returns current counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = c.idx.len()
	s.Bytes = c.idx.bytes
	return s
}

// OpenChunk opens the file holding chunk d, on its own or in a pack, and
// returns it with the chunk's offset and size in it, so the kernel can
// move the bytes on without this process reading them. Only chunks this
// process has already checked (read or written) qualify, since the bytes
// are not read here; a file is trusted after that exactly as whole files
// are (see OpenFile). The caller closes the file.
func (c *Cache) OpenChunk(d bootstrap.Digest) (f *os.File, off, size int64, ok bool) {
	p, off, size, ok := c.locate(d)
	if !ok {
		return nil, 0, 0, false
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, 0, false
	}
	c.mu.Lock()
	c.stats.Hits++
	c.mu.Unlock()
	return f, off, size, true
}

// WillNeed asks the kernel to read chunk d into the page cache in the
// background, for a reader about to want it, when d is on disk and checked
// by this process (see OpenChunk). It reports whether it asked.
func (c *Cache) WillNeed(d bootstrap.Digest) bool {
	p, off, size, ok := c.locate(d)
	if !ok {
		return false
	}
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	return unix.Fadvise(int(f.Fd()), off, size, unix.FADV_WILLNEED) == nil
}

// Checked reports whether this process has checked chunk d (see Get), so
// that reading its file hands out the right bytes.
func (c *Cache) Checked(d bootstrap.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.verified[d]
}

// locate returns the file, offset and size of chunk d, if this process has
// checked it, and marks it used.
func (c *Cache) locate(d bootstrap.Digest) (p string, off, size int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.verified[d] {
		return "", 0, 0, false
	}
	if e, ok := c.idx.use(d); ok && e.val == chunkEntry {
		return c.path(d), 0, e.size, true
	}
	if r, ok := c.packed[d]; ok {
		c.idx.use(r.pack)
		return c.pathOf(r.pack, packEntry), r.off, r.size, true
	}
	return "", 0, 0, false
}
