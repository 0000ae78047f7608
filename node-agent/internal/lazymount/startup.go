package lazymount

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/skiff-dev/skiff/pkg/bootstrap"
	"github.com/skiff-dev/skiff/pkg/erofs"
	"github.com/skiff-dev/skiff/pkg/lazyfs"
)

// recorder passes chunk reads through and notes, during a window after
// the mount, which files they belong to. Through an EROFS image the
// kernel reads ahead across files, so there what it noted only tells
// that something was read: the set saved is the files the kernel holds
// pages of (see readFiles).
type recorder struct {
	b *bootstrap.Bootstrap
	r lazyfs.ChunkReader

	// last is when a container last read through the image-mode mount
	// (Unix nanoseconds), 0 until the first read once armed, which closes
	// used: when the image is in use, and whether its containers have
	// paused (see waitPause).
	last  atomic.Int64
	used  chan struct{}
	armed atomic.Bool
	// own holds the threads this process reads the mount from itself
	// (warmSmallFiles): their reads are not a container's.
	own sync.Map // thread id → struct{}

	mu       sync.Mutex
	on       bool
	deadline time.Time
	owner    map[uint32]uint32 // chunk → first inode holding it, built on first read
	seen     map[uint32]bool
	order    []uint32
}

var (
	_ lazyfs.ChunkReader  = (*recorder)(nil)
	_ lazyfs.BackingFiler = (*recorder)(nil)
)

func newRecorder(b *bootstrap.Bootstrap, r lazyfs.ChunkReader, window time.Duration) *recorder {
	return &recorder{b: b, r: r, used: make(chan struct{}), on: window > 0, deadline: time.Now().Add(window), seen: map[uint32]bool{}}
}

// touch notes that a container read through the mount now, unless ctx
// is a read of this process' own.
func (rec *recorder) touch(ctx context.Context) {
	if !rec.armed.Load() {
		return
	}
	if tid, ok := lazyfs.Caller(ctx); ok {
		if _, mine := rec.own.Load(tid); mine {
			return
		}
	}
	if rec.last.Swap(time.Now().UnixNano()) == 0 {
		close(rec.used)
	}
}

// arm has reads from now on count as the image being in use: those of
// mounting it came before any container could read. Unarmed, touch costs
// a load.
func (rec *recorder) arm() { rec.armed.Store(true) }

// reading marks thread tid as reading the mount for this process (on)
// or no longer (off).
func (rec *recorder) reading(tid int, on bool) {
	if on {
		rec.own.Store(tid, struct{}{})
	} else {
		rec.own.Delete(tid)
	}
}

// waitPause waits until a container has read through the mount and then
// not for pause, and reports whether that happened before ctx ended.
func (rec *recorder) waitPause(ctx context.Context, pause time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-rec.used:
	}
	for {
		idle := time.Since(time.Unix(0, rec.last.Load()))
		if idle >= pause {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(pause - idle):
		}
	}
}

// ReadChunk implements lazyfs.ChunkReader.
func (rec *recorder) ReadChunk(ctx context.Context, b *bootstrap.Bootstrap, idx uint32) ([]byte, error) {
	rec.note(idx)
	return rec.r.ReadChunk(ctx, b, idx)
}

// BackingFile implements lazyfs.BackingFiler. A file read through its
// backing file never reaches ReadChunk, so its opening is what is noted.
func (rec *recorder) BackingFile(ctx context.Context, b *bootstrap.Bootstrap, ino uint32) (*os.File, bool) {
	bf, ok := rec.r.(lazyfs.BackingFiler)
	if !ok {
		return nil, false
	}
	f, ok := bf.BackingFile(ctx, b, ino)
	if ok {
		if cs := b.FileChunks(ino); len(cs) > 0 {
			rec.note(cs[0])
		}
	}
	return f, ok
}

// Fetch implements lazyfs.Fetcher when the reader does; the chunks count
// as read when they are. Every read of an image-mode mount starts here,
// which is what touch needs to see.
func (rec *recorder) Fetch(ctx context.Context, b *bootstrap.Bootstrap, chunks []uint32) {
	rec.touch(ctx)
	if f, ok := rec.r.(lazyfs.Fetcher); ok {
		f.Fetch(ctx, b, chunks)
	}
}

// Warm implements lazyfs.Warmer when the reader does.
func (rec *recorder) Warm(b *bootstrap.Bootstrap, chunks []uint32) {
	if w, ok := rec.r.(lazyfs.Warmer); ok {
		w.Warm(b, chunks)
	}
}

// ChunkFile implements lazyfs.ChunkFiler when the reader does. A chunk
// spliced from its file never reaches ReadChunk, so this is where it is
// noted.
func (rec *recorder) ChunkFile(b *bootstrap.Bootstrap, idx uint32) (*os.File, int64, bool) {
	cf, ok := rec.r.(lazyfs.ChunkFiler)
	if !ok {
		return nil, 0, false
	}
	f, off, ok := cf.ChunkFile(b, idx)
	if ok {
		rec.note(idx)
	}
	return f, off, ok
}

func (rec *recorder) note(idx uint32) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if !rec.on {
		return
	}
	if time.Now().After(rec.deadline) {
		rec.on = false
		return
	}
	if rec.owner == nil {
		rec.owner = map[uint32]uint32{}
		for ino := range rec.b.Inodes {
			if rec.b.Inodes[ino].Type() != bootstrap.ModeRegular {
				continue
			}
			for _, c := range rec.b.FileChunks(uint32(ino)) {
				if _, ok := rec.owner[c]; !ok {
					rec.owner[c] = uint32(ino)
				}
			}
		}
	}
	if ino, ok := rec.owner[idx]; ok && !rec.seen[ino] {
		rec.seen[ino] = true
		rec.order = append(rec.order, ino)
	}
}

func (rec *recorder) active() bool {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.on
}

// disable stops recording and drops what was recorded: the image already
// has a startup set, which a partial one must not replace.
func (rec *recorder) disable() {
	rec.mu.Lock()
	rec.on = false
	rec.order = nil
	rec.mu.Unlock()
}

// finish stops recording and returns what was recorded, once.
func (rec *recorder) finish() []uint32 {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.on = false
	order := rec.order
	rec.order = nil
	return order
}

// readFiles lists, in storage order, the regular files of a mount through
// EROFS that the kernel holds content of: the files that were read. What
// the mount process serves tells less there: it sees reads of the image
// file, which the kernel reads ahead across neighbouring files, while
// each EROFS file's own page cache holds only what was read of that file
// (and read ahead within it). A file read and since evicted is missed.
func (m *Manager) readFiles(d bootstrap.Digest, b *bootstrap.Bootstrap, layout *erofs.Image) ([]uint32, error) {
	paths := map[uint32]string{}
	_ = b.Walk(func(p string, ino uint32) error {
		if _, ok := paths[ino]; !ok && b.Inodes[ino].Type() == bootstrap.ModeRegular {
			paths[ino] = p
		}
		return nil
	})
	mp := m.Mountpoint(d)
	var read []uint32
	for _, e := range layout.Files() {
		p, ok := paths[e.Inode]
		if !ok {
			continue
		}
		n, err := cachedPages(filepath.Join(mp, p))
		if err != nil {
			return nil, err
		}
		if n > 0 {
			read = append(read, e.Inode)
		}
	}
	return read, nil
}

// inReadOrder orders the files read (in storage order, see readFiles)
// as the mount first served them (served, from the recorder), so that a
// node prefetching the set brings in what a container reads first before
// the rest. A file the mount never served was read ahead with the one
// before it in storage order and takes its place; files before any it
// served come first.
func inReadOrder(read, served []uint32) []uint32 {
	rank := make(map[uint32]int, len(served))
	for i, ino := range served {
		if _, ok := rank[ino]; !ok {
			rank[ino] = i + 1
		}
	}
	ranks := make(map[uint32]int, len(read))
	cur := 0
	for _, ino := range read {
		if r, ok := rank[ino]; ok {
			cur = r
		}
		ranks[ino] = cur
	}
	out := slices.Clone(read)
	slices.SortStableFunc(out, func(a, b uint32) int { return cmp.Compare(ranks[a], ranks[b]) })
	return out
}

// cachedPages returns how many pages of the file at path are in the page
// cache, by cachestat(2) (Linux 6.5+, older than any kernel that mounts
// a file as EROFS). Opening the file reads none of its content.
func cachedPages(path string) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0, fmt.Errorf("cachestat %s: %w", path, err)
	}
	defer unix.Close(fd)
	var rng struct{ off, len uint64 } // len 0: to the end of the file
	var cs struct{ cache, dirty, writeback, evicted, recentlyEvicted uint64 }
	if _, _, errno := unix.Syscall6(unix.SYS_CACHESTAT, uintptr(fd), uintptr(unsafe.Pointer(&rng)), uintptr(unsafe.Pointer(&cs)), 0, 0, 0); errno != 0 {
		return 0, fmt.Errorf("cachestat %s: %w", path, errno)
	}
	return cs.cache, nil
}
