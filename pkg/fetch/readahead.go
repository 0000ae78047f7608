package fetch

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Readahead window of frame fetches. Files are stored in the order of
// their layer's tar stream, which is the order in which a program that
// walks a tree (or reads one large file) asks for them, so a miss at or a
// little after the end of the previous one in storage order is taken as a
// sequential reader and answered with the frames that follow too, in the
// same request; the window doubles with each sequential miss, as the
// kernel's page readahead does, and a random miss resets it, so a program
// reading a few scattered files fetches little more than it reads.
const (
	minReadahead = 256 << 10
	maxReadahead = 8 << 20
	// A sequential reader may skip what it does not read: a few frames,
	// or up to raSkip compressed bytes of the same blob (a walk that
	// reads the small files and passes over a large one).
	raSlack = 4
	raSkip  = maxReadahead
	// raBehind is how far behind the end of the last readahead a miss
	// still belongs to the same sequential read: the window read ahead
	// and the kernel's own readahead in flight beside it.
	raBehind = 2 * maxReadahead
	// aheadGap is how many bytes of frames it passes over a readahead
	// request reads rather than end; see claimAhead.
	aheadGap = 2 << 20
	// raScan bounds how far past the frame missed a window of packed
	// frames looks for them, passing over large ones.
	raScan = 64 << 20
)

// readahead is the sequential-reader state of one bootstrap.
type readahead struct {
	mu     sync.Mutex
	end    uint32 // rank just past the frames fetched by the last miss
	blob   uint32 // blob and byte offset where those frames end
	endOff int64
	window int64 // compressed bytes to fetch beyond the missed frame
	// A reader reaching rank mark (when marked) has the next window
	// read at once, before it misses: see trigger. armed mirrors
	// marked, for readers to check without the lock.
	mark   uint32
	marked bool
	armed  atomic.Bool
	packed bool // the reader missed in a packed frame
}

// next returns how many compressed bytes to read ahead of a miss at rank
// (frame fr), and records that the miss happened. A miss a little behind
// the last one is taken as part of the same sequential read, neither
// growing nor resetting the window: the kernel reads ahead with several
// requests at once, which arrive in any order.
func (ra *readahead) next(rank uint32, fr bootstrap.Frame, packed bool) int64 {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	near := rank <= ra.end+raSlack || (fr.Blob == ra.blob && fr.Offset >= ra.endOff && fr.Offset-ra.endOff <= raSkip)
	switch {
	case ra.end > 0 && rank >= ra.end && near:
		ra.window = min(max(2*ra.window, minReadahead), maxReadahead)
	case ra.end > 0 && rank < ra.end && fr.Blob == ra.blob && ra.endOff-fr.Offset <= raBehind:
		return ra.window
	default:
		ra.window = 0
	}
	ra.packed = packed
	ra.setMarked(false)
	ra.end = rank + 1
	ra.blob, ra.endOff = fr.Blob, fr.Offset+int64(fr.CompressedSize)
	return ra.window
}

// advance records that frames up to rank end (exclusive), ending at byte
// endOff of their blob, were fetched, and that a reader reaching rank
// mark is to have the next window read.
func (ra *readahead) advance(end uint32, endOff int64, mark uint32) {
	ra.mu.Lock()
	if end > ra.end {
		ra.end, ra.endOff = end, endOff
		ra.mark = mark
		ra.setMarked(true)
	}
	ra.mu.Unlock()
}

// setMarked sets marked; ra.mu is held.
func (ra *readahead) setMarked(on bool) {
	ra.marked = on
	ra.armed.Store(on)
}

// trigger reports whether a reader at rank has passed the mark of the
// last window read ahead, and if so returns the rank the next window
// starts after and its size (doubled, as for a miss). As the kernel's
// asynchronous readahead does, the next window is then on its way while
// the reader is still in the last one, rather than after it misses at the
// window's end and waits for a whole request.
func (ra *readahead) trigger(rank uint32) (after uint32, window int64, packed, ok bool) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if !ra.marked || rank < ra.mark || rank >= ra.end || ra.window == 0 {
		return 0, 0, false, false
	}
	ra.setMarked(false)
	ra.window = min(2*ra.window, maxReadahead)
	return ra.end - 1, ra.window, ra.packed, true
}

// claimAhead claims the frames stored right after fi that are neither
// cached nor being fetched, up to the readahead window, and returns them
// in storage order with their calls. After a miss in a packed frame of
// small chunks, frames holding one large chunk are passed over: a program
// walking a tree of small files (a compiler, an interpreter loading its
// modules) skips the large ones, and a frame not wanted costs its
// decompression, its digests and a disk write. Their bytes still come in
// the same request when the gap is small (aheadGap), which costs less
// than a request of its own.
//
// miss is the frame the reader missed, by which ra judges whether it reads
// in order; from is the last frame it is fetching already, after which
// the frames read ahead start.
func (f *Fetcher) claimAhead(b *bootstrap.Bootstrap, ix *frameIndex, miss, from uint32) ([]uint32, []*call) {
	packed := ix.packed(miss)
	window := ix.ra.next(ix.rank[miss], b.Frames[miss], packed)
	if window == 0 {
		return nil, nil
	}
	return f.claimAfter(b, ix, from, window, packed)
}

// claimAfter claims the frames stored after frame from, up to window
// compressed bytes, as claimAhead describes, and marks where a reader has
// the next window read.
//
// After a packed frame the window counts only the packed frames claimed,
// and large frames between them are passed over however large: a tree's
// small files are stored between its large ones (a toolchain's sources
// between its binaries), and a window that ended at the first large file
// would leave a program walking the small files to miss, and wait for a
// request, once per large file it passes. Frames passed over are not
// fetched: the frames claimed past a wide gap go in requests of their own
// (see planRuns).
func (f *Fetcher) claimAfter(b *bootstrap.Bootstrap, ix *frameIndex, from uint32, window int64, packed bool) ([]uint32, []*call) {
	rank := ix.rank[from]
	first := b.Frames[from]
	gap := readGap(packed)
	end := first.Offset + int64(first.CompressedSize)
	last := rank
	mark := rank + 1
	var claimed int64
	var frames []uint32
	var calls []*call
	for r := rank + 1; int(r) < len(ix.order); r++ {
		fj := ix.order[r]
		fr := b.Frames[fj]
		fend := fr.Offset + int64(fr.CompressedSize)
		if fr.Blob != first.Blob || fr.Offset < end {
			break
		}
		if packed {
			if fr.Offset-first.Offset > raScan || claimed >= window {
				break
			}
			if !ix.packed(fj) {
				continue
			}
		} else if fend-first.Offset > window+int64(first.CompressedSize) || fr.Offset-end > gap {
			break
		}
		cl, leader := f.claimMissing(b, ix, fj)
		if cl == nil && packed {
			continue // cached: passed over, as large frames are
		}
		if !leader {
			break
		}
		frames = append(frames, fj)
		calls = append(calls, cl)
		end, last = fend, r
		claimed += int64(fr.CompressedSize)
		if (packed && claimed <= window/2) || (!packed && fr.Offset-first.Offset <= window/2) {
			mark = r
		}
	}
	if len(frames) > 0 {
		ix.ra.advance(last+1, end, mark)
	}
	return frames, calls
}

// readOn tells the readahead of b that a reader is at rank: past the
// mark of the last window read ahead, the next is read in the background.
func (f *Fetcher) readOn(ctx context.Context, b *bootstrap.Bootstrap, ix *frameIndex, rank uint32) {
	if !ix.ra.armed.Load() {
		return
	}
	after, window, packed, ok := ix.ra.trigger(rank)
	if !ok {
		return
	}
	frames, calls := f.claimAfter(b, ix, ix.order[after], window, packed)
	f.fetchInBackground(ctx, b, ix, frames, calls)
}

// fetchInBackground fetches frames, claimed with calls, for their
// waiters, not bound to the reader's ctx.
func (f *Fetcher) fetchInBackground(ctx context.Context, b *bootstrap.Bootstrap, ix *frameIndex, frames []uint32, calls []*call) {
	if len(frames) == 0 {
		return
	}
	claimed := make(map[uint32]*call, len(frames))
	for i, fi := range frames {
		claimed[fi] = calls[i]
	}
	f.streams.Go(func() {
		f.fetchClaimed(context.WithoutCancel(ctx), b, ix, frames, claimed, readGap(ix.packed(frames[0])))
	})
}

// fetchAhead fetches frame fi, which the caller has claimed, together with
// the frames a sequential reader will want next, in one request. The
// reader gets fi as soon as its bytes are in and verified; the frames
// read ahead are verified and published to their waiters one by one as
// they arrive, while the reader goes on (see streamAhead). If the merged
// request fails, fi alone goes the usual way.
func (f *Fetcher) fetchAhead(ctx context.Context, b *bootstrap.Bootstrap, fi uint32, want bootstrap.Digest) ([]byte, error) {
	ix := f.frameIndex(b)
	ahead, calls := f.claimAhead(b, ix, fi, fi)
	if len(ahead) == 0 {
		return f.fetchFrame(ctx, b, fi, want)
	}
	fr := b.Frames[fi]
	// The frames up to the first wide gap come in fi's request; those
	// past it (packed frames beyond large ones) in requests of their own,
	// in the background.
	gap := readGap(ix.packed(fi))
	n, end := 0, fr.Offset+int64(fr.CompressedSize)
	for ; n < len(ahead); n++ {
		fj := b.Frames[ahead[n]]
		if fj.Offset-end > gap {
			break
		}
		end = fj.Offset + int64(fj.CompressedSize)
	}
	if n < len(ahead) {
		f.fetchInBackground(ctx, b, ix, ahead[n:], calls[n:])
		ahead, calls = ahead[:n], calls[:n]
	}
	if len(ahead) == 0 {
		return f.fetchFrame(ctx, b, fi, want)
	}
	r := run{blob: fr.Blob, off: fr.Offset, end: end, frames: append([]uint32{fi}, ahead...)}
	claimed := make(map[uint32]*call, len(ahead))
	for i, fj := range ahead {
		claimed[fj] = calls[i]
	}
	mine := make(chan frameResult, 1)
	f.streams.Go(func() { f.streamAhead(ctx, b, ix, r, fi, claimed, mine) })
	var res frameResult
	select {
	case res = <-mine:
		if res.err == nil {
			return res.data, nil
		}
	case <-ctx.Done():
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("frame %d: %w", fi, err)
	}
	if res.next >= len(f.sources) {
		return nil, fmt.Errorf("frame %d: %w", fi, res.err)
	}
	// The sources that already failed it are not asked again.
	return f.fetchFrameFrom(ctx, b, fi, want, f.sources[res.next:])
}
