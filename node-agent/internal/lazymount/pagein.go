package lazymount

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/lazyfs"
)

// pageIn reads the parts of an image-mode mount's image file that hold
// the given files, and the metadata, through the mount, so that the
// kernel holds their pages before a container asks for them. Prefetching
// a startup set brings its chunks to this node; a container of a mount
// through EROFS would still have the kernel ask this process for every
// page of every file it opens, one request per few files, which costs a
// program walking thousands of small files several times the reading
// itself. Only the files' own bytes are read.
func (m *Manager) pageIn(ctx context.Context, d bootstrap.Digest, layout *erofs.Image, inodes []uint32, rec *recorder) (int64, error) {
	// Its reads are not a container's: they must not set off what waits
	// for one.
	return m.readImage(ctx, d, pageInRanges(layout, inodes), imageReads{workers: 1, thread: rec.reading})
}

// imageReads says how readImage reads.
type imageReads struct {
	workers int // reads at once
	// wait, when set, admits each read of n bytes; an error ends the
	// worker, as ctx ending does.
	wait func(ctx context.Context, n int) error
	// thread, when set, is told the thread each worker reads from (on)
	// before its first read and when it is done (off): the mount tells
	// this process' reads from a container's by the thread.
	thread func(tid int, on bool)
}

// readImage reads the given ranges of an image-mode mount's image file
// through the mount, which leaves them in the page cache, as how says.
// The image file is read without readahead, which would fetch the
// neighbours.
func (m *Manager) readImage(ctx context.Context, d bootstrap.Digest, ranges [][2]int64, how imageReads) (int64, error) {
	f, err := os.Open(filepath.Join(m.imageDir(d), lazyfs.ImageName))
	if err != nil {
		return 0, fmt.Errorf("page in: %w", err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		return 0, fmt.Errorf("page in: %w", err)
	}
	var reads [][2]int64
	for _, r := range ranges {
		for off := r[0]; off < r[1]; off += pageInRead {
			reads = append(reads, [2]int64{off, min(off+pageInRead, r[1])})
		}
	}
	var (
		next atomic.Int64
		n    atomic.Int64
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for range max(how.workers, 1) {
		wg.Go(func() {
			if how.thread != nil {
				// The reads below then come from this thread alone.
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				tid := unix.Gettid()
				how.thread(tid, true)
				defer how.thread(tid, false)
			}
			buf := make([]byte, pageInRead)
			for i := next.Add(1) - 1; i < int64(len(reads)) && ctx.Err() == nil; i = next.Add(1) - 1 {
				r := reads[i]
				if how.wait != nil && how.wait(ctx, int(r[1]-r[0])) != nil {
					return // ctx ended
				}
				got, err := f.ReadAt(buf[:r[1]-r[0]], r[0])
				n.Add(int64(got))
				if err != nil && err != io.EOF {
					// A file that cannot be read (a corrupt chunk: EIO)
					// is left to the reads that follow, which report it;
					// the rest still goes in.
					mu.Lock()
					errs = append(errs, fmt.Errorf("page in %d bytes at %d: %w", r[1]-r[0], r[0], err))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return n.Load(), err
	}
	return n.Load(), errors.Join(errs...)
}

// pageInRead is the largest read pageIn asks for, about what the kernel
// sends the mount as one request.
const pageInRead = 512 << 10

// pageInRanges returns the byte ranges of the image holding the metadata
// and the content of the given files, by offset, adjacent ones merged.
func pageInRanges(layout *erofs.Image, inodes []uint32) [][2]int64 {
	want := make(map[uint32]bool, len(inodes))
	for _, ino := range inodes {
		want[ino] = true
	}
	ranges := [][2]int64{{0, int64(len(layout.Meta()))}}
	for _, e := range layout.Files() {
		if !want[e.Inode] {
			continue
		}
		end := blockEnd(layout, e)
		if last := &ranges[len(ranges)-1]; e.Offset <= last[1] {
			last[1] = max(last[1], end)
			continue
		}
		ranges = append(ranges, [2]int64{e.Offset, end})
	}
	return ranges
}

// warmPause is how long the containers of an image without a startup set
// must have stopped reading before its small files are warmed, by
// default. A container reads in bursts with gaps of tens of
// milliseconds, and a command started right after another (a script, a
// pod's next container) in under a second: warming, which costs the node
// a CPU for a second or more, must not compete with them. A container
// that reads again has the warming wait for the next such pause. Started
// sooner (100 ms), the warming took the CPU from the next container's
// start, which then took twice as long, for no gain in its reads.
const warmPause = time.Second

// warmWorkers is how many reads warming keeps in flight: each waits for
// the fetch of the frames it covers, and the next ones are in flight
// meanwhile.
const warmWorkers = 4

// warmSmallFiles reads the small files of an image mounted through EROFS,
// up to Options.WarmSmallFiles bytes of the image, into the page cache, once a container
// has read through the mount and paused. It is for images with no startup
// set yet, whose first node would otherwise have a program walking many
// small files wait for one fetch per few files: on demand, small files
// are what a lazy image serves worst. The layout stores them first, in
// the order the layers hold them, which is how programs walk trees, so
// reading the image front to back is ahead of such a program when it
// starts meanwhile; when the program reads past what was warmed, the
// warming waits until it pauses again.
func (m *Manager) warmSmallFiles(ctx context.Context, d bootstrap.Digest, layout *erofs.Image, rec *recorder) {
	r, ok := smallFiles(layout)
	pause := cmp.Or(m.opts.WarmPause, warmPause)
	if !ok || !rec.waitPause(ctx, pause) {
		return
	}
	r[1] = min(r[1], r[0]+m.opts.WarmSmallFiles)
	start := time.Now()
	n, err := m.readImage(ctx, d, [][2]int64{r}, imageReads{
		workers: warmWorkers,
		// A container reading again has the warming wait for its next
		// pause: the warming takes the node's quiet time, never the
		// containers'. What it read before is in the page cache, where
		// the container finds it without asking the mount.
		wait: func(ctx context.Context, n int) error {
			if err := limitWait(ctx, m.limit, n); err != nil {
				return err
			}
			if !rec.waitPause(ctx, pause) {
				return ctx.Err()
			}
			return nil
		},
		thread: rec.reading,
	})
	// The readahead the reads set off, and the disk cache's copy of what
	// they fetched, are part of the warming: done, it leaves the node
	// quiet.
	m.fetch.Flush()
	if ctx.Err() != nil {
		return // unmounted meanwhile
	}
	if err != nil {
		m.log.Warn("lazymount: warm small files", "bootstrap", d, "bytes", n, "err", err)
		return
	}
	m.log.Info("lazymount: small files in the page cache", "bootstrap", d, "bytes", n, "took", time.Since(start))
}

// limitWait waits until lim admits n bytes; a nil lim admits everything.
func limitWait(ctx context.Context, lim *rate.Limiter, n int) error {
	if lim == nil {
		return nil
	}
	return lim.WaitN(ctx, n)
}

// smallFiles returns the range of the image holding the content of the
// files smaller than erofs.SmallFile, which the layout puts before the
// rest.
func smallFiles(layout *erofs.Image) ([2]int64, bool) {
	r, ok := [2]int64{}, false
	for _, e := range layout.Files() {
		if e.Size == 0 || e.Size >= erofs.SmallFile {
			continue
		}
		end := blockEnd(layout, e)
		if !ok {
			r, ok = [2]int64{e.Offset, end}, true
			continue
		}
		r[0], r[1] = min(r[0], e.Offset), max(r[1], end)
	}
	return r, ok
}

// blockEnd is where the content of e ends in the image, through to the
// end of its last block, which the kernel reads whole.
func blockEnd(layout *erofs.Image, e erofs.Extent) int64 {
	return min(e.Offset+(e.Size+erofs.BlockSize-1)/erofs.BlockSize*erofs.BlockSize, layout.Size())
}
