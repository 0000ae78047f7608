package convert

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/codec"
)

// dedup is the set of chunks known to a conversion: those already in the
// store (from its chunk indexes) and those written by this conversion's
// layers, which run concurrently and must store each chunk once.
type dedup struct {
	mu     sync.Mutex
	chunks map[bootstrap.Digest]*location
	dict   map[bootstrap.Digest]chunkLoc
}

// location is where a chunk written by this conversion will be, once its
// blob is complete.
type location struct {
	bw     *blobWriter
	frame  int
	offset uint32
}

// claim returns true if the caller is the first to see d and must store it.
func (d *dedup) claim(dg bootstrap.Digest, loc *location) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.dict[dg]; ok {
		return false
	}
	if _, ok := d.chunks[dg]; ok {
		return false
	}
	d.chunks[dg] = loc
	return true
}

func (d *dedup) locate(dg bootstrap.Digest) (chunkLoc, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l, ok := d.dict[dg]; ok {
		return l, true
	}
	l, ok := d.chunks[dg]
	if !ok || l.bw.digest == (bootstrap.Digest{}) {
		return chunkLoc{}, false
	}
	return chunkLoc{blob: l.bw.digest, frame: l.bw.frames[l.frame], offset: l.offset}, true
}

// frameJob is one frame on its way through compression to the blob file.
type frameJob struct {
	compression bootstrap.Compression
	data        []byte
	out         []byte
	codec       bootstrap.Compression
	err         error
	done        chan struct{}
}

// compressor runs frame compression on a fixed number of goroutines shared
// by all layers of a conversion.
type compressor struct {
	jobs chan *frameJob
	wg   sync.WaitGroup
}

func newCompressor(workers int) *compressor {
	c := &compressor{jobs: make(chan *frameJob, workers)}
	for range workers {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for j := range c.jobs {
				j.out, j.codec, j.err = codec.CompressFrame(j.compression, nil, j.data)
				close(j.done)
			}
		}()
	}
	return c
}

func (c *compressor) close() {
	close(c.jobs)
	c.wg.Wait()
}

// blobWriter packs one layer's new chunks into frames and writes them, in
// order, to a temporary file that becomes a content-addressed blob.
type blobWriter struct {
	dedup       *dedup
	comp        *compressor
	compression bootstrap.Compression
	batchSize   int

	batch       []byte // small chunks waiting to share a frame
	batchChunks []*location

	queue   chan *frameJob
	werr    chan error
	file    *os.File
	hash    hash.Hash
	size    int64
	nframes int

	// Set by the writer goroutine; read after close.
	frames []bootstrap.Frame
	digest bootstrap.Digest
	new    []newChunk // chunks this blob stores, for its index

	closed   bool
	closeErr error
}

type newChunk struct {
	digest bootstrap.Digest
	size   uint32
	loc    *location
}

// createTemp is os.CreateTemp, replaced by tests to make a blob file fail.
var createTemp = os.CreateTemp

func newBlobWriter(workDir string, d *dedup, comp *compressor, c bootstrap.Compression, batchSize, inflight int) (*blobWriter, error) {
	f, err := createTemp(workDir, "skiff-blob-*")
	if err != nil {
		return nil, fmt.Errorf("create blob file: %w", err)
	}
	bw := &blobWriter{
		dedup: d, comp: comp, compression: c, batchSize: batchSize,
		queue: make(chan *frameJob, inflight), werr: make(chan error, 1),
		file: f, hash: sha256.New(),
	}
	go bw.writeLoop()
	return bw, nil
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// add implements chunkSink.
func (bw *blobWriter) add(data []byte) (chunkRef, error) {
	ref := chunkRef{size: uint32(len(data))}
	if isZero(data) {
		ref.digest, ref.zero = zeroDigest(len(data)), true
		return ref, nil
	}
	ref.digest = sha256.Sum256(data)
	loc := &location{bw: bw}
	if !bw.dedup.claim(ref.digest, loc) {
		return ref, nil
	}
	bw.new = append(bw.new, newChunk{digest: ref.digest, size: ref.size, loc: loc})
	if len(data) >= bw.batchSize {
		loc.frame = bw.submit(append([]byte(nil), data...))
		return ref, nil
	}
	if len(bw.batch)+len(data) > bw.batchSize {
		bw.flushBatch()
	}
	loc.offset = uint32(len(bw.batch))
	bw.batch = append(bw.batch, data...)
	bw.batchChunks = append(bw.batchChunks, loc)
	return ref, nil
}

var (
	zeroMu      sync.Mutex
	zeroDigests = map[int]bootstrap.Digest{}
)

// zeroDigest memoises the digest of n zero bytes: a sparse 64 GiB file
// should not cost 64 GiB of hashing twice.
func zeroDigest(n int) bootstrap.Digest {
	zeroMu.Lock()
	defer zeroMu.Unlock()
	d, ok := zeroDigests[n]
	if !ok {
		d = sha256.Sum256(make([]byte, n))
		zeroDigests[n] = d
	}
	return d
}

func (bw *blobWriter) flushBatch() {
	if len(bw.batch) == 0 {
		return
	}
	frame := bw.submit(bw.batch)
	for _, l := range bw.batchChunks {
		l.frame = frame
	}
	bw.batch, bw.batchChunks = nil, nil
}

// submit hands a frame to the compressors and queues it for writing in
// submission order; it returns the frame's index in the blob.
func (bw *blobWriter) submit(data []byte) int {
	j := &frameJob{compression: bw.compression, data: data, done: make(chan struct{})}
	bw.comp.jobs <- j
	bw.queue <- j
	bw.nframes++
	return bw.nframes - 1
}

func (bw *blobWriter) writeLoop() {
	w := bufio.NewWriterSize(io.MultiWriter(bw.file, bw.hash), 1<<20)
	var err error
	for j := range bw.queue {
		<-j.done
		if err != nil {
			continue // drain so submitters never block
		}
		if j.err != nil {
			err = j.err
			continue
		}
		bw.frames = append(bw.frames, bootstrap.Frame{
			Offset: bw.size, CompressedSize: uint32(len(j.out)), Size: uint32(len(j.data)), Compression: j.codec,
		})
		if _, werr := w.Write(j.out); werr != nil {
			err = fmt.Errorf("write blob: %w", werr)
		}
		bw.size += int64(len(j.out))
	}
	if err == nil {
		if ferr := w.Flush(); ferr != nil {
			err = fmt.Errorf("write blob: %w", ferr)
		}
	}
	bw.werr <- err
}

// close finishes the blob and sets its digest; an empty blob (every chunk
// deduplicated) keeps the zero digest, and its empty file goes with
// discard. Closing again returns the first close's error.
func (bw *blobWriter) close() error {
	if bw.closed {
		return bw.closeErr
	}
	bw.closed = true
	bw.closeErr = bw.finish()
	return bw.closeErr
}

func (bw *blobWriter) finish() error {
	bw.flushBatch()
	close(bw.queue)
	err := <-bw.werr
	if err != nil {
		return err
	}
	if bw.size > 0 {
		var d bootstrap.Digest
		copy(d[:], bw.hash.Sum(nil))
		bw.dedup.mu.Lock()
		bw.digest = d
		bw.dedup.mu.Unlock()
	}
	return nil
}

// compact rewrites the blob without the frames that hold no live chunk,
// so files deleted or replaced by later layers cost nothing in the store.
// A packed frame with at least one live chunk is kept whole.
func (bw *blobWriter) compact(live map[bootstrap.Digest]bool) error {
	if bw.size == 0 {
		return nil
	}
	keep := make([]bool, len(bw.frames))
	var kept []newChunk
	for _, c := range bw.new {
		if live[c.digest] {
			keep[c.loc.frame] = true
			kept = append(kept, c)
		}
	}
	if len(kept) == len(bw.new) {
		return nil
	}
	f, err := os.CreateTemp(filepath.Dir(bw.file.Name()), "skiff-blob-*")
	if err != nil {
		return fmt.Errorf("compact blob: %w", err)
	}
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(f, h), 1<<20)
	remap := make([]int, len(bw.frames))
	var frames []bootstrap.Frame
	var size int64
	for i, fr := range bw.frames {
		if !keep[i] {
			continue
		}
		if _, err := io.Copy(w, io.NewSectionReader(bw.file, fr.Offset, int64(fr.CompressedSize))); err != nil {
			f.Close()
			os.Remove(f.Name())
			return fmt.Errorf("compact blob: %w", err)
		}
		remap[i] = len(frames)
		fr.Offset = size
		frames = append(frames, fr)
		size += int64(fr.CompressedSize)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("compact blob: %w", err)
	}
	for _, c := range kept {
		c.loc.frame = remap[c.loc.frame]
	}
	bw.discard()
	bw.file, bw.size, bw.frames, bw.new = f, size, frames, kept
	var d bootstrap.Digest
	if size > 0 {
		copy(d[:], h.Sum(nil))
	}
	bw.dedup.mu.Lock()
	bw.digest = d
	bw.dedup.mu.Unlock()
	return nil
}

// discard removes the temporary file.
func (bw *blobWriter) discard() {
	bw.file.Close()
	os.Remove(bw.file.Name())
}

// putter is the part of store.Store a blob upload needs.
type putter interface {
	Put(ctx context.Context, key string, r io.Reader, size int64) error
}

// upload stores the blob file under its digest.
func (bw *blobWriter) upload(ctx context.Context, st putter, key string) error {
	if _, err := bw.file.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("upload blob: %w", err)
	}
	if err := st.Put(ctx, key, bw.file, bw.size); err != nil {
		return fmt.Errorf("upload blob %s: %w", hex.EncodeToString(bw.digest[:]), err)
	}
	return nil
}

// index describes the chunks the blob stores, as a bootstrap with an empty
// root, so later conversions can reuse them.
func (bw *blobWriter) index(chunkSize uint32) *bootstrap.Bootstrap {
	b := &bootstrap.Bootstrap{
		ChunkSize: chunkSize,
		Blobs:     []bootstrap.Digest{bw.digest},
		Frames:    bw.frames,
		Inodes:    []bootstrap.Inode{{Mode: bootstrap.ModeDir | 0o755}},
	}
	for _, c := range bw.new {
		b.Chunks = append(b.Chunks, bootstrap.Chunk{Digest: c.digest, Frame: uint32(c.loc.frame), Offset: c.loc.offset, Size: c.size})
	}
	return b
}
