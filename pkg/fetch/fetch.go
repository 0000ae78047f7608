// Package fetch is Skiff's one path for reading chunk data: memory, then
// the disk cache, then each Source in order (peers, seeders, the blob
// store). Whatever a source returns is decompressed and checked against the
// chunk digests before anyone sees it, so a broken or hostile source costs
// a retry, never a wrong byte.
package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/cache"
)

// DefaultMemoryBytes bounds the in-memory tier in front of the disk cache.
const DefaultMemoryBytes = 64 << 20

// Fetcher reads verified chunks. It is safe for concurrent use, and one
// Fetcher can serve any number of bootstraps (mounts) at once.
type Fetcher struct {
	cache   *cache.Cache // nil: no disk cache
	mem     *cache.Memory
	sources []*source
	log     *slog.Logger

	mu     sync.Mutex
	flight map[frameKey]*call
	// index holds each bootstrap's frame index for as long as the
	// bootstrap is alive: a long-running agent mounts and drops many.
	index sync.Map // weak.Pointer[bootstrap.Bootstrap] → *frameIndex
	// assembling lists backing files being assembled; assembly admits
	// one at a time.
	assembling map[bootstrap.Digest]bool
	assembly   chan struct{}

	memHits, cacheHits, fileHits, misses, zeros atomic.Int64
	missWait                                    atomic.Int64 // nanoseconds readers spent on misses

	// failed holds the frames every source failed a moment ago (see
	// failMemo), under mu.
	failed map[frameKey]failure

	// sink, when set, sees the stored bytes of every verified frame.
	sink FrameSink

	// pending holds verified chunks until the disk cache has them (see
	// writeback); writes runs its drain.
	pending writeback
	// Frames reach the sink behind the reader's back: keeping a frame is
	// a file to write, which must not stand between a reader and the
	// bytes it waits for. writeSlots bounds the frames being written;
	// past it, the fetching reader writes itself.
	writeSlots chan struct{}
	writes     tasks
	// streams are the merged requests still delivering frames read ahead
	// (see streamAhead), which end up in the caches too.
	streams tasks

	// warming holds the chunks being loaded into memory by Warm, and
	// warmSlots bounds how many load at once. Chunks this process has
	// checked are left to the kernel instead, through advice.
	warming   sync.Map // bootstrap.Digest → struct{}
	warmSlots chan struct{}
	advice    advisor

	// timeout bounds each request to a source (runTimeout; shorter in
	// tests). Reads from the kernel cannot be cancelled (a FUSE read
	// outlasts signals), and later readers of a frame join its fetch: a
	// source that stalls without failing must not hold them forever.
	timeout time.Duration
}

// maxPendingWrites bounds the frames on their way to the disk cache.
const maxPendingWrites = 32

// FrameSink receives the stored (compressed) bytes of each frame the
// Fetcher verified after reading it from a source. The chunk caches hold
// decompressed chunks, from which the stored bytes cannot be rebuilt, so a
// node that serves pieces to peers keeps them through a sink. KeepFrame
// must not retain raw after it returns.
type FrameSink interface {
	KeepFrame(blob bootstrap.Digest, off int64, raw []byte)
}

// Rejecter is implemented by sources that want to know when bytes they
// returned failed verification, so they can stop trusting whoever sent
// them (a peer, say). off and size are the bad frame's, inside the range
// of the FetchFrame call that returned it: a source that assembled the
// range from several senders can tell which sent it.
type Rejecter interface {
	Reject(blob bootstrap.Digest, off, size int64, err error)
}

// Option configures a Fetcher.
type Option func(*Fetcher)

// WithFrameSink makes s receive the stored bytes of every verified frame.
func WithFrameSink(s FrameSink) Option { return func(f *Fetcher) { f.sink = s } }

// WithLogger sets where failed sources and cache writes are logged;
// default slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(f *Fetcher) {
		if l != nil {
			f.log = l
		}
	}
}

// sinkFrame hands frame fi's stored bytes to the sink, if any, behind the
// reader's back as the disk cache's writes go: keeping a frame for peers
// is a file to write, which must not stand between a reader and its
// bytes. The bytes are copied: raw is part of a request's buffer, which
// the sink would otherwise hold whole until its write.
func (f *Fetcher) sinkFrame(b *bootstrap.Bootstrap, fi uint32, raw []byte) {
	if f.sink == nil {
		return
	}
	fr := b.Frames[fi]
	raw = bytes.Clone(raw)
	f.persistAsync(func() { f.sink.KeepFrame(b.Blobs[fr.Blob], fr.Offset, raw) })
}

// reject tells s, if it wants to know, that the bytes it returned for
// [off, off+size) of blob were wrong.
func reject(s *source, blob bootstrap.Digest, off, size int64, err error) {
	if r, ok := s.Source.(Rejecter); ok {
		r.Reject(blob, off, size, err)
	}
}

// source is a Source with its counters.
type source struct {
	Source
	requests, errors, frames, chunks, bytes atomic.Int64
}

// frameKey names a frame in flight. The bootstrap is part of the key
// because the frame is verified against that bootstrap's chunk list.
type frameKey struct {
	b     *bootstrap.Bootstrap
	frame uint32
}

// call is one fetch of a frame that concurrent readers share.
type call struct {
	done    chan struct{}
	waiters atomic.Int32
	data    []byte
	err     error
}

// New returns a Fetcher that caches in c (which may be nil) and reads
// misses from sources, in order.
func New(c *cache.Cache, sources []Source, opts ...Option) *Fetcher {
	f := &Fetcher{
		cache:  c,
		mem:    cache.NewMemory(DefaultMemoryBytes),
		log:    slog.Default(),
		flight: map[frameKey]*call{},
		failed: map[frameKey]failure{},

		assembling: map[bootstrap.Digest]bool{},
		assembly:   make(chan struct{}, 1),
		writeSlots: make(chan struct{}, maxPendingWrites),
		warmSlots:  make(chan struct{}, maxWarming),
		timeout:    runTimeout,
	}
	for _, s := range sources {
		f.sources = append(f.sources, &source{Source: s})
	}
	if c != nil {
		f.advice.willNeed = c.WillNeed
	}
	for _, o := range opts {
		o(f)
	}
	return f
}

// ReadChunk returns the content of chunk idx of b. The slice is shared
// with the caches and must not be modified.
func (f *Fetcher) ReadChunk(ctx context.Context, b *bootstrap.Bootstrap, idx uint32) ([]byte, error) {
	if int(idx) >= len(b.Chunks) {
		return nil, fmt.Errorf("read chunk %d: bootstrap has %d chunks", idx, len(b.Chunks))
	}
	c := b.Chunks[idx]
	if c.Zero() {
		f.zeros.Add(1)
		return zeros(int(c.Size)), nil
	}
	if int(c.Frame) >= len(b.Frames) {
		return nil, fmt.Errorf("read chunk %s: frame %d out of range", c.Digest, c.Frame)
	}
	counted := false
	for {
		// A read counts once: a miss that finds the chunk cached on
		// its retry stays a miss.
		if data, ok := f.memChunk(c.Digest); ok {
			if !counted {
				f.memHits.Add(1)
			}
			// A reader going through frames read ahead has the next
			// window read before it gets there (see readahead.trigger).
			ix := f.frameIndex(b)
			f.readOn(ctx, b, ix, ix.rank[c.Frame])
			return data, nil
		}
		if f.cache != nil {
			if data, ok := f.cache.Get(c.Digest); ok {
				if !counted {
					f.cacheHits.Add(1)
				}
				f.mem.Put(c.Digest, data)
				return data, nil
			}
		}
		if !counted {
			f.misses.Add(1)
			counted = true
		}
		start := time.Now()
		frame, err := f.frame(ctx, b, c.Frame, c.Digest)
		f.missWait.Add(int64(time.Since(start)))
		if errors.Is(err, errCached) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read chunk %s: %w", c.Digest, err)
		}
		return frame[c.Offset : c.Offset+c.Size], nil
	}
}

// errCached ends a claimed fetch that turned out to be unnecessary: the
// chunks arrived in the cache between the caller's lookup and its claim.
var errCached = errors.New("chunk is cached now")

func (f *Fetcher) frameIndex(b *bootstrap.Bootstrap) *frameIndex {
	k := weak.Make(b)
	if ix, ok := f.index.Load(k); ok {
		return ix.(*frameIndex)
	}
	ix, loaded := f.index.LoadOrStore(k, newFrameIndex(b))
	if !loaded {
		runtime.AddCleanup(b, func(k weak.Pointer[bootstrap.Bootstrap]) { f.index.Delete(k) }, k)
	}
	return ix.(*frameIndex)
}

// frame returns the verified, decompressed frame fi, sharing one fetch
// among concurrent callers. want names the chunk the caller needs, for logs.
func (f *Fetcher) frame(ctx context.Context, b *bootstrap.Bootstrap, fi uint32, want bootstrap.Digest) ([]byte, error) {
	k := frameKey{b, fi}
	for {
		if err := f.recentFailure(k); err != nil {
			return nil, err
		}
		cl, leader := f.claim(k)
		if leader {
			if f.cached(want) {
				f.finish(k, cl, nil, errCached)
				return nil, errCached
			}
			data, err := f.fetchAhead(ctx, b, fi, want)
			f.finish(k, cl, data, err)
			return data, err
		}
		cl.waiters.Add(1)
		select {
		case <-cl.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		// The leader's reader gave up; that is no reason for this one to.
		if cl.err != nil && ctx.Err() == nil && (errors.Is(cl.err, context.Canceled) || errors.Is(cl.err, context.DeadlineExceeded)) {
			continue
		}
		return cl.data, cl.err
	}
}

// claim returns the call fetching k, creating it (leader) if there is none.
func (f *Fetcher) claim(k frameKey) (*call, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cl, ok := f.flight[k]; ok {
		return cl, false
	}
	cl := &call{done: make(chan struct{})}
	f.flight[k] = cl
	return cl, true
}

// finish publishes the result of a claimed call, with the frame's chunks
// in memory and queued for the disk cache.
func (f *Fetcher) finish(k frameKey, cl *call, data []byte, err error) {
	if err == nil {
		f.keep(k.b, k.frame, data)
	}
	cl.data, cl.err = data, err
	f.mu.Lock()
	delete(f.flight, k)
	if failedFetch(err) {
		f.rememberFailure(k, err)
	} else if err == nil {
		delete(f.failed, k)
	}
	f.mu.Unlock()
	close(cl.done)
}

// failMemo is how long a frame that every source failed fails at once.
// The kernel retries a failed read page by page, and EROFS over the image
// file retries again: without it, each retry would wait out the sources
// (seconds each while the store is down) before its reader gets EIO. It
// is short, so a store that is back is soon read again.
const failMemo = time.Second

type failure struct {
	err error
	at  time.Time
}

// failedFetch reports whether err is a frame's fetch failing, rather than
// a claim let go or a reader giving up.
func failedFetch(err error) bool {
	return err != nil && !errors.Is(err, errCached) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// rememberFailure records that k failed with err; f.mu is held. Expired
// records are swept as new ones come, so the map holds at most the
// failures of the last failMemo (and the bootstraps they name).
func (f *Fetcher) rememberFailure(k frameKey, err error) {
	now := time.Now()
	if len(f.failed) >= 64 {
		for fk, fl := range f.failed {
			if now.Sub(fl.at) >= failMemo {
				delete(f.failed, fk)
			}
		}
	}
	f.failed[k] = failure{err: err, at: now}
}

// recentFailure returns the error k failed with less than failMemo ago.
func (f *Fetcher) recentFailure(k frameKey) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, ok := f.failed[k]
	if !ok {
		return nil
	}
	if time.Since(fl.at) >= failMemo {
		delete(f.failed, k)
		return nil
	}
	return fl.err
}

// persistAsync runs a disk write in the background; past writeSlots
// pending writes, the caller writes itself.
func (f *Fetcher) persistAsync(persist func()) {
	select {
	case f.writeSlots <- struct{}{}:
		f.writes.Go(func() {
			defer func() { <-f.writeSlots }()
			persist()
		})
	default:
		persist()
	}
}

// keep caches every chunk of a verified frame in memory, as one entry:
// packed small files are usually read together, so the neighbours are
// wanted soon. It queues the write of the chunks to the disk cache, if
// there is one (see writeback).
func (f *Fetcher) keep(b *bootstrap.Bootstrap, fi uint32, data []byte) {
	idx := f.frameIndex(b).of(fi)
	chunks := make([][]byte, len(idx))
	digests := make([]bootstrap.Digest, len(idx))
	var size int64
	for i, ci := range idx {
		c := b.Chunks[ci]
		chunks[i] = data[c.Offset : c.Offset+c.Size]
		digests[i] = c.Digest
		size += int64(c.Size)
	}
	f.mem.PutFrame(digests, chunks, int64(len(data)))
	if f.cache == nil {
		return
	}
	p := &pendingWrite{chunks: digests, bytes: size}
	p.persist = func() {
		if len(idx) == 1 {
			if err := f.cache.Put(b.Chunks[idx[0]].Digest, chunks[0]); err != nil {
				f.log.Warn("fetch: cache chunk", "chunk", b.Chunks[idx[0]].Digest, "err", err)
			}
			return
		}
		// A packed frame stays one file on disk too: creating a file per
		// small chunk costs more than fetching it did.
		pack := make([]cache.PackedChunk, len(idx))
		for i, ci := range idx {
			pack[i] = cache.PackedChunk{Digest: b.Chunks[ci].Digest, Data: chunks[i]}
		}
		if err := f.cache.PutPack(pack); err != nil {
			f.log.Warn("fetch: cache frame", "frame", fi, "chunks", len(idx), "err", err)
		}
	}
	if f.pending.add(p, chunks) {
		f.writes.Go(f.pending.drain)
	}
}

// ChunkFile returns an open file holding chunk idx of b at the returned
// offset, when the chunk is in the disk cache, checked, and not in memory:
// a reader that only passes the bytes on (to the kernel) can then have
// the kernel move them without copying them through this process.
func (f *Fetcher) ChunkFile(b *bootstrap.Bootstrap, idx uint32) (*os.File, int64, bool) {
	if f.cache == nil || int(idx) >= len(b.Chunks) {
		return nil, 0, false
	}
	c := b.Chunks[idx]
	if c.Zero() || f.inMemory(c.Digest) {
		return nil, 0, false
	}
	file, off, size, ok := f.cache.OpenChunk(c.Digest)
	if ok && size != int64(c.Size) {
		file.Close()
		return nil, 0, false
	}
	if ok {
		f.fileHits.Add(1)
	}
	return file, off, ok
}

// maxWarming bounds the chunks Warm loads at once.
const maxWarming = 8

// Warm brings the given chunks of b off the disk in the background, for a
// reader that is about to want them: chunks this process has checked are
// read into the page cache by the kernel, on advice given in order (see
// advisor), others are loaded and checked into memory. A reader that gets
// there first simply reads them itself. Chunks not on disk are left to the
// sources' own readahead (fetchAhead).
func (f *Fetcher) Warm(b *bootstrap.Bootstrap, chunks []uint32) {
	if f.cache == nil {
		return
	}
	for _, ci := range chunks {
		if int(ci) >= len(b.Chunks) {
			return
		}
		c := b.Chunks[ci]
		if c.Zero() || f.inMemory(c.Digest) || !f.cache.Has(c.Digest) {
			continue
		}
		if f.cache.Checked(c.Digest) {
			// Not even the advice is given here: fadvise allocates
			// the pages and submits the reads before it returns,
			// and a FUSE reader warming the chunks after its own
			// would wait for that. On a 2-vCPU VM, a sequential
			// read of a cached 1 GiB file through EROFS fell to
			// 0.44 of the local file's pace with the advice
			// inline, 0.51 without.
			f.advice.add(c.Digest)
			continue
		}
		if _, busy := f.warming.LoadOrStore(c.Digest, struct{}{}); busy {
			continue
		}
		select {
		case f.warmSlots <- struct{}{}:
		default:
			f.warming.Delete(c.Digest)
			return
		}
		go func() {
			defer func() {
				f.warming.Delete(c.Digest)
				<-f.warmSlots
			}()
			if data, ok := f.cache.Get(c.Digest); ok {
				f.mem.Put(c.Digest, data)
			}
		}()
	}
}

// Flush waits until every chunk fetched so far, including those still
// arriving from a request that read ahead, is in the disk cache. A process
// calls it before exiting, so that what it fetched survives it. Reads may
// go on meanwhile; Flush does not wait for what they fetch after it began.
func (f *Fetcher) Flush() {
	done := f.pending.flush()
	defer done()
	f.streams.Wait()
	f.writes.Wait()
}

// memChunk returns chunk d from memory: the memory tier, or the chunks
// waiting for the disk cache.
func (f *Fetcher) memChunk(d bootstrap.Digest) ([]byte, bool) {
	if data, ok := f.mem.Get(d); ok {
		return data, true
	}
	return f.pending.get(d)
}

// inMemory reports whether chunk d is in memory (see memChunk).
func (f *Fetcher) inMemory(d bootstrap.Digest) bool {
	return f.mem.Has(d) || f.pending.has(d)
}

// fetchFrame tries every source in turn for frame fi.
func (f *Fetcher) fetchFrame(ctx context.Context, b *bootstrap.Bootstrap, fi uint32, want bootstrap.Digest) ([]byte, error) {
	return f.fetchFrameFrom(ctx, b, fi, want, f.sources)
}

// fetchFrameFrom tries the given sources in turn for frame fi.
func (f *Fetcher) fetchFrameFrom(ctx context.Context, b *bootstrap.Bootstrap, fi uint32, want bootstrap.Digest, sources []*source) ([]byte, error) {
	fr := b.Frames[fi]
	if int(fr.Blob) >= len(b.Blobs) {
		return nil, fmt.Errorf("frame %d: blob %d out of range", fi, fr.Blob)
	}
	blob := b.Blobs[fr.Blob]
	ix := f.frameIndex(b)
	var errs []error
	for _, s := range sources {
		s.requests.Add(1)
		actx, cancel := context.WithTimeout(ctx, f.timeout)
		raw, err := s.FetchFrame(actx, blob, fr.Offset, int64(fr.CompressedSize))
		err = stalled(ctx, actx, err)
		cancel()
		var data []byte
		if err == nil {
			s.bytes.Add(int64(len(raw)))
			data, err = ix.verified(b, fi, raw)
		}
		if err == nil {
			s.frames.Add(1)
			s.chunks.Add(int64(len(ix.of(fi))))
			f.sinkFrame(b, fi, raw)
			return data, nil
		}
		if raw != nil {
			reject(s, blob, fr.Offset, int64(fr.CompressedSize), err)
		}
		s.errors.Add(1)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		f.log.Warn("fetch: source failed", "source", s.Name(), "blob", blob, "offset", fr.Offset, "size", fr.CompressedSize, "chunk", want, "err", err)
		errs = append(errs, fmt.Errorf("%s: %w", s.Name(), err))
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("frame %d (blob %s offset %d): no sources", fi, blob, fr.Offset)
	}
	return nil, fmt.Errorf("frame %d (blob %s offset %d): all %d sources failed: %w", fi, blob, fr.Offset, len(errs), errors.Join(errs...))
}

// zeroBuf is shared by every all-zero chunk; callers never modify chunks.
var zeroBuf atomic.Pointer[[]byte]

func zeros(n int) []byte {
	if p := zeroBuf.Load(); p != nil && len(*p) >= n {
		return (*p)[:n]
	}
	b := make([]byte, max(n, 1<<20))
	zeroBuf.Store(&b)
	return b[:n]
}

// Stats counts where chunks came from.
type Stats struct {
	MemoryHits int64 `json:"memoryHits"`
	CacheHits  int64 `json:"cacheHits"`
	// FileHits counts chunks handed out as a cache file (ChunkFile), whose
	// bytes the kernel moved without this process reading them.
	FileHits    int64 `json:"fileHits"`
	CacheMisses int64 `json:"cacheMisses"` // chunk reads that went to the sources
	// MissWait is the time readers spent waiting on those, summed.
	MissWait   time.Duration `json:"missWaitNanos"`
	ZeroChunks int64         `json:"zeroChunks"` // reads of all-zero chunks, which need no I/O
	// PendingBytes is how much verified chunk data waits in memory for
	// the disk cache (see writeback).
	PendingBytes int64         `json:"pendingBytes"`
	Sources      []SourceStats `json:"sources"`
	Cache        *cache.Stats  `json:"cache,omitempty"`
}

// SourceStats counts one source's traffic.
type SourceStats struct {
	Name     string `json:"name"`
	Requests int64  `json:"requests"`
	Errors   int64  `json:"errors"` // failed requests and bad data
	Frames   int64  `json:"frames"` // verified frames received
	Chunks   int64  `json:"chunks"` // verified chunks received
	Bytes    int64  `json:"bytes"`  // compressed bytes received
}

// Stats returns current counters.
func (f *Fetcher) Stats() Stats {
	s := Stats{
		MemoryHits:  f.memHits.Load(),
		CacheHits:   f.cacheHits.Load(),
		FileHits:    f.fileHits.Load(),
		CacheMisses: f.misses.Load(),
		MissWait:    time.Duration(f.missWait.Load()),
		ZeroChunks:  f.zeros.Load(),
		Sources:     []SourceStats{},
		// Nothing waits without a disk cache.
		PendingBytes: f.pending.pendingBytes(),
	}
	for _, src := range f.sources {
		s.Sources = append(s.Sources, SourceStats{
			Name: src.Name(), Requests: src.requests.Load(), Errors: src.errors.Load(),
			Frames: src.frames.Load(), Chunks: src.chunks.Load(), Bytes: src.bytes.Load(),
		})
	}
	if f.cache != nil {
		cs := f.cache.Stats()
		s.Cache = &cs
	}
	return s
}
