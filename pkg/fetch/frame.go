package fetch

import (
	"fmt"
	"sort"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/codec"
)

// Limits of merged requests. A request to S3 costs about as much time as a
// few hundred KiB of transfer, so reading a small gap between two needed
// frames is cheaper than a second request; runs stay bounded so that one
// slow request does not hold back many readers.
const (
	mergeGap   = 256 << 10
	maxRun     = 8 << 20
	maxRequest = bootstrap.MaxFrameSize + bootstrap.MaxFrameSize/64 + maxRun
)

// frameIndex lists the chunks stored in each frame of one bootstrap, which
// the bootstrap itself only records in the other direction.
type frameIndex struct {
	start  []uint32 // chunks of frame i are chunks[start[i]:start[i+1]]
	chunks []uint32
	// order lists the frames by blob and offset, where they are stored;
	// rank is the inverse. Readahead follows this order.
	order, rank []uint32
	// large marks the frames holding one chunk of a large file.
	large []bool

	ra readahead
}

// smallChunk is the size under which a chunk alone in its frame still
// counts as a small file's: a batch of small chunks that closed with one.
// It is the size up to which an EROFS image lays files out together.
const smallChunk = 128 << 10

func newFrameIndex(b *bootstrap.Bootstrap) *frameIndex {
	ix := &frameIndex{start: make([]uint32, len(b.Frames)+1)}
	for _, c := range b.Chunks {
		if !c.Zero() && int(c.Frame) < len(b.Frames) {
			ix.start[c.Frame+1]++
		}
	}
	ix.large = make([]bool, len(b.Frames))
	for i, fr := range b.Frames {
		ix.large[i] = ix.start[i+1] == 1 && fr.Size >= smallChunk
	}
	for i := 1; i < len(ix.start); i++ {
		ix.start[i] += ix.start[i-1]
	}
	ix.order = make([]uint32, len(b.Frames))
	for i := range ix.order {
		ix.order[i] = uint32(i)
	}
	sort.Slice(ix.order, func(i, j int) bool {
		fi, fj := b.Frames[ix.order[i]], b.Frames[ix.order[j]]
		if fi.Blob != fj.Blob {
			return fi.Blob < fj.Blob
		}
		return fi.Offset < fj.Offset
	})
	ix.rank = make([]uint32, len(b.Frames))
	for r, fi := range ix.order {
		ix.rank[fi] = uint32(r)
	}
	ix.chunks = make([]uint32, ix.start[len(b.Frames)])
	next := append([]uint32(nil), ix.start[:len(b.Frames)]...)
	for i, c := range b.Chunks {
		if !c.Zero() && int(c.Frame) < len(b.Frames) {
			ix.chunks[next[c.Frame]] = uint32(i)
			next[c.Frame]++
		}
	}
	return ix
}

func (ix *frameIndex) of(frame uint32) []uint32 {
	return ix.chunks[ix.start[frame]:ix.start[frame+1]]
}

// packed reports whether frame holds small chunks (several, or one under
// smallChunk) rather than one large one.
func (ix *frameIndex) packed(frame uint32) bool {
	return !ix.large[frame]
}

// open decompresses the stored bytes of frame fi and checks every chunk in
// it against its digest. bad lists the chunks that fail; err is set when the
// frame as a whole is unusable, in which case no chunk could be checked.
func (ix *frameIndex) open(b *bootstrap.Bootstrap, fi uint32, raw []byte) (data []byte, bad []uint32, err error) {
	f := b.Frames[fi]
	if len(raw) != int(f.CompressedSize) {
		return nil, nil, fmt.Errorf("frame %d: got %d bytes, want %d", fi, len(raw), f.CompressedSize)
	}
	data, err = codec.Decompress(f.Compression, nil, raw, int(f.Size))
	if err != nil {
		return nil, nil, fmt.Errorf("frame %d: %w", fi, err)
	}
	for _, ci := range ix.of(fi) {
		c := b.Chunks[ci]
		end := uint64(c.Offset) + uint64(c.Size)
		if end > uint64(len(data)) || bootstrap.Sum(data[c.Offset:end]) != c.Digest {
			bad = append(bad, ci)
		}
	}
	return data, bad, nil
}

// verified is open for callers that need the whole frame intact.
func (ix *frameIndex) verified(b *bootstrap.Bootstrap, fi uint32, raw []byte) ([]byte, error) {
	data, bad, err := ix.open(b, fi, raw)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("frame %d: chunk %s does not match its digest", fi, b.Chunks[bad[0]].Digest)
	}
	return data, nil
}

// run is a byte range of one blob covering several frames, read with one
// request.
type run struct {
	blob     uint32
	off, end int64
	frames   []uint32
}

// planRuns groups frames into runs of nearby frames of the same blob.
func planRuns(b *bootstrap.Bootstrap, frames []uint32) []run {
	return planRunsGap(b, frames, maxRun, mergeGap)
}

// readGap is how many bytes a request reading ahead after a miss reads
// past rather than end: more after a miss in a packed frame (see
// claimAfter).
func readGap(packed bool) int64 {
	if packed {
		return aheadGap
	}
	return mergeGap
}

// planRunsGap is planRuns with runs of at most limit bytes (a frame
// larger than that is a run of its own) and frames at most gap bytes
// apart read together.
func planRunsGap(b *bootstrap.Bootstrap, frames []uint32, limit, gap int64) []run {
	frames = append([]uint32(nil), frames...)
	sort.Slice(frames, func(i, j int) bool {
		fi, fj := b.Frames[frames[i]], b.Frames[frames[j]]
		if fi.Blob != fj.Blob {
			return fi.Blob < fj.Blob
		}
		return fi.Offset < fj.Offset
	})
	var runs []run
	for _, fi := range frames {
		f := b.Frames[fi]
		end := f.Offset + int64(f.CompressedSize)
		if n := len(runs); n > 0 {
			r := &runs[n-1]
			if r.blob == f.Blob && f.Offset >= r.off && f.Offset-r.end <= gap && max(end, r.end)-r.off <= limit {
				r.frames = append(r.frames, fi)
				r.end = max(end, r.end)
				continue
			}
		}
		runs = append(runs, run{blob: f.Blob, off: f.Offset, end: end, frames: []uint32{fi}})
	}
	return runs
}

// frameBytes cuts frame fi out of the bytes of r.
func (r run) frameBytes(b *bootstrap.Bootstrap, raw []byte, fi uint32) []byte {
	f := b.Frames[fi]
	lo := f.Offset - r.off
	return raw[lo : lo+int64(f.CompressedSize)]
}
