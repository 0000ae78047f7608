package fetch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// prefetchConcurrency bounds the requests one Prefetch keeps in flight.
const prefetchConcurrency = 8

// PrefetchOption tunes a Prefetch.
type PrefetchOption func(*prefetchOptions)

type prefetchOptions struct {
	limit   *rate.Limiter
	streams int
}

// Limit has each request of a Prefetch wait until lim admits the bytes it
// reads (compressed, as stored), so that warming whole images leaves the
// node's network and CPU to its containers. Requests are cut to lim's
// burst; a frame larger than that counts as the burst. One limiter shared
// by every Prefetch bounds them together.
func Limit(lim *rate.Limiter) PrefetchOption {
	return func(o *prefetchOptions) { o.limit = lim }
}

// Streams has a Prefetch keep at most n requests in flight (default
// prefetchConcurrency). Each request's frames are decompressed and checked
// as they arrive, so fewer leave more of the CPU to the node's containers
// while a prefetch runs beside them.
func Streams(n int) PrefetchOption {
	return func(o *prefetchOptions) { o.streams = n }
}

// Prefetch warms the caches with every chunk of the given inodes (regular
// files; others are ignored), reading nearby frames of a blob with one
// request each. It returns an error naming every chunk it could not fetch;
// the chunks it did fetch stay cached either way, and are on disk when it
// returns.
func (f *Fetcher) Prefetch(ctx context.Context, b *bootstrap.Bootstrap, inodes []uint32, opts ...PrefetchOption) error {
	var o prefetchOptions
	for _, opt := range opts {
		opt(&o)
	}
	defer f.Flush()
	seen := map[uint32]bool{}
	var frames []uint32
	for _, ino := range inodes {
		if int(ino) >= len(b.Inodes) {
			return fmt.Errorf("prefetch: inode %d out of range", ino)
		}
		if b.Inodes[ino].Type() != bootstrap.ModeRegular {
			continue
		}
		for _, ci := range b.FileChunks(ino) {
			c := b.Chunks[ci]
			if c.Zero() || seen[c.Frame] || int(c.Frame) >= len(b.Frames) || f.cached(c.Digest) {
				continue
			}
			seen[c.Frame] = true
			frames = append(frames, c.Frame)
		}
	}
	if err := f.fetchRuns(ctx, b, frames, o, false); err != nil {
		return fmt.Errorf("prefetch: %w", err)
	}
	return nil
}

// FetchFrames reads the given frames of b from the sources, verified,
// even when their chunks are cached: it is how a seeder brings pieces in
// from the store for a FrameSink. Nearby frames are read with one request.
// The error names every frame that could not be fetched.
func (f *Fetcher) FetchFrames(ctx context.Context, b *bootstrap.Bootstrap, frames []uint32) error {
	for _, fi := range frames {
		if int(fi) >= len(b.Frames) || int(b.Frames[fi].Blob) >= len(b.Blobs) {
			return fmt.Errorf("fetch frames: frame %d out of range", fi)
		}
	}
	err := f.fetchRuns(ctx, b, frames, prefetchOptions{}, true)
	// The sink holds what was fetched when this returns: a seeder answers
	// a peer's request for the pieces right after.
	f.writes.Wait()
	if err != nil {
		return fmt.Errorf("fetch frames: %w", err)
	}
	return nil
}

// fetchRuns fetches frames in runs of nearby frames, as o says: each run
// first admitted by o.limit if set, up to o.streams at once; force
// fetches frames whose chunks are cached, too.
func (f *Fetcher) fetchRuns(ctx context.Context, b *bootstrap.Bootstrap, frames []uint32, o prefetchOptions, force bool) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cmp.Or(max(o.streams, 0), prefetchConcurrency))
	errc := make(chan error, 1)
	var errs []error
	done := make(chan struct{})
	go func() {
		for err := range errc {
			errs = append(errs, err)
		}
		close(done)
	}()
	var waitErr error
	most := int64(maxRun)
	if o.limit != nil {
		most = min(most, int64(o.limit.Burst()))
	}
	for _, r := range inOrder(planRunsGap(b, frames, most, mergeGap), frames) {
		if o.limit != nil {
			if waitErr = o.limit.WaitN(gctx, int(min(r.end-r.off, int64(o.limit.Burst())))); waitErr != nil {
				break
			}
		}
		g.Go(func() error {
			f.prefetchRun(gctx, b, r, errc, force)
			return gctx.Err()
		})
	}
	err := g.Wait()
	close(errc)
	<-done
	if err == nil && waitErr != nil {
		err = fmt.Errorf("rate limit: %w", waitErr)
	}
	if err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// inOrder orders runs by the first of their frames in frames: a caller
// lists first what is wanted first (a startup set, in the order its
// files were read), and runs go out in that order while each still reads
// nearby frames together.
func inOrder(runs []run, frames []uint32) []run {
	first := make(map[uint32]int, len(frames))
	for i, fi := range frames {
		if _, ok := first[fi]; !ok {
			first[fi] = i
		}
	}
	type keyed struct {
		key int
		r   run
	}
	ks := make([]keyed, len(runs))
	for i, r := range runs {
		ks[i] = keyed{len(frames), r}
		for _, fi := range r.frames {
			ks[i].key = min(ks[i].key, first[fi])
		}
	}
	slices.SortStableFunc(ks, func(a, b keyed) int { return cmp.Compare(a.key, b.key) })
	for i := range ks {
		runs[i] = ks[i].r
	}
	return runs
}

func (f *Fetcher) cached(d bootstrap.Digest) bool {
	return f.inMemory(d) || (f.cache != nil && f.cache.Has(d))
}

// prefetchRun fetches the frames of r that nobody else is fetching.
// Unless force is set, frames whose chunks are all cached are skipped;
// with force, frames another caller is fetching are waited for, and their
// failures are this run's (two peers ask a seeder for one piece at once:
// each must hear whether it was brought in).
func (f *Fetcher) prefetchRun(ctx context.Context, b *bootstrap.Bootstrap, r run, errc chan<- error, force bool) {
	ix := f.frameIndex(b)
	claimed, mine, others := f.claimFrames(b, ix, r.frames, force)
	for _, err := range f.fetchClaimed(ctx, b, ix, mine, claimed, mergeGap) {
		errc <- err
	}
	for fi, cl := range others {
		select {
		case <-cl.done:
			if cl.err != nil {
				errc <- fmt.Errorf("frame %d: %w", fi, cl.err)
			}
		case <-ctx.Done():
			errc <- fmt.Errorf("frame %d: %w", fi, ctx.Err())
		}
	}
}

// claimFrames claims the frames nobody else is fetching and returns
// their calls and, in the given order, the frames. Frames that failed a
// moment ago are left alone (their readers hear of the failure at once),
// and so, unless force is set, are frames whose chunks are all cached.
// With force, it also returns the calls of the frames others are
// fetching.
func (f *Fetcher) claimFrames(b *bootstrap.Bootstrap, ix *frameIndex, frames []uint32, force bool) (claimed map[uint32]*call, mine []uint32, others map[uint32]*call) {
	claimed = map[uint32]*call{}
	for _, fi := range frames {
		if !force && f.recentFailure(frameKey{b, fi}) != nil {
			continue
		}
		var cl *call
		var leader bool
		if force {
			cl, leader = f.claim(frameKey{b, fi})
		} else if cl, leader = f.claimMissing(b, ix, fi); cl == nil {
			continue // a reader got there first
		}
		if !leader {
			if force {
				if others == nil {
					others = map[uint32]*call{}
				}
				others[fi] = cl
			}
			continue
		}
		claimed[fi] = cl
		mine = append(mine, fi)
	}
	return claimed, mine, others
}

// claimMissing claims frame fi, as claim does, unless its chunks are all
// cached: then it returns a nil call. The cache is looked at after the
// claim, so that a fetch of fi that finished just before it is not made
// again.
func (f *Fetcher) claimMissing(b *bootstrap.Bootstrap, ix *frameIndex, fi uint32) (*call, bool) {
	cl, leader := f.claim(frameKey{b, fi})
	if leader && f.frameCached(b, ix, fi) {
		f.finish(frameKey{b, fi}, cl, nil, errCached)
		return nil, false
	}
	return cl, leader
}

// runRequests is how many requests of one fetchClaimed are in flight at
// once. The frames a reader walking small files will want next are
// stored in runs between large files, each run a request; one after
// another, each waited for its first byte (8–38 ms from MinIO on a busy
// node) while the reader caught up and waited too.
const runRequests = 4

// fetchClaimed fetches frames mine, claimed with calls claimed, with one
// request per run of frames at most gap bytes apart and source tried,
// runRequests at once in storage order, and finishes every call. Frames
// the merged reads could not deliver fall back to the per-frame path,
// which tries every source; it returns one error per frame that could not
// be fetched (unless ctx ended).
func (f *Fetcher) fetchClaimed(ctx context.Context, b *bootstrap.Bootstrap, ix *frameIndex, mine []uint32, claimed map[uint32]*call, gap int64) []error {
	var mu sync.Mutex // guards claimed and unreachable while runs deliver
	// unreachable lists the sources that could not be read at all, with
	// the error: a frame left over is not asked of them again, one by
	// one, which while the store is down would cost every frame of the
	// run a round of retries before its readers hear of it. A source that
	// only lacks one run (ErrNotHeld) may hold the next.
	unreachable := map[*source]error{}
	var g errgroup.Group
	g.SetLimit(runRequests)
	for _, sub := range planRunsGap(b, mine, maxRun, gap) {
		g.Go(func() error {
			f.fetchRun(ctx, b, ix, sub, claimed, unreachable, &mu)
			return nil
		})
	}
	g.Wait()
	var rest []*source
	var errs []error
	for _, s := range f.sources {
		if err := unreachable[s]; err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.Name(), err))
		} else {
			rest = append(rest, s)
		}
	}
	var failed []error
	for _, fi := range mine {
		cl, ok := claimed[fi]
		if !ok {
			continue
		}
		want := firstChunk(b, ix, fi)
		var data []byte
		err := fmt.Errorf("frame %d: all %d sources failed: %w", fi, len(errs), errors.Join(errs...))
		if len(rest) > 0 {
			data, err = f.fetchFrameFrom(ctx, b, fi, want, rest)
		}
		f.finish(frameKey{b, fi}, cl, data, err)
		if err != nil && ctx.Err() == nil {
			failed = append(failed, fmt.Errorf("chunk %s: %w", want, err))
		}
	}
	return failed
}

// fetchRun reads run sub for fetchClaimed from the first source that
// delivers it, finishing the calls in claimed of the frames that arrive
// intact and recording in unreachable the sources that could not be read
// at all; mu guards both.
func (f *Fetcher) fetchRun(ctx context.Context, b *bootstrap.Bootstrap, ix *frameIndex, sub run, claimed map[uint32]*call, unreachable map[*source]error, mu *sync.Mutex) {
	for _, s := range f.sources {
		mu.Lock()
		done, skip := true, unreachable[s] != nil
		for _, fi := range sub.frames {
			if claimed[fi] != nil {
				done = false
				break
			}
		}
		mu.Unlock()
		if done || ctx.Err() != nil {
			return
		}
		if skip {
			continue
		}
		var broke error // the stream stalled: s is not asked again
		err := f.readRun(ctx, s, b, ix, sub, func(fi uint32, data []byte, err error) {
			// A frame that did not arrive intact is left to
			// fetchClaimed's per-frame path, which tries every source.
			if err != nil {
				if errors.Is(err, errStalled) {
					mu.Lock()
					broke = err
					mu.Unlock()
				}
				return
			}
			mu.Lock()
			cl, ok := claimed[fi]
			delete(claimed, fi)
			mu.Unlock()
			if ok {
				f.finish(frameKey{b, fi}, cl, data, nil)
			}
		})
		if err == nil && broke != nil {
			// A source that stalled mid-stream would have each
			// frame left over wait out its time again, one by one.
			err = broke
		}
		if err == nil {
			return
		}
		if !errors.Is(err, ErrNotHeld) {
			mu.Lock()
			unreachable[s] = err
			mu.Unlock()
		}
	}
}

func (f *Fetcher) frameCached(b *bootstrap.Bootstrap, ix *frameIndex, fi uint32) bool {
	for _, ci := range ix.of(fi) {
		if !f.cached(b.Chunks[ci].Digest) {
			return false
		}
	}
	return true
}

func firstChunk(b *bootstrap.Bootstrap, ix *frameIndex, fi uint32) bootstrap.Digest {
	if cs := ix.of(fi); len(cs) > 0 {
		return b.Chunks[cs[0]].Digest
	}
	return bootstrap.Digest{}
}

// Fetch brings the given chunks of b in, when more than one frame holding
// them is missing: the missing frames are read with one request per run
// of nearby frames, and the call returns when they are in memory. A
// reader about to read many chunks at once (a large read of an image file
// spanning many small files) calls it first, so that it waits for one
// round of requests rather than for one per frame. A reader going through
// b in storage order (the kernel reading an image file ahead) is read
// ahead of, as in ReadChunk: the frames that follow come in the same
// request, and reach their readers as they arrive, while this one goes
// on. Without it each of the kernel's reads, at most 1 MiB of the image,
// would cost a request of its own. Failures are left to the reads that
// follow, which report each chunk.
func (f *Fetcher) Fetch(ctx context.Context, b *bootstrap.Bootstrap, chunks []uint32) {
	ix := f.frameIndex(b)
	var frames []uint32
	var at uint32 // the highest rank read
	for _, ci := range chunks {
		if int(ci) >= len(b.Chunks) {
			return
		}
		c := b.Chunks[ci]
		if c.Zero() || int(c.Frame) >= len(b.Frames) {
			continue
		}
		at = max(at, ix.rank[c.Frame])
		if (len(frames) > 0 && frames[len(frames)-1] == c.Frame) || f.cached(c.Digest) {
			continue
		}
		frames = append(frames, c.Frame)
	}
	f.readOn(ctx, b, ix, at)
	if len(frames) < 2 {
		return
	}
	claimed, mine, _ := f.claimFrames(b, ix, frames, false)
	if len(mine) == 0 {
		return
	}
	wait := make([]*call, 0, len(mine))
	last := mine[0]
	for _, fi := range mine {
		wait = append(wait, claimed[fi])
		if ix.rank[fi] > ix.rank[last] {
			last = fi
		}
	}
	ahead, calls := f.claimAhead(b, ix, mine[0], last)
	for i, fi := range ahead {
		claimed[fi] = calls[i]
	}
	mine = append(mine, ahead...)
	f.streams.Go(func() {
		// Not bound to ctx: the frames read ahead have readers of their own.
		f.fetchClaimed(context.WithoutCancel(ctx), b, ix, mine, claimed, readGap(ix.packed(mine[0])))
	})
	for _, cl := range wait {
		select {
		case <-cl.done:
		case <-ctx.Done():
			return
		}
	}
}
