package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Small chunks arrive together, a packed frame of them at a time, and
// are stored together, as DIR/packs/ab/<id>: one file per frame instead
// of one per chunk. Creating a file is what costs most when thousands of
// small files arrive at once (the filesystem allocates an inode for
// each), and a reader of one small file soon reads its neighbours. A pack
// starts with a header listing its chunks:
//
//	"skiffpk1" | count (uint32) | count × (digest [32]byte, size uint32) | chunks
//
// all integers big-endian, the chunks concatenated in header order. The
// id is the SHA-256 of the header, so a pack's name vouches for its
// index; each chunk's bytes are checked against its digest the first time
// this process reads it, as for chunk files. A pack is one entry of the
// recency order: reading any of its chunks keeps all of them.

const (
	packMagic = "skiffpk1"
	// maxPackChunks bounds the header a pack may claim, so that a
	// damaged file cannot make Open allocate without limit.
	maxPackChunks = 1 << 16
	packEntrySize = len(bootstrap.Digest{}) + 4
)

// PackedChunk is one chunk of a pack.
type PackedChunk struct {
	Digest bootstrap.Digest
	Data   []byte
}

// packRef is where a chunk lives inside a pack.
type packRef struct {
	pack      bootstrap.Digest
	off, size int64
}

// packHeader returns the header of a pack of chunks.
func packHeader(chunks []PackedChunk) []byte {
	h := make([]byte, 0, len(packMagic)+4+len(chunks)*packEntrySize)
	h = append(h, packMagic...)
	h = binary.BigEndian.AppendUint32(h, uint32(len(chunks)))
	for _, c := range chunks {
		h = append(h, c.Digest[:]...)
		h = binary.BigEndian.AppendUint32(h, uint32(len(c.Data)))
	}
	return h
}

// readPackHeader reads and checks the header of the pack file at p,
// named id, and returns where each chunk is.
func readPackHeader(p string, id bootstrap.Digest, size int64) (map[bootstrap.Digest]packRef, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, len(packMagic)+4)
	if _, err := io.ReadFull(f, head); err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	if string(head[:len(packMagic)]) != packMagic {
		return nil, errors.New("pack header: bad magic")
	}
	n := binary.BigEndian.Uint32(head[len(packMagic):])
	if n == 0 || n > maxPackChunks || int64(len(head))+int64(n)*int64(packEntrySize) > size {
		return nil, fmt.Errorf("pack header: %d chunks in %d bytes", n, size)
	}
	head = append(head, make([]byte, int(n)*packEntrySize)...)
	if _, err := io.ReadFull(f, head[len(packMagic)+4:]); err != nil {
		return nil, fmt.Errorf("pack header: %w", err)
	}
	if bootstrap.Sum(head) != id {
		return nil, errors.New("pack header does not match its name")
	}
	refs := make(map[bootstrap.Digest]packRef, n)
	off := int64(len(head))
	for e := head[len(packMagic)+4:]; len(e) > 0; e = e[packEntrySize:] {
		var d bootstrap.Digest
		copy(d[:], e)
		sz := int64(binary.BigEndian.Uint32(e[len(d):]))
		refs[d] = packRef{pack: id, off: off, size: sz}
		off += sz
	}
	if off != size {
		return nil, fmt.Errorf("pack holds %d bytes, its header %d", size, off)
	}
	return refs, nil
}

// PutPack stores chunks, each verified by the caller to hash to its
// digest, in one file. A pack larger than the whole cache is not stored.
func (c *Cache) PutPack(chunks []PackedChunk) error {
	if len(chunks) == 0 || len(chunks) > maxPackChunks {
		return fmt.Errorf("cache pack: %d chunks", len(chunks))
	}
	header := packHeader(chunks)
	id := bootstrap.Sum(header)
	size := int64(len(header))
	parts := [][]byte{header}
	for _, ch := range chunks {
		size += int64(len(ch.Data))
		parts = append(parts, ch.Data)
	}
	c.mu.Lock()
	if c.idx.has(id) || !c.idx.fits(size) {
		c.idx.get(id)
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	tmp, err := writeTemp(c.pathOf(id, packEntry), writeParts(parts...))
	if err != nil {
		return fmt.Errorf("cache pack %s: %w", id, err)
	}
	refs := make(map[bootstrap.Digest]packRef, len(chunks))
	off := int64(len(header))
	for _, ch := range chunks {
		refs[ch.Digest] = packRef{pack: id, off: off, size: int64(len(ch.Data))}
		off += int64(len(ch.Data))
	}
	c.mu.Lock()
	evicted, err := c.commit(tmp, id, size, packEntry)
	if err == nil {
		c.addPack(id, refs)
		for d := range refs {
			c.verified[d] = true
		}
	}
	c.mu.Unlock()
	c.removeFiles(evicted)
	if err != nil {
		return fmt.Errorf("cache pack %s: %w", id, err)
	}
	return nil
}

// addPack indexes the chunks of pack id. c.mu is held.
func (c *Cache) addPack(id bootstrap.Digest, refs map[bootstrap.Digest]packRef) {
	ds := make([]bootstrap.Digest, 0, len(refs))
	for d, r := range refs {
		c.packed[d] = r
		ds = append(ds, d)
	}
	c.packs[id] = ds
}

// forgetPack drops the index of pack id's chunks. c.mu is held.
func (c *Cache) forgetPack(id bootstrap.Digest) {
	for _, d := range c.packs[id] {
		if r, ok := c.packed[d]; ok && r.pack == id {
			delete(c.packed, d)
			delete(c.verified, d)
		}
	}
	delete(c.packs, id)
}

// getPacked returns chunk d from the pack holding it; see Get. c.mu is
// held on entry and released on return.
func (c *Cache) getPacked(d bootstrap.Digest, r packRef) ([]byte, bool) {
	c.idx.use(r.pack)
	checked := c.verified[d]
	c.mu.Unlock()

	p := c.pathOf(r.pack, packEntry)
	data := make([]byte, r.size)
	f, err := os.Open(p)
	if err == nil {
		_, err = f.ReadAt(data, r.off)
		f.Close()
	}
	if err == nil && (checked || bootstrap.Sum(data) == d) {
		c.hit(p, d)
		return data, true
	}
	// A damaged pack goes as a whole: which of its chunks are still
	// sound is not worth finding out.
	c.mu.Lock()
	c.idx.remove(r.pack)
	c.forgetPack(r.pack)
	c.stats.Misses++
	if err == nil {
		c.stats.Corrupt++
	}
	// Under c.mu, for the reason removeFiles gives.
	_ = os.Remove(p)
	c.mu.Unlock()
	return nil, false
}
