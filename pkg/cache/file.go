package cache

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Whole files, assembled from verified chunks, live beside the chunks as
// DIR/files/ab/<id>: the kernel can read such a file directly (FUSE
// passthrough), which no per-chunk layout allows. They count against the
// same size limit and recency order as chunks. A file cannot be checked
// on every read, since the kernel reads it without asking; instead it is
// checked the first time this process opens it, and written only through
// PutFile.

// OpenFile returns the whole file filed under id, read-only. The first
// open in this process passes the file to verify, which must read it
// through and report any mismatch; a file that fails is deleted and the
// call reports a miss, as Get does for a corrupt chunk.
func (c *Cache) OpenFile(id bootstrap.Digest, verify func(*os.File) error) (*os.File, bool) {
	c.mu.Lock()
	k, ok := c.idx.get(id)
	checked := c.verified[id]
	c.mu.Unlock()
	if !ok || k != fileEntry {
		return nil, false
	}
	p := c.pathOf(id, fileEntry)
	f, err := os.Open(p)
	if err == nil && !checked {
		err = verify(f)
		if err == nil {
			_, err = f.Seek(0, io.SeekStart)
		}
		if err != nil {
			f.Close()
			c.mu.Lock()
			c.stats.Corrupt++
			c.mu.Unlock()
		}
	}
	if err != nil {
		c.mu.Lock()
		c.idx.remove(id)
		delete(c.verified, id)
		// Under c.mu, for the reason removeFiles gives.
		_ = os.Remove(p)
		c.mu.Unlock()
		return nil, false
	}
	now := time.Now()
	_ = os.Chtimes(p, now, now)
	c.mu.Lock()
	c.verified[id] = true
	c.mu.Unlock()
	return f, true
}

// FileChecked reports whether a whole file is filed under id and this
// process has checked it (or written it), so that OpenFile costs no read
// of it.
func (c *Cache) FileChecked(id bootstrap.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, ok := c.idx.items[id]
	return ok && k.Value.(*diskEntry).val == fileEntry && c.verified[id]
}

// HasFile reports whether a whole file is filed under id.
func (c *Cache) HasFile(id bootstrap.Digest) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, ok := c.idx.items[id]
	return ok && k.Value.(*diskEntry).val == fileEntry
}

// PutFile files a whole file of size bytes under id, written by write
// from content the caller has verified. A file larger than the whole
// cache is not stored. write must produce exactly size bytes.
func (c *Cache) PutFile(id bootstrap.Digest, size int64, write func(io.Writer) error) error {
	c.mu.Lock()
	if c.idx.has(id) || !c.idx.fits(size) {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	tmp, err := writeTemp(c.pathOf(id, fileEntry), func(w io.Writer) error {
		cw := &countingWriter{w: w}
		if err := write(cw); err != nil {
			return err
		}
		if cw.n != size {
			return fmt.Errorf("wrote %d bytes, want %d", cw.n, size)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cache file %s: %w", id, err)
	}
	c.mu.Lock()
	evicted, err := c.commit(tmp, id, size, fileEntry)
	if err == nil {
		// Written from verified chunks by this process.
		c.verified[id] = true
	}
	c.mu.Unlock()
	c.removeFiles(evicted)
	if err != nil {
		return fmt.Errorf("cache file %s: %w", id, err)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.n += int64(n)
	return n, err
}
