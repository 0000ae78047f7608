package fetch

import (
	"sync"
	"time"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
)

// Verified chunks reach the disk cache once the node is quiet, not as
// they arrive. Writing a frame of packed small files to disk costs about
// as much CPU as fetching, decompressing and checking it: on a node short
// of CPU, writing while a container reads on makes it wait longer for
// every frame after. Until it is written a frame's chunks are read from
// memory, where the writeback holds them; it holds at most
// maxPendingBytes, past which the oldest are written at once.
//
// Variables for tests:
var (
	// writeQuiet is how long no frame may have arrived before queued
	// writes go ahead. A container reading through an image fetches
	// frame after frame, tens of milliseconds apart at most; but the
	// next command of a script, or a pod's next container, starts
	// reading 0.3–0.5 s after the last one ended (runc's start). At 250
	// ms the previous command's large files were written just as the
	// next one read, a sixth of the mount process' CPU while it did.
	writeQuiet = time.Second
	// maxPendingBytes bounds the chunk bytes waiting for the disk cache.
	maxPendingBytes int64 = 256 << 20
)

// writeWorkers is how many frames are written at once: a Flush after a
// prefetch (a startup set, before its pages are read in) waits for all
// of them.
const writeWorkers = 4

// pendingWrite is one frame's chunks on their way to the disk cache.
type pendingWrite struct {
	chunks  []bootstrap.Digest
	bytes   int64
	persist func()
}

// writeback queues the disk writes of verified frames.
type writeback struct {
	mu      sync.Mutex
	queue   []*pendingWrite
	held    map[bootstrap.Digest][]byte // the queued frames' chunks
	bytes   int64
	last    time.Time // when the last frame was queued
	flushes int       // Flush calls waiting: write now
	running bool      // a drain goroutine runs
	wake    chan struct{}
}

// get returns a chunk waiting to be written.
func (w *writeback) get(d bootstrap.Digest) ([]byte, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	data, ok := w.held[d]
	return data, ok
}

// has reports whether chunk d is waiting to be written.
func (w *writeback) has(d bootstrap.Digest) bool {
	_, ok := w.get(d)
	return ok
}

// pendingBytes returns the bytes of the chunks waiting to be written.
func (w *writeback) pendingBytes() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bytes
}

// add queues a frame's write and reports whether a drain goroutine must
// be started.
func (w *writeback) add(p *pendingWrite, chunks [][]byte) (start bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.held == nil {
		w.held = map[bootstrap.Digest][]byte{}
		w.wake = make(chan struct{}, 1)
	}
	for i, d := range p.chunks {
		w.held[d] = chunks[i]
	}
	w.queue = append(w.queue, p)
	w.bytes += p.bytes
	w.last = time.Now()
	if w.bytes > maxPendingBytes {
		w.signal()
	}
	if w.running {
		return false
	}
	w.running = true
	return true
}

// signal wakes the drain goroutine; w.mu is held.
func (w *writeback) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// drain writes the queued frames, each once the node is quiet, at once
// past maxPendingBytes or while a Flush waits, writeWorkers at a time,
// and returns when the queue is empty and its writes are done.
func (w *writeback) drain() {
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, writeWorkers)
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		wait := writeQuiet - time.Since(w.last)
		if w.flushes > 0 || w.bytes > maxPendingBytes {
			wait = 0
		}
		if wait > 0 {
			wake := w.wake
			w.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-wake:
				t.Stop()
			}
			continue
		}
		p := w.queue[0]
		w.queue[0] = nil
		w.queue = w.queue[1:]
		w.mu.Unlock()

		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			p.persist()
			w.mu.Lock()
			for _, d := range p.chunks {
				delete(w.held, d)
			}
			w.bytes -= p.bytes
			w.mu.Unlock()
		})
	}
}

// flush has the queue written without waiting for quiet until done is
// called.
func (w *writeback) flush() (done func()) {
	w.mu.Lock()
	w.flushes++
	if w.wake != nil {
		w.signal()
	}
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		w.flushes--
		w.mu.Unlock()
	}
}
