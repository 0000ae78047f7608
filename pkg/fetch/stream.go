package fetch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sort"
	"sync"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// runTimeout bounds every request to a source (Fetcher.timeout). Merged
// requests outlive the reader who caused them (see fetchAhead), so their
// frames' other waiters rely on it too.
const runTimeout = 2 * time.Minute

// errStalled stands for the error of a request that ran out of the time a
// source gets (Fetcher.timeout) while its caller had not: the source
// failing, which the failure memo and the frame's other readers must see
// as such. Left a DeadlineExceeded, it would read as a reader giving up:
// nothing would be remembered, and each joiner would wait out the timeout
// again, one after another.
var errStalled = errors.New("source stalled")

// stalled returns err, or errStalled in its place when the request's own
// deadline (req's) ended it and not parent's. A deadline of the source's
// own (a peer's, say) is left as it is: that source's error says what it
// means.
func stalled(parent, req context.Context, err error) error {
	if err != nil && errors.Is(req.Err(), context.DeadlineExceeded) && parent.Err() == nil {
		return fmt.Errorf("%w: %v", errStalled, err)
	}
	return err
}

// readRun reads run r from source s and passes each of its frames to
// deliver, in storage order, as soon as that frame's bytes have arrived
// and been verified: from a RangeOpener while the rest of the range is
// still on its way, from other sources once the whole range has arrived.
// A frame that fails verification is passed with its error, and the source
// is told (Rejecter); if the stream breaks, every frame not yet passed is
// passed with the error. deliver may be called from several goroutines
// at once, and every call has returned when readRun does. readRun returns
// an error, having passed nothing, only when the source could not be read
// at all. Failures are logged here.
func (f *Fetcher) readRun(parent context.Context, s *source, b *bootstrap.Bootstrap, ix *frameIndex, r run, deliver func(fi uint32, data []byte, err error)) error {
	ctx, cancel := context.WithTimeout(parent, f.timeout)
	defer cancel()
	blob := b.Blobs[r.blob]
	size := r.end - r.off
	s.requests.Add(1)
	var rd io.Reader
	if o, ok := s.Source.(RangeOpener); ok {
		rc, err := o.OpenRange(ctx, blob, r.off, size)
		err = stalled(parent, ctx, err)
		if err != nil {
			s.errors.Add(1)
			f.log.Warn("fetch: source failed", "source", s.Name(), "blob", blob, "offset", r.off, "size", size, "err", err)
			return err
		}
		defer rc.Close()
		rd = rc
	} else {
		raw, err := s.FetchFrame(ctx, blob, r.off, size)
		if err == nil && int64(len(raw)) != size {
			err = fmt.Errorf("fetch %s [%d,+%d): got %d bytes", blob, r.off, size, len(raw))
		}
		err = stalled(parent, ctx, err)
		if err != nil {
			s.errors.Add(1)
			f.log.Warn("fetch: source failed", "source", s.Name(), "blob", blob, "offset", r.off, "size", size, "err", err)
			return err
		}
		rd = bytes.NewReader(raw)
	}
	frames := append([]uint32(nil), r.frames...)
	sort.Slice(frames, func(i, j int) bool { return b.Frames[frames[i]].Offset < b.Frames[frames[j]].Offset })
	// The whole range lands in one buffer, so frames may overlap or leave
	// gaps between them; got is how much of it has arrived. Frames are
	// decompressed and checked by up to streamWorkers goroutines while
	// the next ones arrive.
	buf := requestBuffer(size)
	defer releaseRequestBuffer(buf) // after the frames' workers are done
	var got int64
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, streamWorkers)
	for i, fi := range frames {
		fr := b.Frames[fi]
		lo := fr.Offset - r.off
		hi := lo + int64(fr.CompressedSize)
		if hi > got {
			n, err := io.ReadFull(rd, buf[got:hi])
			got += int64(n)
			s.bytes.Add(int64(n))
			if err != nil {
				s.errors.Add(1)
				err = fmt.Errorf("fetch %s [%d,+%d): after %d bytes: %w", blob, r.off, size, got, stalled(parent, ctx, err))
				f.log.Warn("fetch: source failed", "source", s.Name(), "blob", blob, "offset", r.off, "size", size, "err", err)
				for _, fj := range frames[i:] {
					deliver(fj, nil, err)
				}
				return nil
			}
		}
		raw := buf[lo:hi]
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			data, err := ix.verified(b, fi, raw)
			if err != nil {
				s.errors.Add(1)
				reject(s, blob, fr.Offset, int64(fr.CompressedSize), err)
				f.log.Warn("fetch: source sent bad frame", "source", s.Name(), "blob", blob, "offset", fr.Offset, "chunk", firstChunk(b, ix, fi), "err", err)
				deliver(fi, nil, err)
				return
			}
			s.frames.Add(1)
			s.chunks.Add(int64(len(ix.of(fi))))
			f.sinkFrame(b, fi, raw)
			deliver(fi, data, nil)
		})
	}
	return nil
}

// Buffers that requests land in are reused. A request's bytes are garbage
// once its frames are decompressed (frameIndex.open copies even a stored
// frame, and sinkFrame keeps a copy), but a fresh buffer costs a page fault
// for every 4 KiB the socket's bytes are first copied into, which a
// virtual machine traps to its hypervisor: a cold walk of a tree lands
// tens of megabytes this way. Pooled buffers come in powers of two, from
// 64 KiB (1<<minPooledShift) to 32 MiB (1<<maxPooledShift); a larger
// request gets a buffer of its own.
const (
	minPooledShift = 16
	maxPooledShift = 25
)

var requestBuffers [maxPooledShift - minPooledShift + 1]sync.Pool // of *[]byte

// bufferClass returns the index in requestBuffers of the smallest class
// that holds n bytes, or -1 if n is larger than every class.
func bufferClass(n int64) int {
	shift := max(bits.Len64(uint64(max(n, 1)-1)), minPooledShift)
	if shift > maxPooledShift {
		return -1
	}
	return shift - minPooledShift
}

// requestBuffer returns a buffer of n bytes, whose content is arbitrary.
func requestBuffer(n int64) []byte {
	c := bufferClass(n)
	if c < 0 {
		return make([]byte, n)
	}
	if p, ok := requestBuffers[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(c+minPooledShift))
}

// releaseRequestBuffer gives buf, which nothing may use any more, back
// for reuse.
func releaseRequestBuffer(buf []byte) {
	c := bufferClass(int64(cap(buf)))
	if c < 0 || cap(buf) != 1<<(c+minPooledShift) {
		return
	}
	buf = buf[:0]
	requestBuffers[c].Put(&buf)
}

// streamWorkers bounds the frames of one request being decompressed and
// checked at once.
const streamWorkers = 2

// frameResult is one frame's outcome, passed from a stream to its reader.
type frameResult struct {
	data []byte
	err  error
	// next is the first source not yet tried for the frame.
	next int
}

// streamAhead reads run r, whose first frame fi is the one a reader
// missed and whose other frames, claimed with calls, are read ahead, and
// sends fi's outcome to mine the moment it is known. The request is not
// bound to the reader's ctx: the frames read ahead have waiters of their
// own. Frames it cannot deliver are left to whoever wants them (their
// waiters retry from the start), unless no source could be read at all:
// then they fail with that.
func (f *Fetcher) streamAhead(ctx context.Context, b *bootstrap.Bootstrap, ix *frameIndex, r run, fi uint32, ahead map[uint32]*call, mine chan<- frameResult) {
	ctx = context.WithoutCancel(ctx)
	var mu sync.Mutex // guards sent and ahead
	sent := false
	next := 0
	deliver := func(fj uint32, data []byte, err error) {
		mu.Lock()
		if fj == fi {
			if !sent {
				mine <- frameResult{data, err, next}
				sent = true
			}
			mu.Unlock()
			return
		}
		cl, ok := ahead[fj]
		delete(ahead, fj)
		mu.Unlock()
		if ok {
			if err != nil {
				data, err = nil, errCached
			}
			f.finish(frameKey{b, fj}, cl, data, err)
		}
	}
	var err error
	for i, s := range f.sources {
		next = i + 1
		if err = f.readRun(ctx, s, b, ix, r, deliver); err == nil {
			break
		}
	}
	if !sent {
		if err == nil {
			err = fmt.Errorf("frame %d: no sources", fi)
		}
		mine <- frameResult{err: err, next: next}
	}
	// When no source could be read at all, the frames read ahead fail
	// with it: their waiters would only ask the same sources again.
	fail := errCached
	if err != nil {
		fail = err
	}
	for fj, cl := range ahead {
		f.finish(frameKey{b, fj}, cl, nil, fail)
	}
}
