package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// ErrNotLocal means a file cannot be assembled because some of its
// chunks are not in the local caches.
var ErrNotLocal = errors.New("file is not entirely in the local cache")

// FileID names the content of regular file ino of b by its size and chunk
// digests, so that identical files of any image share one backing file.
func FileID(b *bootstrap.Bootstrap, ino uint32) bootstrap.Digest {
	h := sha256.New()
	var size [8]byte
	binary.BigEndian.PutUint64(size[:], uint64(b.Inodes[ino].Size))
	h.Write([]byte("skiff file v1\x00"))
	h.Write(size[:])
	for _, ci := range b.FileChunks(ino) {
		c := b.Chunks[ci]
		binary.BigEndian.PutUint64(size[:], uint64(c.Size))
		h.Write(size[:])
		h.Write(c.Digest[:])
	}
	var d bootstrap.Digest
	h.Sum(d[:0])
	return d
}

// BackingFile returns an open, read-only file holding exactly the content
// of regular file ino of b, when the disk cache holds it whole and this
// process has checked it, so the kernel can read it without a round trip
// through the mount (FUSE passthrough). Otherwise the file is checked, or
// assembled when every chunk is local, in the background for a later
// open; ok is false either way. The check reads the whole file, which
// must not hold up an open: a model of gigabytes is read through the
// mount meanwhile, not waited for.
func (f *Fetcher) BackingFile(ctx context.Context, b *bootstrap.Bootstrap, ino uint32) (*os.File, bool) {
	if f.cache == nil || int(ino) >= len(b.Inodes) || b.Inodes[ino].Type() != bootstrap.ModeRegular {
		return nil, false
	}
	id := FileID(b, ino)
	check := func(file *os.File) error { return checkFile(b, ino, file) }
	if f.cache.HasFile(id) {
		if f.cache.FileChecked(id) {
			return f.cache.OpenFile(id, check)
		}
		f.inBackground(id, func() error {
			if file, ok := f.cache.OpenFile(id, check); ok {
				file.Close()
			}
			return nil
		})
		return nil, false
	}
	if !f.local(b, ino) {
		return nil, false
	}
	f.inBackground(id, func() error {
		if err := f.Materialize(context.WithoutCancel(ctx), b, ino); err != nil {
			return fmt.Errorf("assemble backing file of inode %d: %w", ino, err)
		}
		return nil
	})
	return nil, false
}

// inBackground runs job, the checking or assembling of backing file id,
// unless a job for id runs or waits already. Jobs run one at a time: this
// is disk work that must not compete with reads.
func (f *Fetcher) inBackground(id bootstrap.Digest, job func() error) {
	f.mu.Lock()
	// Past maxAssembling files waiting, this one is left to a later
	// open: each waiting file holds a goroutine and its bootstrap.
	start := !f.assembling[id] && len(f.assembling) < maxAssembling
	if start {
		f.assembling[id] = true
	}
	f.mu.Unlock()
	if !start {
		return
	}
	go func() {
		f.assembly <- struct{}{}
		defer func() { <-f.assembly }()
		if err := job(); err != nil {
			f.log.Warn("fetch: backing file", "file", id, "err", err)
		}
		f.mu.Lock()
		delete(f.assembling, id)
		f.mu.Unlock()
	}()
}

// maxAssembling bounds the backing files waiting to be assembled.
const maxAssembling = 64

// local reports whether every chunk of ino is in memory or on disk.
func (f *Fetcher) local(b *bootstrap.Bootstrap, ino uint32) bool {
	for _, ci := range b.FileChunks(ino) {
		if c := b.Chunks[ci]; !c.Zero() && !f.cached(c.Digest) {
			return false
		}
	}
	return true
}

// Materialize assembles regular file ino of b in the disk cache from its
// locally cached chunks, now, unless it is there already. It fails with
// ErrNotLocal when a chunk is not local; it never fetches.
func (f *Fetcher) Materialize(ctx context.Context, b *bootstrap.Bootstrap, ino uint32) error {
	if f.cache == nil {
		return fmt.Errorf("materialize inode %d: no disk cache", ino)
	}
	if int(ino) >= len(b.Inodes) || b.Inodes[ino].Type() != bootstrap.ModeRegular {
		return fmt.Errorf("materialize inode %d: not a regular file", ino)
	}
	id := FileID(b, ino)
	if f.cache.HasFile(id) {
		return nil
	}
	err := f.cache.PutFile(id, b.Inodes[ino].Size, func(w io.Writer) error {
		for _, ci := range b.FileChunks(ino) {
			if err := ctx.Err(); err != nil {
				return err
			}
			c := b.Chunks[ci]
			data, ok := f.localChunk(c)
			if !ok {
				return fmt.Errorf("chunk %s: %w", c.Digest, ErrNotLocal)
			}
			if _, err := w.Write(data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("materialize inode %d: %w", ino, err)
	}
	return nil
}

// localChunk returns c's verified content from memory or disk, without
// counting it as a read.
func (f *Fetcher) localChunk(c bootstrap.Chunk) ([]byte, bool) {
	if c.Zero() {
		return zeros(int(c.Size)), true
	}
	if data, ok := f.memChunk(c.Digest); ok {
		return data, true
	}
	return f.cache.Get(c.Digest)
}

// checkFile reads a backing file through and checks each chunk's bytes
// against its digest and the total against the inode's size.
func checkFile(b *bootstrap.Bootstrap, ino uint32, file *os.File) error {
	var buf []byte
	for _, ci := range b.FileChunks(ino) {
		c := b.Chunks[ci]
		if cap(buf) < int(c.Size) {
			buf = make([]byte, c.Size)
		}
		buf = buf[:c.Size]
		if _, err := io.ReadFull(file, buf); err != nil {
			return fmt.Errorf("backing file: %w", err)
		}
		if c.Zero() {
			if !bytes.Equal(buf, zeros(len(buf))) {
				return fmt.Errorf("backing file: zero chunk %d is not all zeros", ci)
			}
			continue
		}
		if bootstrap.Sum(buf) != c.Digest {
			return fmt.Errorf("backing file: chunk %s does not match its digest", c.Digest)
		}
	}
	if n, err := file.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("backing file: longer than %d bytes", b.Inodes[ino].Size)
	}
	return nil
}
