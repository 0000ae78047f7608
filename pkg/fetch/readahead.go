package fetch

import (
	"context"
	"fmt"
	"sync"

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
)

// readahead is the sequential-reader state of one bootstrap.
type readahead struct {
	mu     sync.Mutex
	end    uint32 // rank just past the frames fetched by the last miss
	blob   uint32 // blob and byte offset where those frames end
	endOff int64
	window int64 // compressed bytes to fetch beyond the missed frame
}

// next returns how many compressed bytes to read ahead of a miss at rank
// (frame fr), and records that the miss happened.
func (ra *readahead) next(rank uint32, fr bootstrap.Frame) int64 {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	near := rank <= ra.end+raSlack || (fr.Blob == ra.blob && fr.Offset >= ra.endOff && fr.Offset-ra.endOff <= raSkip)
	if ra.end > 0 && rank >= ra.end && near {
		ra.window = min(max(2*ra.window, minReadahead), maxReadahead)
	} else {
		ra.window = 0
	}
	ra.end = rank + 1
	ra.blob, ra.endOff = fr.Blob, fr.Offset+int64(fr.CompressedSize)
	return ra.window
}

// advance records that frames up to rank end (exclusive), ending at byte
// endOff of their blob, were fetched.
func (ra *readahead) advance(end uint32, endOff int64) {
	ra.mu.Lock()
	if end > ra.end {
		ra.end, ra.endOff = end, endOff
	}
	ra.mu.Unlock()
}

// claimAhead claims the frames stored right after fi that are neither
// cached nor being fetched, up to the readahead window, and returns them
// in storage order with their calls.
func (f *Fetcher) claimAhead(b *bootstrap.Bootstrap, ix *frameIndex, fi uint32) ([]uint32, []*call) {
	rank := ix.rank[fi]
	first := b.Frames[fi]
	window := ix.ra.next(rank, first)
	if window == 0 {
		return nil, nil
	}
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
	ix.ra.advance(rank+1+uint32(len(frames)), end)
	return frames, calls
}

// fetchAhead fetches frame fi, which the caller has claimed, together with
// the frames a sequential reader will want next, in one request. Only fi
// is checked before the reader gets it; the frames read ahead are verified
// and cached like any other while the reader goes on (readers that want
// one meanwhile wait for it). If the merged request fails, fi alone goes
// the usual way.
func (f *Fetcher) fetchAhead(ctx context.Context, b *bootstrap.Bootstrap, fi uint32, want bootstrap.Digest) ([]byte, error) {
	ix := f.frameIndex(b)
	ahead, calls := f.claimAhead(b, ix, fi)
	if len(ahead) == 0 {
		return f.fetchFrame(ctx, b, fi, want)
	}
	fr := b.Frames[fi]
	last := b.Frames[ahead[len(ahead)-1]]
	r := run{blob: fr.Blob, off: fr.Offset, end: last.Offset + int64(last.CompressedSize), frames: append([]uint32{fi}, ahead...)}
	var (
		raw  []byte
		from *source
	)
	if int(fr.Blob) < len(b.Blobs) {
		blob := b.Blobs[fr.Blob]
		for _, s := range f.sources {
			s.requests.Add(1)
			got, err := s.FetchFrame(ctx, blob, r.off, r.end-r.off)
			if err == nil {
				s.bytes.Add(int64(len(got)))
				raw, from = got, s
				break
			}
			s.errors.Add(1)
			f.log.Warn("fetch: source failed", "source", s.Name(), "blob", blob, "offset", r.off, "size", r.end-r.off, "chunk", want, "err", err)
			if ctx.Err() != nil {
				break
			}
		}
	}
	if raw == nil {
		// Frames read ahead that did not arrive are left to whoever
		// wants them: their waiters retry from the start.
		for i, fj := range ahead {
			f.finish(frameKey{b, fj}, calls[i], nil, errCached)
		}
	} else {
		go f.publishAhead(b, ix, from, r, raw, ahead, calls)
		if data, err := f.accept(b, ix, from, r, raw, fi); err == nil {
			return data, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("frame %d: %w", fi, err)
	}
	return f.fetchFrame(ctx, b, fi, want)
}

// accept verifies frame fj within the bytes of run r that source s
// returned, and counts it.
func (f *Fetcher) accept(b *bootstrap.Bootstrap, ix *frameIndex, s *source, r run, raw []byte, fj uint32) ([]byte, error) {
	blob := b.Blobs[r.blob]
	d, err := ix.verified(b, fj, r.frameBytes(b, raw, fj))
	if err != nil {
		reject(s, blob, r.off, r.end-r.off, err)
		f.log.Debug("fetch: source sent bad frame", "source", s.Name(), "blob", blob, "offset", b.Frames[fj].Offset, "chunk", firstChunk(b, ix, fj), "err", err)
		return nil, err
	}
	s.frames.Add(1)
	s.chunks.Add(int64(len(ix.of(fj))))
	f.sinkFrame(b, fj, r.frameBytes(b, raw, fj))
	return d, nil
}

// publishAhead verifies and publishes the frames read ahead. One that
// fails is counted when it is fetched on its own: its waiters retry.
func (f *Fetcher) publishAhead(b *bootstrap.Bootstrap, ix *frameIndex, s *source, r run, raw []byte, ahead []uint32, calls []*call) {
	for i, fj := range ahead {
		d, err := f.accept(b, ix, s, r, raw, fj)
		if err != nil {
			f.finish(frameKey{b, fj}, calls[i], nil, errCached)
			continue
		}
		f.finish(frameKey{b, fj}, calls[i], d, nil)
	}
}
