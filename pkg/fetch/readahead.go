package fetch

import (
	"context"
	"fmt"
	"sync"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Readahead window of frame fetches. Files are stored in the order of
// their layer's tar stream, which is the order in which a program that
// walks a tree (or reads one large file) asks for them, so a miss right
// after the previous one in storage order is taken as a sequential reader
// and answered with the frames that follow too, in the same request; the
// window doubles with each sequential miss, as the kernel's page
// readahead does, and a random miss resets it, so a program reading a
// few scattered files fetches little more than it reads.
const (
	minReadahead = 256 << 10
	maxReadahead = 4 << 20
	// raSlack lets a sequential reader skip a few frames (files it does
	// not read) and still count as sequential.
	raSlack = 4
)

// readahead is the sequential-reader state of one bootstrap.
type readahead struct {
	mu     sync.Mutex
	end    uint32 // rank just past the frames fetched by the last miss
	window int64  // compressed bytes to fetch beyond the missed frame
}

// next returns how many compressed bytes to read ahead of a miss at rank,
// and records that the miss happened.
func (ra *readahead) next(rank uint32) int64 {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if rank >= ra.end && rank <= ra.end+raSlack && ra.end > 0 {
		ra.window = min(max(2*ra.window, minReadahead), maxReadahead)
	} else {
		ra.window = 0
	}
	ra.end = rank + 1
	return ra.window
}

// advance records that frames up to rank end (exclusive) were fetched.
func (ra *readahead) advance(end uint32) {
	ra.mu.Lock()
	ra.end = max(ra.end, end)
	ra.mu.Unlock()
}

// claimAhead claims the frames stored right after fi that are neither
// cached nor being fetched, up to the readahead window, and returns them
// in storage order with their calls.
func (f *Fetcher) claimAhead(b *bootstrap.Bootstrap, ix *frameIndex, fi uint32) ([]uint32, []*call) {
	rank := ix.rank[fi]
	window := ix.ra.next(rank)
	if window == 0 {
		return nil, nil
	}
	first := b.Frames[fi]
	end := first.Offset + int64(first.CompressedSize)
	var frames []uint32
	var calls []*call
	for r := rank + 1; int(r) < len(ix.order); r++ {
		fj := ix.order[r]
		fr := b.Frames[fj]
		fend := fr.Offset + int64(fr.CompressedSize)
		if fr.Blob != first.Blob || fr.Offset < end || fr.Offset-end > mergeGap || fend-first.Offset > window+int64(first.CompressedSize) {
			break
		}
		if f.frameCached(b, ix, fj) {
			break
		}
		cl, leader := f.claim(frameKey{b, fj})
		if !leader {
			break
		}
		frames = append(frames, fj)
		calls = append(calls, cl)
		end = fend
	}
	ix.ra.advance(rank + 1 + uint32(len(frames)))
	return frames, calls
}

// fetchAhead fetches frame fi, which the caller has claimed, together with
// the frames a sequential reader will want next, in one request. The
// frames read ahead are verified and cached like any other; if the merged
// request fails, fi alone goes the usual way.
func (f *Fetcher) fetchAhead(ctx context.Context, b *bootstrap.Bootstrap, fi uint32, want bootstrap.Digest) ([]byte, error) {
	ix := f.frameIndex(b)
	ahead, calls := f.claimAhead(b, ix, fi)
	if len(ahead) == 0 {
		return f.fetchFrame(ctx, b, fi, want)
	}
	fr := b.Frames[fi]
	last := b.Frames[ahead[len(ahead)-1]]
	r := run{blob: fr.Blob, off: fr.Offset, end: last.Offset + int64(last.CompressedSize), frames: append([]uint32{fi}, ahead...)}
	var data []byte
	done := make([]bool, len(ahead))
	if int(fr.Blob) < len(b.Blobs) {
		blob := b.Blobs[fr.Blob]
		for _, s := range f.sources {
			s.requests.Add(1)
			raw, err := s.FetchFrame(ctx, blob, r.off, r.end-r.off)
			if err != nil {
				s.errors.Add(1)
				f.log.Warn("fetch: source failed", "source", s.Name(), "blob", blob, "offset", r.off, "size", r.end-r.off, "chunk", want, "err", err)
				if ctx.Err() != nil {
					break
				}
				continue
			}
			s.bytes.Add(int64(len(raw)))
			for i, fj := range ahead {
				d, err := ix.verified(b, fj, r.frameBytes(b, raw, fj))
				if err != nil {
					// Counted when it is fetched on its own.
					reject(s, blob, r.off, r.end-r.off, err)
					f.log.Debug("fetch: source sent bad frame", "source", s.Name(), "blob", blob, "offset", b.Frames[fj].Offset, "chunk", firstChunk(b, ix, fj), "err", err)
					continue
				}
				s.frames.Add(1)
				s.chunks.Add(int64(len(ix.of(fj))))
				f.sinkFrame(b, fj, r.frameBytes(b, raw, fj))
				f.finish(frameKey{b, fj}, calls[i], d, nil)
				done[i] = true
			}
			if d, err := ix.verified(b, fi, r.frameBytes(b, raw, fi)); err == nil {
				s.frames.Add(1)
				s.chunks.Add(int64(len(ix.of(fi))))
				f.sinkFrame(b, fi, r.frameBytes(b, raw, fi))
				data = d
			} else {
				reject(s, blob, r.off, r.end-r.off, err)
				f.log.Debug("fetch: source sent bad frame", "source", s.Name(), "blob", blob, "offset", fr.Offset, "chunk", want, "err", err)
			}
			break
		}
	}
	// Frames read ahead that did not arrive are left to whoever wants
	// them: their waiters retry from the start.
	for i, fj := range ahead {
		if !done[i] {
			f.finish(frameKey{b, fj}, calls[i], nil, errCached)
		}
	}
	if data != nil {
		return data, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("frame %d: %w", fi, err)
	}
	return f.fetchFrame(ctx, b, fi, want)
}
