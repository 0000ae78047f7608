// Package convert turns OCI images into Skiff images: it streams every
// layer (gzip, zstd or uncompressed) without unpacking it, cuts file
// content into chunks, stores each distinct chunk once in compressed frames
// of content-addressed blobs, merges the layers into one bootstrap, and
// builds the Skiff manifest. The CLI and the converter service share it.
package convert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"golang.org/x/sync/errgroup"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/image"
	"github.com/skiff-dev/skiff/pkg/startup"
	"github.com/skiff-dev/skiff/pkg/store"
)

// Defaults, chosen by `make bench` (see docs/performance.md): 1 MiB chunks, zstd, fixed
// chunking, small chunks packed into frames of up to 256 KiB.
const (
	DefaultChunkSize   = 1 << 20
	DefaultBatchSize   = 256 << 10
	DefaultCompression = bootstrap.Zstd
	DefaultChunking    = FixedChunking
)

// PrefetchLabel, on a source image's config, names the paths to prefetch
// when the conversion's options name none, as startup.Paths splits them.
// It lets an image's author choose them where the image is built
// (LABEL dev.skiff.prefetch="/app/bin,/app/lib" in a Dockerfile) for the
// conversions the converter service runs on push.
const PrefetchLabel = "dev.skiff.prefetch"

// Options tune a conversion. Zero values select the defaults.
type Options struct {
	ChunkSize   int
	Compression bootstrap.Compression
	Chunking    Chunking
	// BatchSize is the frame size up to which small chunks share a frame.
	BatchSize int
	// Concurrency bounds layers converted and frames compressed at once.
	Concurrency int
	// WorkDir holds blob files until they are uploaded.
	WorkDir string
	// Prefetch names paths, files or directories, whose files every node
	// fetches first as it mounts the image, in that order (Nydus' prefetch
	// patterns): they are written as the image's startup set
	// (package startup). A path the image lacks fails the conversion.
	// Without it, the source's PrefetchLabel names them.
	Prefetch []string
	// Progress, if set, is called as layers are read.
	Progress func(Progress)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Progress reports how far a conversion has read.
type Progress struct {
	Layers, LayersDone int
	BytesRead, Bytes   int64 // compressed layer bytes read / in total
}

// Result describes a finished conversion.
type Result struct {
	Image         v1.Image // the Skiff image; its subject is the source
	Bootstrap     bootstrap.Digest
	BootstrapSize int64
	SourceDigest  v1.Hash
	Stats         bootstrap.Stats
	SourceBytes   int64 // compressed size of the source layers
	NewBytes      int64 // bytes this conversion added to the store
	NewBlobs      []bootstrap.Digest
	PrefetchFiles int // files in the startup set written from Options.Prefetch or PrefetchLabel
	Duration      time.Duration
}

// Converter converts images into one store. It remembers the chunks the
// store holds, so it is worth keeping one for the life of a process; it is
// safe for concurrent use.
type Converter struct {
	store store.Store
	opts  Options
	log   *slog.Logger

	mu     sync.Mutex
	dict   map[bootstrap.Digest]chunkLoc
	loaded map[string]bool // index keys already merged into dict
}

// New returns a Converter writing to st.
func New(st store.Store, opts Options) *Converter {
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultBatchSize
	}
	if opts.Chunking == "" {
		opts.Chunking = DefaultChunking
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = runtime.NumCPU()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Converter{store: st, opts: opts, log: opts.Logger, dict: map[bootstrap.Digest]chunkLoc{}, loaded: map[string]bool{}}
}

// validate rejects options that would produce an unreadable image.
func (o Options) validate() error {
	if o.ChunkSize > bootstrap.MaxChunkSize || o.ChunkSize < 4096 {
		return fmt.Errorf("chunk size %d out of range (4096..%d)", o.ChunkSize, bootstrap.MaxChunkSize)
	}
	if o.Chunking == CDCChunking && o.ChunkSize*2 > bootstrap.MaxChunkSize {
		return fmt.Errorf("cdc chunk size %d: maximum chunk would exceed %d", o.ChunkSize, bootstrap.MaxChunkSize)
	}
	if o.BatchSize > bootstrap.MaxFrameSize {
		return fmt.Errorf("batch size %d exceeds %d", o.BatchSize, bootstrap.MaxFrameSize)
	}
	if o.Compression > bootstrap.None {
		return fmt.Errorf("unknown compression %d", o.Compression)
	}
	return nil
}

// Convert converts src. Blobs reach the store before the bootstrap that
// names them, and the bootstrap before the image is returned, so a pushed
// Skiff image never refers to data that is not there.
func (c *Converter) Convert(ctx context.Context, src v1.Image) (*Result, error) {
	start := time.Now()
	if err := c.opts.validate(); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	subject, err := partial.Descriptor(src)
	if err != nil {
		return nil, fmt.Errorf("convert: source descriptor: %w", err)
	}
	m, err := src.Manifest()
	if err != nil {
		return nil, fmt.Errorf("convert: source manifest: %w", err)
	}
	if image.IsSkiff(m) {
		return nil, fmt.Errorf("convert: %s is already a Skiff image", subject.Digest)
	}
	cfg, err := src.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("convert: source config: %w", err)
	}
	layers, err := src.Layers()
	if err != nil {
		return nil, fmt.Errorf("convert: source layers: %w", err)
	}
	if err := c.loadDictionary(ctx); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}

	res := &Result{SourceDigest: subject.Digest}
	for _, l := range m.Layers {
		res.SourceBytes += l.Size
	}
	d := &dedup{chunks: map[bootstrap.Digest]*location{}, dict: c.snapshotDictionary()}
	comp := newCompressor(c.opts.Concurrency)
	defer comp.close()

	prog := &progress{fn: c.opts.Progress, p: Progress{Layers: len(layers), Bytes: res.SourceBytes}}
	entries := make([][]entry, len(layers))
	writers := make([]*blobWriter, len(layers))
	defer func() {
		for _, bw := range writers {
			if bw != nil {
				bw.discard()
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.opts.Concurrency)
	for i, l := range layers {
		// The blob file is made inside the group: a failure must stop the
		// other layers and be waited for like theirs, since the deferred
		// cleanup closes files and the compressor they are still using.
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err // another layer failed: do not open this one
			}
			bw, err := newBlobWriter(c.opts.WorkDir, d, comp, c.opts.Compression, c.opts.BatchSize, 2*c.opts.Concurrency)
			if err != nil {
				return fmt.Errorf("layer %d: %w", i, err)
			}
			writers[i] = bw
			ents, err := c.convertLayer(gctx, l, bw, prog)
			if err != nil {
				digest, _ := l.Digest()
				return fmt.Errorf("layer %d (%s): %w", i, digest, err)
			}
			entries[i] = ents
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}

	t := newTree()
	for i, ents := range entries {
		if err := t.apply(ents); err != nil {
			return nil, fmt.Errorf("convert: layer %d: %w", i, err)
		}
	}
	// Content that later layers deleted or replaced is cut out of the blobs
	// before anything is uploaded: it never reaches the store.
	live := t.liveChunks()
	for _, bw := range writers {
		if err := bw.compact(live); err != nil {
			return nil, fmt.Errorf("convert: %w", err)
		}
	}
	b, err := t.build(uint32(c.opts.ChunkSize), d)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	// Checked before anything is uploaded: a misspelt path is the
	// caller's to fix, not a conversion without its prefetch.
	var prefetch []byte
	paths, from := c.opts.Prefetch, "prefetch"
	if len(paths) == 0 && cfg.Config.Labels[PrefetchLabel] != "" {
		paths, from = startup.Paths(cfg.Config.Labels[PrefetchLabel]), "label "+PrefetchLabel
	}
	if len(paths) > 0 {
		inodes, err := startup.Expand(b, paths)
		if err != nil {
			return nil, fmt.Errorf("convert: %s: %w", from, err)
		}
		prefetch, res.PrefetchFiles = startup.Format(b, inodes), len(inodes)
	}
	blob, err := bootstrap.Encode(b)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	res.Bootstrap = bootstrap.Sum(blob)
	res.BootstrapSize = int64(len(blob))
	res.Stats = b.Stats()

	// Only blobs the final tree uses are uploaded.
	used := map[bootstrap.Digest]bool{}
	for _, bd := range b.Blobs {
		used[bd] = true
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(c.opts.Concurrency)
	var newBytes atomic.Int64
	var newMu sync.Mutex
	for _, bw := range writers {
		if bw.size == 0 || !used[bw.digest] {
			continue
		}
		g.Go(func() error {
			n, err := c.publish(gctx, bw)
			if err != nil {
				return err
			}
			newBytes.Add(n)
			if n > 0 {
				newMu.Lock()
				res.NewBlobs = append(res.NewBlobs, bw.digest)
				newMu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	// The startup set goes first: a node that finds the bootstrap
	// finds its set too.
	if prefetch != nil {
		if err := c.store.Put(ctx, store.StartupKey(res.Bootstrap.Hex()), bytes.NewReader(prefetch), int64(len(prefetch))); err != nil {
			return nil, fmt.Errorf("convert: store startup set: %w", err)
		}
	}
	if err := c.store.Put(ctx, store.BootstrapKey(res.Bootstrap.Hex()), bytes.NewReader(blob), int64(len(blob))); err != nil {
		return nil, fmt.Errorf("convert: store bootstrap: %w", err)
	}
	res.NewBytes = newBytes.Load()
	if res.Image, err = image.New(cfg, blob, *subject); err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	res.Duration = time.Since(start)
	c.log.Debug("converted image", "source", subject.Digest, "bootstrap", res.Bootstrap, "files", res.Stats.Files, "stored", res.Stats.StoredBytes, "new", res.NewBytes, "duration", res.Duration)
	return res, nil
}

// convertLayer streams one layer through the tar reader into bw.
func (c *Converter) convertLayer(ctx context.Context, l v1.Layer, bw *blobWriter, prog *progress) ([]entry, error) {
	defer bw.close() // idempotent; a failed layer must not leak its writer
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	defer rc.Close()
	cr := &countingReader{ctx: ctx, r: rc, prog: prog}
	r, closeDec, err := decompress(cr)
	if err != nil {
		return nil, err
	}
	defer closeDec()
	ents, err := readLayer(r, newChunker(c.opts.Chunking, c.opts.ChunkSize), bw)
	if err != nil {
		return nil, err
	}
	// Read to the end so the registry client verifies the layer digest.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("read past tar end: %w", err)
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if err := bw.close(); err != nil {
		return nil, err
	}
	prog.layerDone()
	return ents, nil
}

// publish makes a blob and its chunk index available in the store, and
// returns the bytes uploaded (0 when the store already had the blob).
//
// The blob may be one garbage collection condemned (pkg/gc): this
// conversion reproduced its content, so its digest, but its index went to
// the tombstone store.CondemnedKey. Collection deletes such a blob in three
// steps: Stat the index (present: reprieve), delete the blob, delete the
// tombstone. Checking that the blob exists and then writing the index
// would lose it if collection ran between the two: it sees no index,
// deletes the blob, and the bootstrap written next names nothing. So the
// index goes first, then the tombstone is looked at, then the blob:
//
//   - a collection that Stats the index after it is written reprieves;
//   - one that did so before and has not deleted the tombstone when we
//     look leaves it for us to see, and we upload the blob whether or not
//     it is still there;
//   - one that has deleted the tombstone when we look deleted the blob
//     before that, hence before we Stat the blob, and we see it missing
//     and upload it.
//
// The tombstone is checked before the blob for that last case: in the
// other order the blob could go between the two checks unseen. One
// interleaving is left: a collection that Stats the index before our Put
// and deletes the blob only after our whole upload, all within its two
// back-to-back requests. Nothing short of a change in pkg/gc closes it.
//
// The index may thus name a blob not uploaded yet, or never if the upload
// fails; loadDictionary ignores an index whose blob is missing.
func (c *Converter) publish(ctx context.Context, bw *blobWriter) (int64, error) {
	hex := bw.digest.Hex()
	idx := bw.index(uint32(c.opts.ChunkSize))
	enc, err := bootstrap.Encode(idx)
	if err != nil {
		return 0, fmt.Errorf("encode index of %s: %w", bw.digest, err)
	}
	if err := c.store.Put(ctx, store.IndexKey(hex), bytes.NewReader(enc), int64(len(enc))); err != nil {
		return 0, fmt.Errorf("store index of %s: %w", bw.digest, err)
	}
	stored, err := c.blobStored(ctx, hex, bw.size)
	if err != nil {
		return 0, err
	}
	var n int64
	if stored {
		c.log.Debug("blob already stored", "blob", bw.digest)
	} else {
		if err := bw.upload(ctx, c.store, store.BlobKey(hex)); err != nil {
			return 0, err
		}
		n = bw.size
	}
	c.learn(idx)
	return n, nil
}

// blobStored reports whether blob hex of size bytes is in the store and
// not condemned by garbage collection; see publish for why the order of
// the checks matters.
func (c *Converter) blobStored(ctx context.Context, hex string, size int64) (bool, error) {
	if _, err := c.store.Stat(ctx, store.CondemnedKey(hex)); err == nil {
		c.log.Debug("blob condemned by garbage collection, uploading it again", "blob", hex)
		return false, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return false, fmt.Errorf("stat tombstone of %s: %w", hex, err)
	}
	info, err := c.store.Stat(ctx, store.BlobKey(hex))
	switch {
	case errors.Is(err, store.ErrNotFound):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("stat blob %s: %w", hex, err)
	}
	return info.Size == size, nil
}

// ErrIncomplete is what Reuse wraps when the store lacks something an
// image needs.
var ErrIncomplete = errors.New("image data incomplete in the store")

// Reuse checks that the bootstrap d and every blob it names are in the
// store, each blob long enough for the frames read from it, so that an
// image made earlier can be tagged again rather than converted anew, and
// then writes the bootstrap again. A missing, short or corrupt object is
// an error wrapping ErrIncomplete (garbage collection, pkg/gc, deletes the
// bootstraps of images no registry tags any more, and then their blobs);
// any other error is the store's. Writing the bootstrap again is what
// tells a collector that marked it dead, from a scan of the registries
// made before the new tag, to spare it: it deletes a dead bootstrap only
// if it has not been written since.
func (c *Converter) Reuse(ctx context.Context, d bootstrap.Digest) error {
	data, err := store.ReadAll(ctx, c.store, store.BootstrapKey(d.Hex()), bootstrap.MaxRawSize)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: bootstrap %s: %w", ErrIncomplete, d, err)
	} else if err != nil {
		return fmt.Errorf("bootstrap %s: %w", d, err)
	}
	if bootstrap.Sum(data) != d {
		return fmt.Errorf("%w: bootstrap %s: stored content does not match the digest", ErrIncomplete, d)
	}
	b, err := bootstrap.Decode(data)
	if err != nil {
		return fmt.Errorf("%w: bootstrap %s: %w", ErrIncomplete, d, err)
	}
	need := make([]int64, len(b.Blobs))
	for _, f := range b.Frames {
		if int(f.Blob) < len(need) {
			need[f.Blob] = max(need[f.Blob], f.Offset+int64(f.CompressedSize))
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, blob := range b.Blobs {
		g.Go(func() error {
			info, err := c.store.Stat(gctx, store.BlobKey(blob.Hex()))
			switch {
			case errors.Is(err, store.ErrNotFound):
				err = fmt.Errorf("%w: blob %s of bootstrap %s: %w", ErrIncomplete, blob, d, err)
			case err != nil:
				return fmt.Errorf("blob %s of bootstrap %s: %w", blob, d, err)
			case info.Size < need[i]:
				err = fmt.Errorf("%w: blob %s of bootstrap %s has %d bytes, its frames reach %d", ErrIncomplete, blob, d, info.Size, need[i])
			default:
				return nil
			}
			// Garbage collection takes the index before the blob, and
			// loadDictionary then forgets the blob's chunks; a blob gone
			// with its index left is news to the dictionary, which
			// would place the chunks of the next conversion in it.
			c.forget(store.IndexKey(blob.Hex()))
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := c.store.Put(ctx, store.BootstrapKey(d.Hex()), bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("write bootstrap %s again: %w", d, err)
	}
	return nil
}

// forget makes the next conversion reload the dictionary, as if the
// index under key had gone, unless it was never merged.
func (c *Converter) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loaded[key] {
		c.log.Info("a blob in the dedup dictionary is missing from the store, reloading the dictionary", "index", key)
		c.dict, c.loaded = map[bootstrap.Digest]chunkLoc{}, map[string]bool{}
	}
}

// loadDictionary merges chunk indexes that appeared in the store since the
// last conversion, so chunks already stored by other images are reused.
// An index whose blob has gone missing is ignored. An index that has gone
// since it was merged (garbage collection takes a blob's index away
// before it deletes the blob, see pkg/gc) makes the dictionary start
// over: a long-lived converter must not place chunks in a blob that is
// about to go, and the chunks it held may also be in blobs still here.
func (c *Converter) loadDictionary(ctx context.Context) error {
	c.mu.Lock()
	merged := maps.Clone(c.loaded)
	c.mu.Unlock()
	var listed []string
	err := c.store.List(ctx, store.IndexPrefix, func(info store.Info) error {
		listed = append(listed, info.Key)
		delete(merged, info.Key)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list chunk indexes: %w", err)
	}
	var keys []string
	c.mu.Lock()
	if len(merged) > 0 {
		c.log.Info("chunk indexes removed from the store, reloading the dedup dictionary", "removed", len(merged))
		c.dict, c.loaded = map[bootstrap.Digest]chunkLoc{}, map[string]bool{}
	}
	for _, key := range listed {
		if !c.loaded[key] {
			keys = append(keys, key)
		}
	}
	c.mu.Unlock()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for _, key := range keys {
		g.Go(func() error {
			idx, err := c.readIndex(gctx, key)
			if err != nil {
				c.log.Warn("ignoring chunk index", "key", key, "err", err)
				return nil
			}
			if _, err := c.store.Stat(gctx, store.BlobKey(idx.Blobs[0].Hex())); err != nil {
				c.log.Warn("ignoring chunk index of missing blob", "key", key, "err", err)
				return nil
			}
			c.learn(idx)
			c.mu.Lock()
			c.loaded[key] = true
			c.mu.Unlock()
			return nil
		})
	}
	return g.Wait()
}

func (c *Converter) readIndex(ctx context.Context, key string) (*bootstrap.Bootstrap, error) {
	data, err := store.ReadAll(ctx, c.store, key, bootstrap.MaxRawSize)
	if err != nil {
		return nil, err
	}
	idx, err := bootstrap.Decode(data)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", key, err)
	}
	if len(idx.Blobs) != 1 {
		return nil, fmt.Errorf("index names %d blobs, want 1", len(idx.Blobs))
	}
	return idx, nil
}

func (c *Converter) learn(idx *bootstrap.Bootstrap) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loaded[store.IndexKey(idx.Blobs[0].Hex())] = true
	for _, ch := range idx.Chunks {
		if ch.Zero() {
			continue
		}
		if _, ok := c.dict[ch.Digest]; !ok {
			f := idx.Frames[ch.Frame]
			c.dict[ch.Digest] = chunkLoc{blob: idx.Blobs[f.Blob], frame: f, offset: ch.Offset}
		}
	}
}

// snapshotDictionary copies the dictionary so a conversion sees one
// consistent view while others add to it.
func (c *Converter) snapshotDictionary() map[bootstrap.Digest]chunkLoc {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[bootstrap.Digest]chunkLoc, len(c.dict))
	for k, v := range c.dict {
		m[k] = v
	}
	return m
}

// progress aggregates the layer readers' progress for Options.Progress.
type progress struct {
	mu sync.Mutex
	fn func(Progress)
	p  Progress
}

func (p *progress) add(n int) {
	if p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.p.BytesRead += int64(n)
	p.fn(p.p)
}

func (p *progress) layerDone() {
	if p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.p.LayersDone++
	p.fn(p.p)
}

// countingReader reports progress and stops reading once ctx is done, so a
// cancelled conversion does not drain a multi-gigabyte layer.
type countingReader struct {
	ctx  context.Context
	r    io.Reader
	prog *progress
}

func (r *countingReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.Read(p)
	r.prog.add(n)
	return n, err
}

// IndexResult describes a converted multi-platform image.
type IndexResult struct {
	Index        v1.ImageIndex // the Skiff index; its subject is the source index
	SourceDigest v1.Hash
	Platforms    []PlatformResult // in the source index's order
	Duration     time.Duration
}

// PlatformResult is the conversion of one platform's image.
type PlatformResult struct {
	Platform v1.Platform
	*Result
}

// ConvertIndex converts the image of every platform of a multi-platform
// source (image.LoadIndex) and builds the Skiff index of them. The images
// are converted one after another: what the platforms share, their
// architecture-independent files, is stored once.
func (c *Converter) ConvertIndex(ctx context.Context, index v1.Descriptor, images []image.Platform) (*IndexResult, error) {
	start := time.Now()
	res := &IndexResult{SourceDigest: index.Digest}
	skiff := make([]image.Platform, 0, len(images))
	for _, p := range images {
		r, err := c.Convert(ctx, p.Image)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.Platform.String(), err)
		}
		res.Platforms = append(res.Platforms, PlatformResult{Platform: p.Platform, Result: r})
		skiff = append(skiff, image.Platform{Platform: p.Platform, Image: r.Image})
	}
	idx, err := image.NewIndex(index, skiff)
	if err != nil {
		return nil, fmt.Errorf("convert: %w", err)
	}
	res.Index, res.Duration = idx, time.Since(start)
	return res, nil
}
